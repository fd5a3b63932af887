"""The marketplace app as the load test serves it, plus one read-only counters endpoint.

``uvicorn loadapp:app --app-dir bench/load`` with the ``MARKETPLACE_*`` environment variables
(see marketplace.settings). ``GET /_load/counters`` returns the SQL statements this process has
executed (plain SQLAlchemy listeners on every dialect's execution events, which count and let
the statement run, the same in every mode, so naive and tuned are counted alike; dialect
events, not ``after_cursor_execute``, because a connection event would add SQLAlchemy's
per-connection and per-statement event dispatch to both modes) and, when a query cache is
installed, its hits and misses (``ormtune.caching.active_cache().stats``). The load test reads
it before and after each step.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from marketplace.app import create_app
from marketplace.settings import Settings
from ormtune.caching import active_cache

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

__all__ = ["app"]

_PING_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"4")]
_executed = [0]
_requests = [0]


def _count(*_: object) -> bool:
    _executed[0] += 1
    return False  # not executed here: SQLAlchemy (or the next listener) runs the statement


for _name in ("do_execute", "do_execute_no_params", "do_executemany"):
    event.listen(Engine, _name, _count)


# Each process may open pool_size + pool_size (overflow) connections; PostgreSQL here allows
# 100 in all and is shared (four servers run at once), so the load test asks for fewer than
# the app's default (20).
fastapi_app = create_app(
    dataclasses.replace(Settings.from_env(), pool_size=int(os.environ.get("LOAD_POOL_SIZE", "5")))
)


@fastapi_app.get("/_load/counters", include_in_schema=False)
async def counters() -> dict[str, Any]:
    cache = active_cache()
    overall = cache.stats.overall if cache is not None else None
    return {
        "pid": os.getpid(),
        "statements": _executed[0],
        "requests": _requests[0],
        "cache_hits": overall.hits if overall is not None else 0,
        "cache_misses": overall.misses if overall is not None else 0,
    }


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The app, counting the HTTP requests it has answered (a plain ASGI wrapper: no
    middleware cost on top of the app's own). ``GET /_load/ping`` is answered here, before
    FastAPI: the cheapest response this server can give."""
    if scope["type"] == "http" and scope["path"] == "/_load/ping":
        await send({"type": "http.response.start", "status": 200, "headers": _PING_HEADERS})
        await send({"type": "http.response.body", "body": b"pong"})
        _requests[0] += 1
        return
    await fastapi_app(scope, receive, send)
    if scope["type"] == "http":
        _requests[0] += 1
