"""``uvicorn marketplace.asgi:app``: the application configured from the environment
(``MARKETPLACE_MODE``, ``MARKETPLACE_DATABASE_URL``, ``MARKETPLACE_REDIS_URL``).

``MARKETPLACE_JSON_LOGS=1`` also writes ormtune's logs as JSON lines on stderr: one line per
request (its id, route, status, duration and query count) and the slow-query log. It is set
here, at import, so every uvicorn worker process configures its own logging.
"""

import logging
import os

from marketplace.app import create_app
from marketplace.settings import Settings
from ormtune.instrumentation import JsonFormatter

__all__ = ["app"]

if os.environ.get("MARKETPLACE_JSON_LOGS") == "1":
    _handler = logging.StreamHandler()
    _handler.setFormatter(JsonFormatter())
    logging.getLogger("ormtune").addHandler(_handler)
    logging.getLogger("ormtune").setLevel(logging.INFO)

app = create_app(Settings.from_env())
