"""``create_app(settings)``: the marketplace as a FastAPI application.

The lifespan creates the engine and, in tuned mode, installs ormtune (autoload, the query
cache on memory or Redis, metrics); leaving it undoes all of it, so a process can create and
close many applications (tests and the demo do).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Info, make_asgi_app
from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.routing import Route

import ormtune
from marketplace.db import create_engine_for
from marketplace.deps import Runtime, identify
from marketplace.errors import add_error_handlers
from marketplace.repositories import Repositories
from marketplace.routes import ROUTERS
from marketplace.settings import Settings
from ormtune.backends import MemoryBackend, RedisBackend
from ormtune.instrumentation import metrics as ormtune_metrics

__all__ = ["create_app"]

_log = logging.getLogger("marketplace")

# Tuned mode caches the whole responses of every read, each with the TTL of its queries'
# cache (repositories.py). A private route's responses are per caller; the others are the
# same for every signed-in caller.
CACHED_ROUTES = [
    ormtune.CachedRoute("/users/{user_id}/payments", ttl=300, private=True),
    ormtune.CachedRoute("/payments/history", ttl=300, private=True),
    ormtune.CachedRoute("/reviews/{user_id}", ttl=1800),
    ormtune.CachedRoute("/reviews/by/{user_id}", ttl=1800),
    ormtune.CachedRoute("/profiles/{user_id}", ttl=3600),
    ormtune.CachedRoute("/account-details", ttl=3600, private=True),
    ormtune.CachedRoute("/jobs/{job_id}", ttl=1800),
    ormtune.CachedRoute("/jobs", ttl=300),
]

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


class _Endpoint:
    """An ASGI app as a route endpoint (Starlette calls objects that are not functions as
    ASGI apps), so ``/metrics`` answers at exactly that path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application for ``settings`` (default: :meth:`Settings.from_env`)."""
    settings = Settings.from_env() if settings is None else settings
    registry = CollectorRegistry()
    tuned = settings.mode == "tuned"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine_for(settings.database_url, pool_size=settings.pool_size)
        backend: RedisBackend | MemoryBackend | None = None
        installation: ormtune.Installation | None = None
        try:
            if tuned:
                backend = (
                    RedisBackend(settings.redis_url, prefix=settings.cache_prefix)
                    if settings.redis_url
                    else MemoryBackend()
                )
                query_cache = ormtune.QueryCache(backend, namespace=settings.cache_prefix)
                installation = ormtune.install(
                    engine, cache=query_cache, metrics=True, registry=registry
                )
                if settings.redis_url:
                    # Entries in Redis may predate writes no cache saw (the data generator,
                    # migrations, another deployment): start from nothing. If Redis is down,
                    # ormtune keeps the invalidation pending and serves nothing from the
                    # cache until Redis has taken it, so the app can start and serve anyway.
                    try:
                        query_cache.invalidate()
                    except ormtune.CacheBackendError:
                        _log.warning("Redis unreachable at start-up: serving without the cache")
            app.state.runtime = Runtime(
                settings=settings,
                engine=engine,
                sessions=async_sessionmaker(engine, expire_on_commit=False),
                repositories=Repositories(settings.mode),
                installation=installation,
            )
            yield
        finally:
            app.state.runtime = None
            if installation is not None:
                installation.close()
            if isinstance(backend, RedisBackend):
                await backend.aclose()  # the asyncio client it made for this event loop
                backend.close()
            await engine.dispose()

    app = FastAPI(
        title="marketplace",
        summary="ormtune's reference application: a gig marketplace",
        version="1.0",
        lifespan=lifespan,
    )
    for router in ROUTERS:
        app.include_router(router)
    add_error_handlers(app)
    if tuned:
        # Inside the instrumentation (added after it, so it runs first): a cached response
        # still gets its request id, metrics and log line.
        app.add_middleware(ormtune.ResponseCache, routes=CACHED_ROUTES, identify=identify)
        app.add_middleware(
            ormtune.OrmtuneMiddleware,
            metrics=ormtune_metrics(registry),
            query_count_header=True,
        )
        exposition: ASGIApp = ormtune.metrics_app(registry)
    else:
        Info("marketplace", "the marketplace application", registry=registry).info(
            {"mode": settings.mode}
        )
        exposition = make_asgi_app(registry)
    app.router.routes.append(Route("/metrics", _Endpoint(exposition), methods=["GET"]))
    app.state.settings = settings
    app.state.runtime = None
    return app
