"""Query-result caching with automatic invalidation that never serves a stale row.

::

    ormtune.caching.QueryCache(RedisBackend("redis://..."), namespace="shop").install()

    stmt = select(Payment).where(Payment.user_id == 7).options(ormtune.cache(ttl=300))
    session.scalars(stmt).all()       # a miss fills the cache, the next run is a hit

Every entry depends on versions of the tables it read (finer: of the rows its equality filter
selects); committing a write bumps them, so a hit is never older than the last commit.
"""

from __future__ import annotations

from ormtune.caching._cache import QueryCache, active_cache
from ormtune.caching._cache import default_cache as _default_cache
from ormtune.caching._decorator import cached
from ormtune.caching._option import CacheOption
from ormtune.caching._option import check_ttl as _check_ttl
from ormtune.caching._responses import CachedRoute, Identity, ResponseCache
from ormtune.caching._stats import CacheStats, NameStats

__all__ = [
    "CacheOption",
    "CacheStats",
    "CachedRoute",
    "Identity",
    "NameStats",
    "QueryCache",
    "ResponseCache",
    "active_cache",
    "cache",
    "cached",
    "invalidate",
]


def cache(ttl: float | None = None, *, name: str | None = None) -> CacheOption:
    """The ORM option that caches a statement's result: ``stmt.options(ormtune.cache())``.

    ``ttl`` is in seconds (default: the cache's ``default_ttl``); ``name`` groups statistics
    and lets ``ormtune.invalidate(name)`` drop the entries. Installs the in-memory default
    cache if no cache is installed yet.
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"name must be a non-empty string or None, but was given {name!r}")
    option = CacheOption(_check_ttl(ttl), name)
    _default_cache()
    return option


def invalidate(*targets: object, tables: tuple[str, ...] = ()) -> None:
    """Invalidate entries of the installed cache: mapped classes, ``Table`` objects, cache
    names, or ``tables=`` by name; with no arguments, everything. For writes that bypass
    the application."""
    _default_cache().invalidate(*targets, tables=tables)
