"""``ormtune.install()``: the features an application turns on at start-up, in one call.

::

    installation = ormtune.install(engine, cache=RedisBackend("redis://..."), metrics=True)
    ...
    installation.close()  # at shutdown, or in tests: every feature it turned on goes off

It only composes the features' own entry points (``autoload()``, ``QueryCache.install()``,
``nplusone.install()``, ``instrument()``), so each keeps its documented behaviour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ormtune.backends import MemoryBackend
from ormtune.batchload import autoload as start_autoload
from ormtune.caching import QueryCache
from ormtune.instrumentation import instrument as start_instrumentation
from ormtune.nplusone import install as start_detection
from ormtune.querylog import Registration
from ormtune.typing import CacheBackend

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ormtune.batchload import Autoload
    from ormtune.instrumentation import Instrumentation
    from ormtune.nplusone import Detection, Mode

__all__ = ["Installation", "install"]


class Installation(Registration):
    """What :func:`install` turned on; ``close()`` turns it all off again, in reverse order.

    ``cache`` is the installed :class:`~ormtune.caching.QueryCache` (its ``stats``), and
    ``instrumentation.metrics`` is what to hand to ``OrmtuneMiddleware``.
    """

    __slots__ = ("autoload", "cache", "detection", "instrumentation")

    def __init__(
        self,
        parts: list[Registration],
        autoload: Autoload | None,
        cache: QueryCache | None,
        detection: Detection | None,
        instrumentation: Instrumentation | None,
    ) -> None:
        def close_all() -> None:
            for part in reversed(parts):
                part.close()

        super().__init__(close_all)
        self.autoload = autoload
        self.cache = cache
        self.detection = detection
        self.instrumentation = instrumentation


def install(
    *engines: Engine | AsyncEngine,
    autoload: bool = True,
    cache: bool | CacheBackend | QueryCache = True,
    nplusone: Mode | None = None,
    metrics: bool = False,
    registry: CollectorRegistry | None = None,
) -> Installation:
    """Turn ormtune on for the application.

    * ``autoload``: batch every default lazy load (``ormtune.autoload()``);
    * ``cache``: install a query cache so ``ormtune.cache()`` / ``@ormtune.cached`` work —
      ``True`` for the in-memory backend, a backend (``RedisBackend(...)``), or a configured
      :class:`~ormtune.caching.QueryCache`; ``False`` for none;
    * ``nplusone``: ``"log"``, ``"warn"`` or ``"raise"`` to report the N+1 loops autoload
      leaves (explicit loader options, ``raise`` loaders...), or None;
    * ``metrics``: ``ormtune.instrument(*engines, registry=registry)`` for Prometheus metrics
      and the query and slow-query logs (needs ``ormtune[prometheus]``).

    Everything it turned on is turned off again if a later part fails.
    """
    if not isinstance(cache, bool | QueryCache | CacheBackend):
        raise TypeError(f"cache must be True/False, a CacheBackend or a QueryCache, not {cache!r}")
    parts: list[Registration] = []
    try:
        batching = start_autoload() if autoload else None
        if batching is not None:
            parts.append(batching)
        query_cache: QueryCache | None = None
        if cache is not False:
            if isinstance(cache, QueryCache):
                query_cache = cache
            elif isinstance(cache, bool):
                query_cache = QueryCache(MemoryBackend())
            else:
                query_cache = QueryCache(cache)
            parts.append(Registration(query_cache.install().uninstall))
        detection = start_detection(nplusone) if nplusone is not None else None
        if detection is not None:
            parts.append(Registration(detection.stop))
        instrumentation = start_instrumentation(*engines, registry=registry) if metrics else None
        if instrumentation is not None:
            parts.append(instrumentation)
    except BaseException:
        for part in reversed(parts):
            part.close()
        raise
    return Installation(parts, batching, query_cache, detection, instrumentation)
