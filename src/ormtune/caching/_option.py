"""``ormtune.cache(...)``: the ORM option that asks for a statement's result to be cached."""

from __future__ import annotations

import math

from sqlalchemy.orm import UserDefinedOption

from ormtune.exceptions import ConfigurationError

__all__ = ["CacheOption", "check_ttl"]


def check_ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a number of seconds or None, but was given {ttl!r}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ConfigurationError(f"ttl must be a positive number of seconds, but was given {ttl}")
    return float(ttl)


class CacheOption(UserDefinedOption):
    """``select(Payment).options(ormtune.cache(ttl=300, name="payments:user"))``.

    Read by the cache's ``do_orm_execute`` hook. It is part of the statement's cache key (so
    statements that differ only in it never share SQLAlchemy's compiled form and its
    positional option pairing).

    It propagates to the loaded objects (``propagate_to_loaders``), as ``include_deleted()``
    does, so statements ormtune issues on their behalf are cached too, with the same ``ttl``
    and ``name``: ``ormtune.autoload()``'s batch loads of their relationships (top-level
    statements, invalidated like any other) and, through the objects those batches load, the
    next level's. ``batch_lone_loads`` asks autoload to make such a statement even when
    there is nothing to batch with (one object, or the same target for all), where it would
    otherwise leave the load to SQLAlchemy. SQLAlchemy's own relationship loads (the lazy
    loads autoload does not take over, ``selectinload``, ``subqueryload``) and refreshes of
    expired attributes stay uncached.
    """

    _is_has_cache_key = True
    propagate_to_loaders = True
    batch_lone_loads = True  # read by ormtune.batchload, by name

    def __init__(self, ttl: float | None, name: str | None) -> None:
        super().__init__((ttl, name))
        self.ttl = ttl
        self.name = name

    def _gen_cache_key(self, anon_map: object, bindparams: object) -> tuple[object, ...]:
        return ("ormtune.cache", self.ttl, self.name)

    def __repr__(self) -> str:
        return f"cache(ttl={self.ttl!r}, name={self.name!r})"
