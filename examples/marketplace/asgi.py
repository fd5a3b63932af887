"""``uvicorn marketplace.asgi:app``: the application configured from the environment
(``MARKETPLACE_MODE``, ``MARKETPLACE_DATABASE_URL``, ``MARKETPLACE_REDIS_URL``)."""

from marketplace.app import create_app
from marketplace.settings import Settings

app = create_app(Settings.from_env())

__all__ = ["app"]
