"""Pure ASGI middleware (FastAPI, Starlette, Litestar, any ASGI 3 app) and the ``/metrics`` app.

Pure ASGI, not Starlette's ``BaseHTTPMiddleware``: no framework import, the response is
streamed through untouched except for headers added to ``http.response.start``, and the
application runs in the middleware's own task, so the request's context (id, capture) is the
application's context.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from ormtune.instrumentation._metrics import _prometheus
from ormtune.instrumentation._request import ActorScope, RequestRecorder, Settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from prometheus_client import CollectorRegistry

    from ormtune.instrumentation._context import RequestContext
    from ormtune.instrumentation._metrics import Metrics

__all__ = ["ASGIApp", "OrmtuneMiddleware", "metrics_app", "route_template"]

ASGIApp = Any
"""An ASGI 3 application: ``async (scope, receive, send) -> None``."""

_internal = logging.getLogger("ormtune.instrumentation")


def route_template(scope: MutableMapping[str, Any]) -> str | None:
    """The route template the framework matched, read from the ASGI scope after routing.

    Starlette and FastAPI put the matched route in ``scope["route"]`` (its ``path_format`` or
    ``path``, prefixed with the ``root_path`` a ``Mount`` added); Litestar puts the template
    in ``scope["path_template"]``. None when no route matched (a 404), so a raw path never
    becomes a label.
    """
    template = scope.get("path_template")
    if isinstance(template, str):
        return template
    route = scope.get("route")
    if route is None:
        return None
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    mounted = scope.get("root_path", "")
    app_root = scope.get("ormtune.root_path", "")
    if isinstance(mounted, str) and isinstance(app_root, str) and mounted.startswith(app_root):
        path = mounted[len(app_root) :] + path
    return path


class OrmtuneMiddleware:
    """Per HTTP request: a request id, a capture of its queries, response headers, metrics and
    one summary log line.

    * ``X-Request-ID``: an incoming one of 1-128 visible ASCII characters is kept (unless
      ``trust_request_id=False``), anything else is replaced by a new id; the id is sent back
      and is in :func:`current_request` and every JSON log line of the request.
    * A :func:`ormtune.capture` per request, isolated from every other request under any
      concurrency: ``current_request().queries`` is this request's :class:`QueryLog`.
    * ``Server-Timing: db;dur=<ms>;desc="<n> queries"`` (``server_timing=False`` drops it) and
      ``X-Query-Count`` (``query_count_header=True``), counted when the response starts.
    * With ``metrics=``: request count and duration by route template, method and status
      class; queries and database time per request by route.
    * One line on the ``ormtune.request`` logger at ``log_level`` (INFO).
    * ``actor=`` resolves who the request acts for from the ASGI scope (for example
      ``lambda scope: scope["user"].id`` behind an authentication middleware), and
      ``actor_scope=`` makes it current while the application runs (the audit feature's hook).

    ``route=`` replaces :func:`route_template` for frameworks that keep the template elsewhere.
    WebSocket and lifespan traffic pass straight through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics | None = None,
        server_timing: bool = True,
        query_count_header: bool = False,
        request_id_header: str = "X-Request-ID",
        trust_request_id: bool = True,
        log_level: int = logging.INFO,
        route: Callable[[MutableMapping[str, Any]], str | None] = route_template,
        actor: Callable[[MutableMapping[str, Any]], object] | None = None,
        actor_scope: ActorScope | None = None,
    ) -> None:
        self.app = app
        self._route = route
        self._request_id_header = request_id_header.lower().encode("latin-1")
        self._recorder = RequestRecorder(
            Settings(
                metrics=metrics,
                server_timing=server_timing,
                query_count_header=query_count_header,
                request_id_header=request_id_header.lower(),
                trust_request_id=trust_request_id,
                log_level=log_level,
                actor=actor,
                actor_scope=actor_scope,
            )
        )

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == self._request_id_header:
                incoming = value
                break
        scope.setdefault("ormtune.root_path", scope.get("root_path", ""))
        recorder = self._recorder
        started = recorder.start(scope.get("method", "GET"), scope.get("path", ""), incoming, scope)
        context = started.context
        status = 500

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self._note_route(scope, context)
                extra = recorder.response_headers(context)
                message = dict(message)
                message["headers"] = [
                    *message.get("headers", ()),
                    *((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra),
                ]
            await send(message)

        try:
            with started.actor_scope:
                await self.app(scope, receive, send_with_headers)
        finally:
            self._note_route(scope, context)
            recorder.finish(started, status)

    def _note_route(self, scope: MutableMapping[str, Any], context: RequestContext) -> None:
        if context.route is not None:
            return
        try:
            context.route = self._route(scope)
        except Exception:
            _internal.debug("the route resolver failed", exc_info=True)


def metrics_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """An ASGI app serving Prometheus metrics: mount it at ``/metrics``.

    It serves ``registry`` (default: the global ``REGISTRY``), in the OpenMetrics format when
    the scraper asks for it (exemplars included) and the text format otherwise. Under a
    multi-process server (``PROMETHEUS_MULTIPROC_DIR`` set) and without an explicit
    ``registry``, every scrape aggregates the files of all worker processes through
    ``prometheus_client.multiprocess.MultiProcessCollector``, so any worker answers for all.
    """
    prom = _prometheus()
    from prometheus_client.exposition import choose_encoder

    async def app(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        accept = ""
        for name, value in scope.get("headers", ()):
            if name == b"accept":
                accept = value.decode("latin-1")
        target = registry
        if target is None:
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess

                target = prom.CollectorRegistry()
                multiprocess.MultiProcessCollector(target)  # type: ignore[no-untyped-call]
            else:
                target = prom.REGISTRY
        encoder, content_type = choose_encoder(accept)
        body = encoder(target)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode("latin-1")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app
