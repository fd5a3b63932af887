"""What the ASGI and WSGI middleware share: starting a request's context and capture, the
response headers, and recording the finished request (metrics and the summary log line).

Nothing here may break a request: header building, metrics and logging are each guarded, and
a failure in them is logged to ``ormtune.instrumentation`` at DEBUG and otherwise ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from ormtune.instrumentation._context import RequestContext, _current, accept_request_id
from ormtune.instrumentation._logs import request_logger, safe_log
from ormtune.instrumentation._metrics import PendingObservations
from ormtune.querylog import capture

if TYPE_CHECKING:
    from contextvars import Token

    from ormtune.instrumentation._metrics import Metrics
    from ormtune.querylog import Capture

__all__ = ["ActorScope", "RequestRecorder", "Settings", "Started"]

ActorScope: TypeAlias = Callable[[object], AbstractContextManager[object]]
"""Makes an actor current for the duration of a request, e.g. the audit feature's
``actor_scope``: called with the resolved actor, entered before the application runs and left
after it (``ormtune.integrity`` is never imported; the application wires the two)."""

_internal = logging.getLogger("ormtune.instrumentation")


@dataclass(frozen=True, slots=True)
class Settings:
    """The middleware's options (see :class:`~ormtune.instrumentation.OrmtuneMiddleware`)."""

    metrics: Metrics | None
    server_timing: bool
    query_count_header: bool
    request_id_header: str
    trust_request_id: bool
    log_level: int
    actor: Callable[[Any], object] | None
    actor_scope: ActorScope | None


@dataclass(slots=True, eq=False)
class Started:
    """A request in flight: its context, capture and the tokens to undo them."""

    context: RequestContext
    capture: Capture
    token: Token[RequestContext | None]
    actor_scope: AbstractContextManager[object]


class RequestRecorder:
    """Starts and finishes requests for one middleware instance."""

    __slots__ = ("settings",)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def start(
        self, method: str, path: str, incoming_id: str | bytes | None, source: Any
    ) -> Started:
        """Open the request's context and capture; ``source`` is the ASGI scope or WSGI
        environ, handed to the actor resolver."""
        settings = self.settings
        request_id = accept_request_id(incoming_id if settings.trust_request_id else None)
        cap = capture()
        context = RequestContext(request_id, method, path, cap.log, PendingObservations())
        token = _current.set(context)
        cap.start()
        scope: AbstractContextManager[object] = nullcontext()
        if settings.actor is not None:
            try:
                context.actor = settings.actor(source)
                if settings.actor_scope is not None and context.actor is not None:
                    scope = settings.actor_scope(context.actor)
            except Exception:
                _internal.debug("the actor resolver failed", exc_info=True)
        return Started(context, cap, token, scope)

    def response_headers(self, context: RequestContext) -> list[tuple[str, str]]:
        """Headers to add to the response: request id, Server-Timing, X-Query-Count."""
        settings = self.settings
        headers = [(settings.request_id_header, context.request_id)]
        try:
            log = context.queries
            if settings.server_timing:
                count = log.count
                noun = "query" if count == 1 else "queries"
                headers.append(
                    (
                        "server-timing",
                        f'db;dur={log.total_duration * 1000:.3f};desc="{count} {noun}"',
                    )
                )
            if settings.query_count_header:
                headers.append(("x-query-count", str(log.count)))
        except Exception:
            _internal.debug("building ormtune's response headers failed", exc_info=True)
        return headers

    def finish(self, started: Started, status: int) -> None:
        """Close the capture and context, then record metrics and the summary line."""
        context = started.context
        duration = time.perf_counter() - context.started
        started.capture.stop()
        try:
            _current.reset(started.token)
        except ValueError:  # finished in another context than it started in (WSGI close())
            _current.set(None)
        try:
            context.pending.flush()  # the statements' durations, held back by Metrics.on_query
        except Exception:
            _internal.debug("recording query metrics failed", exc_info=True)
        log = context.queries
        queries, db_duration = log.count, log.total_duration
        metrics = self.settings.metrics
        if metrics is not None:
            try:
                metrics.record_request(
                    route=context.route,
                    method=context.method,
                    status=status,
                    duration=duration,
                    queries=queries,
                    db_duration=db_duration,
                    request_id=context.request_id,
                )
            except Exception:
                _internal.debug("recording request metrics failed", exc_info=True)
        level = self.settings.log_level
        if request_logger.isEnabledFor(level):
            self._log(context, status, duration, queries, db_duration)

    def _log(
        self,
        context: RequestContext,
        status: int,
        duration: float,
        queries: int,
        db_duration: float,
    ) -> None:
        fields: dict[str, Any] = {
            "event": "request",
            "request_id": context.request_id,
            "method": context.method,
            "route": context.route,
            "path": context.path,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "queries": queries,
            "db_duration_ms": round(db_duration * 1000, 3),
        }
        if context.actor is not None:
            fields["actor"] = str(context.actor)
        safe_log(
            request_logger,
            self.settings.log_level,
            "%s %s %d in %.1f ms, %d queries (%.1f ms)",
            context.method,
            context.route or context.path,
            status,
            duration * 1000,
            queries,
            db_duration * 1000,
            extra=fields,
        )
