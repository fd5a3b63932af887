"""The request being served in this context: its id, route, actor and queries.

The middleware sets it for the duration of a request; log formatting, the query logs and the
application read it with :func:`current_request`. It lives in a ``ContextVar``, so concurrent
requests (threads or asyncio tasks) never see each other's.
"""

from __future__ import annotations

import random
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ormtune.instrumentation._metrics import PendingObservations
    from ormtune.querylog import QueryLog

__all__ = [
    "MAX_REQUEST_ID_LENGTH",
    "RequestContext",
    "accept_request_id",
    "current_request",
    "new_request_id",
    "set_route",
]

MAX_REQUEST_ID_LENGTH = 128
# Visible ASCII only: no spaces, control characters or anything that could split a header or
# a log line. Longer or other ids are replaced, never echoed.
_VALID_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_LENGTH}}}")


def new_request_id() -> str:
    """A fresh request id: 32 random hex digits.

    Ids must be unique, not secret, so they come from ``random`` (reseeded in every forked
    worker by Python itself), which costs a fraction of a ``uuid4()``'s system call.
    """
    return f"{random.getrandbits(128):032x}"


def accept_request_id(incoming: str | bytes | None) -> str:
    """The incoming ``X-Request-ID`` if it is 1-128 visible ASCII characters, else a new id."""
    if isinstance(incoming, bytes):
        try:
            incoming = incoming.decode("ascii")
        except UnicodeDecodeError:
            return new_request_id()
    if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_request_id()


@dataclass(slots=True, eq=False)
class RequestContext:
    """One HTTP request as ormtune sees it.

    ``route`` is the route *template* (``/users/{user_id}``) once the framework has routed the
    request (None before, and for a request no route matched); ``queries`` is the request's
    own :class:`~ormtune.querylog.QueryLog`; ``actor`` is who the request acts for, when an
    actor resolver was given to the middleware. ``pending`` holds the request's statement
    durations until the middleware records them in the metrics at the request's end.
    """

    request_id: str
    method: str
    path: str
    queries: QueryLog
    pending: PendingObservations
    route: str | None = None
    actor: object | None = None
    started: float = field(default_factory=time.perf_counter)


_current: ContextVar[RequestContext | None] = ContextVar("ormtune_request", default=None)


def current_request() -> RequestContext | None:
    """The request being served in this context, or None outside a request."""
    return _current.get()


def set_route(template: str | None) -> None:
    """Name the current request's route template, for frameworks that do not put it where the
    middleware looks (Flask: call it from ``before_request`` with ``request.url_rule.rule``).
    Outside a request it does nothing."""
    context = _current.get()
    if context is not None:
        context.route = template
