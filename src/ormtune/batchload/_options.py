"""ORM options that carry autoload settings through queries and into the objects they load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import UserDefinedOption
from sqlalchemy.orm.util import LoaderCriteriaOption
from sqlalchemy.sql.cache_key import HasCacheKey

from ormtune.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AutoloadOption",
    "BatchMarker",
    "Settings",
    "carried",
    "check_chunk_size",
]

DEFAULT_CHUNK_SIZE = 500


def check_chunk_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"chunk_size must be a whole number of keys, but was given {value!r} "
            f"(of type {type(value).__qualname__})"
        )
    if value < 1:
        raise ConfigurationError(f"chunk_size must be 1 or more, but was given {value}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """How one batch loads: at most ``chunk_size`` parent keys per child query."""

    chunk_size: int = DEFAULT_CHUNK_SIZE


class _KeyedOption(UserDefinedOption):
    """A user option that is part of the statement's cache key.

    SQLAlchemy pairs the options of a cached statement with those of the statement being run
    *by position* when it hands them to loaded objects. A plain ``UserDefinedOption`` adds
    nothing to the cache key, so a statement compiled earlier with a different set of them
    would shift or drop ours; keyed, statements only share a compiled form when their options
    line up.
    """

    _is_has_cache_key = True
    settings: Settings

    def _gen_cache_key(self, anon_map: object, bindparams: object) -> tuple[object, ...]:
        return (type(self).__qualname__, self.settings.chunk_size)


class AutoloadOption(_KeyedOption):
    """``select(User).options(ormtune.autoload_option())``: batch the lazy loads of every object
    this statement loads, and of the objects those batches load in turn.

    The option propagates to the loaded objects (``propagate_to_loaders``), which is how their
    later lazy loads know they were asked for. It does not change the statement's SQL or its
    place in SQLAlchemy's statement cache.
    """

    propagate_to_loaders = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.settings = settings

    def __repr__(self) -> str:
        return f"autoload_option(chunk_size={self.settings.chunk_size})"


class BatchMarker(_KeyedOption):
    """Marks a batch statement ormtune issued, and the loader options it used.

    Objects loaded by a batch carry those options (its ``selectinload``, its ``load_only``)
    in their load options, like objects loaded by any query with loader options. Loads with
    explicit loader options are never batched, but these are ormtune's own: the marker
    travelling beside them says so, so the next level of a tree is batched too.

    ``reselects_loaded_objects`` tells the query cache (which reads it by name) that the
    statement re-selects objects already in the session, so its result is never stored.
    """

    propagate_to_loaders = True

    def __init__(self, loads: list[HasCacheKey], settings: Settings) -> None:
        super().__init__((loads, settings))
        self.load_keys: list[object] = [load._generate_cache_key() for load in loads]
        self.settings = settings
        self.reselects_loaded_objects = bool(loads)

    def __reduce__(self) -> tuple[Any, tuple[Settings]]:
        # Objects are pickled with their load options. Cache keys name mappers, which do not
        # pickle; an unpickled marker vouches for nothing, so such objects lazy-load plainly.
        return _unpickled_marker, (self.settings,)


def _unpickled_marker(settings: Settings) -> BatchMarker:
    return BatchMarker([], settings)


def carried(option: object) -> bool:
    """Whether a propagated option filters or annotates loads without shaping them (criteria
    such as ormtune.integrity's soft-delete filter, user-defined options such as
    ``include_deleted()``): such options do not stop batching, and every batch carries them,
    as the lazy load it replaces would have."""
    if isinstance(option, AutoloadOption | BatchMarker):
        return False
    return isinstance(option, LoaderCriteriaOption | UserDefinedOption)


def wants_lone_batches(load_options: tuple[Any, ...]) -> bool:
    """Whether a propagated option asks for an object's relationships to be loaded by a
    top-level statement even when there is nothing to batch them with (one object, or one
    target for all): the query cache's option does (``batch_lone_loads``, read by name),
    because such a statement is one it can serve, where SQLAlchemy's own lazy load is not."""
    return any(getattr(option, "batch_lone_loads", False) for option in load_options)


def autoload_settings(load_options: tuple[Any, ...]) -> tuple[bool, Settings | None]:
    """Read an object's load options: (may it be batched at all, the settings of an
    ``autoload_option()`` among them, if any).

    It may not be batched when a loader option other than ormtune's own shaped its loading.
    ormtune's own are recognised by structure (cache key), not identity: on a statement-cache
    hit SQLAlchemy hands the loaded objects the options of the statement it compiled first. A
    batch marker only vouches for its ``selectinload``; it never turns autoload on by itself.
    """
    settings: Settings | None = None
    ours: list[object] = []
    for opt in load_options:
        if isinstance(opt, AutoloadOption):
            settings = opt.settings
        elif isinstance(opt, BatchMarker):
            ours += opt.load_keys
    for opt in load_options:
        if isinstance(opt, AutoloadOption | BatchMarker) or carried(opt):
            continue
        if not ours or not isinstance(opt, HasCacheKey) or opt._generate_cache_key() not in ours:
            return False, None
    return True, settings
