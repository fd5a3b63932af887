"""The WSGI twin of the ASGI middleware, for Flask and any other WSGI application.

Everything works as in :class:`~ormtune.instrumentation.OrmtuneMiddleware`, with two WSGI
differences: the request ends when the server closes the response iterable (so statements run
while a streamed body is produced still count), and WSGI has no standard place for the route
template, so the application names it with :func:`~ormtune.instrumentation.set_route` (Flask:
``app.before_request(lambda: set_route(request.url_rule.rule if request.url_rule else None))``)
or the middleware is given ``route=`` to read it from the environ.
"""

from __future__ import annotations

import contextvars
import logging
from typing import TYPE_CHECKING, Any

from ormtune.instrumentation._request import ActorScope, RequestRecorder, Settings, Started

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from contextvars import Context

    from ormtune.instrumentation._metrics import Metrics

__all__ = ["OrmtuneWSGIMiddleware", "WSGIApp"]

WSGIApp = Any
"""A WSGI application: ``(environ, start_response) -> Iterable[bytes]``."""

_internal = logging.getLogger("ormtune.instrumentation")


class _Body:
    """The application's response iterable, produced in the request's own context; closing it
    finishes the request."""

    __slots__ = ("_context", "_finish", "_iterable", "_iterator")

    def __init__(
        self, iterable: Iterable[bytes], finish: Callable[[], None], context: Context
    ) -> None:
        self._iterable = iterable
        self._iterator: Iterator[bytes] | None = None
        self._finish = finish
        self._context = context

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._iterable)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._context.run(self._finish)


class OrmtuneWSGIMiddleware:
    """Request id, per-request capture, ``Server-Timing`` / ``X-Query-Count``, metrics and a
    summary log line for a WSGI application; the options are those of
    :class:`~ormtune.instrumentation.OrmtuneMiddleware` (``actor=`` and ``route=`` receive the
    WSGI environ)."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        metrics: Metrics | None = None,
        server_timing: bool = True,
        query_count_header: bool = False,
        request_id_header: str = "X-Request-ID",
        trust_request_id: bool = True,
        log_level: int = logging.INFO,
        route: Callable[[dict[str, Any]], str | None] | None = None,
        actor: Callable[[dict[str, Any]], object] | None = None,
        actor_scope: ActorScope | None = None,
    ) -> None:
        self.app = app
        self._route = route
        self._environ_key = "HTTP_" + request_id_header.upper().replace("-", "_")
        self._recorder = RequestRecorder(
            Settings(
                metrics=metrics,
                server_timing=server_timing,
                query_count_header=query_count_header,
                request_id_header=request_id_header,
                trust_request_id=trust_request_id,
                log_level=log_level,
                actor=actor,
                actor_scope=actor_scope,
            )
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        # The request's capture and context live in a Context of their own, entered again to
        # produce each chunk of the body and to close it, so nothing of this request stays
        # behind in the worker thread's context if the server closes the response late.
        context = contextvars.copy_context()
        return context.run(self._call, environ, start_response, context)

    def _call(
        self, environ: dict[str, Any], start_response: Callable[..., Any], context: Context
    ) -> Any:
        recorder = self._recorder
        started = recorder.start(
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("PATH_INFO", ""),
            environ.get(self._environ_key),
            environ,
        )
        status = [500]
        finished = [False]

        def finish() -> None:
            if finished[0]:
                return
            finished[0] = True
            self._note_route(environ, started)
            recorder.finish(started, status[0])

        def start_with_headers(
            status_line: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            try:
                status[0] = int(status_line.split(" ", 1)[0])
            except ValueError:
                status[0] = 500
            self._note_route(environ, started)
            headers = [*headers, *recorder.response_headers(started.context)]
            return start_response(status_line, headers, exc_info)

        try:
            with started.actor_scope:
                body = self.app(environ, start_with_headers)
        except BaseException:
            finish()
            raise
        return _Body(body, finish, context)

    def _note_route(self, environ: dict[str, Any], started: Started) -> None:
        context = started.context
        if context.route is not None or self._route is None:
            return
        try:
            context.route = self._route(environ)
        except Exception:
            _internal.debug("the route resolver failed", exc_info=True)
