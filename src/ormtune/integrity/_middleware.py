"""ASGI middleware that sets the audit context (actor and request id) for each request.

Pure ASGI, no framework imported: it wraps any ASGI application (Starlette, FastAPI, Litestar,
Django's ASGI handler). ``ormtune.instrumentation``'s middleware can do the actor part instead
(``actor_scope=ormtune.integrity.actor``); this one is for applications without it.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

from ormtune.integrity._context import current_actor, reset_audit_context, set_audit_context

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["AuditContextMiddleware"]

# 1-128 visible ASCII characters: anything else could split a header or a log line.
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


class AuditContextMiddleware:
    """Attribute the writes of each HTTP or WebSocket request to its actor and request id.

    ``actor(scope)`` says who the request acts for (``None``: nobody, e.g. anonymous), for
    example ``lambda scope: scope["user"].id`` behind an authentication middleware; an error
    it raises fails the request rather than attributing writes to the wrong actor. Without
    ``actor=``, the actor already in force (set by an outer middleware) is kept.
    ``request_id(scope)`` gives the request id (for example the one instrumentation's
    middleware chose); by default it is the incoming ``X-Request-ID`` header (``header=``)
    when it is 1-128 visible ASCII characters, else a new random id. Lifespan traffic passes
    straight through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        actor: Callable[[Scope], object] | None = None,
        request_id: Callable[[Scope], str | None] | None = None,
        header: str = "X-Request-ID",
    ) -> None:
        self.app = app
        self._actor = actor
        self._request_id = request_id
        self._header = header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        who = self._actor(scope) if self._actor is not None else current_actor()
        if self._request_id is not None:
            request_id = self._request_id(scope)
        else:
            request_id = self._incoming(scope) or uuid.uuid4().hex
        token = set_audit_context(actor=who, request_id=request_id)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_audit_context(token)

    def _incoming(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == self._header:
                try:
                    text = bytes(value).decode("ascii")
                except UnicodeDecodeError:
                    return None
                return text if _VALID_REQUEST_ID.fullmatch(text) else None
        return None
