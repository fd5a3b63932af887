"""``@ormtune.cached(...)``: cache what a function computes from queries.

The result is stored as plain data (the types :mod:`ormtune.caching._codec` encodes: numbers,
strings, dates, decimals, UUIDs, lists, tuples and dicts of them), keyed by the function and
its arguments. Sessions, connections and engines among the arguments choose where to read,
not what, and are left out of the key. The entry depends on the tables the function read:
listed with ``depends_on``, or, by default, discovered from the statements its first call ran
(that call is not stored: there was no version snapshot to store it with). A later call that
reads a table not seen before is not stored either, and the table joins the dependencies.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.orm import Session
from sqlalchemy.util import greenlet_spawn

from ormtune.caching import _codec
from ormtune.caching._flight import AsyncSingleFlight, SingleFlight
from ormtune.caching._recording import BackslashSQL, recording
from ormtune.caching._snapshots import note_snapshot
from ormtune.caching._tokens import ANY_ROW, EVERYTHING, name_token, table_group
from ormtune.exceptions import CacheBackendError
from ormtune.querylog import analyze

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from ormtune.caching._cache import QueryCache
    from ormtune.typing import Lookup, Token

__all__ = ["cached"]

P = ParamSpec("P")
R = TypeVar("R")

_WAIT = 30.0


def _not_keyed(value: object) -> bool:
    if isinstance(value, Session | Connection | Engine):
        return True
    return type(value).__name__ in {"AsyncSession", "AsyncConnection", "AsyncEngine"}


def _sync_session(value: object) -> Session | None:
    if isinstance(value, Session):
        return value
    sync = getattr(value, "sync_session", None)  # AsyncSession
    return sync if isinstance(sync, Session) else None


def _sessions(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Session]:
    found = [_sync_session(value) for value in (*args, *kwargs.values())]
    return [session for session in found if session is not None]


def _bind_of(cache: QueryCache, value: object) -> str:
    session = _sync_session(value)
    target: Any = session.bind if session is not None else value
    target = getattr(target, "sync_engine", target)  # AsyncEngine
    target = getattr(target, "engine", target)  # Connection -> Engine
    if isinstance(target, Engine):
        return cache._bind_identity(target)
    return type(value).__qualname__  # a session with several binds: named by its queries


def _unsafe(cache: QueryCache, sessions: list[Session]) -> str | None:
    """Why the cache must stay out of a call with these sessions, if it must.

    A session that wrote reads its own uncommitted rows; a session inside a REPEATABLE READ
    transaction reads an older snapshot than the cache holds.
    """
    for session in sessions:
        written = cache._tracker.written_groups(session)
        if written:
            return "session wrote to " + ", ".join(sorted(written))
        for snapshot in cache._tracker.repeatable_snapshots(session):
            if snapshot.version is None or snapshot.version != cache._commit_version():
                return "transaction snapshot is older than the last commit"
    return None


def _groups(depends_on: Iterable[object]) -> frozenset[str]:
    groups: set[str] = set()
    for target in depends_on:
        if isinstance(target, str):
            groups.add(table_group(target))
        elif isinstance(target, Table):
            groups.add(table_group(target.name))
        elif isinstance(target, type) and hasattr(target, "__mapper__"):
            groups |= {table_group(t.name) for t in target.__mapper__.tables}
        else:
            raise TypeError(
                f"depends_on takes mapped classes, Table objects or table names, not {target!r}"
            )
    return frozenset(groups)


class _Cached:
    """The state of one decorated function: its learnt dependencies and its key prefix."""

    def __init__(
        self,
        fn: Callable[..., Any],
        ttl: float | None,
        depends_on: frozenset[str] | None,
        name: str,
    ) -> None:
        self.fn = fn
        self.ttl = ttl
        self.name = name
        self.groups = depends_on
        self.explicit = depends_on is not None
        self.prefix = f"{fn.__module__}.{fn.__qualname__}"
        self.signature = inspect.signature(fn)

    def key(self, cache: QueryCache, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        parts: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            # A session or engine says which database to read: its identity, not the object.
            parts[name] = _bind_of(cache, value) if _not_keyed(value) else value
        try:
            encoded = _codec.encode_key_part(parts)
        except _codec.Unencodable:
            return None
        material = "\x1f".join((cache.namespace, self.prefix, encoded))
        return "f:" + hashlib.sha256(material.encode()).hexdigest()

    def tokens(self) -> list[Token]:
        assert self.groups is not None
        tokens: list[Token] = [(group, ANY_ROW) for group in sorted(self.groups)]
        return [*tokens, EVERYTHING, name_token(self.name)]

    def learn(self, recorded: list[str]) -> bool:
        """Add the tables ``recorded`` read; ``True`` if they were all known already."""
        if self.explicit:
            return True
        read = frozenset(
            table_group(table)
            for sql in recorded
            for table in analyze(sql, isinstance(sql, BackslashSQL)).tables
        )
        if self.groups is not None and read <= self.groups:
            return True
        self.groups = read | (self.groups or frozenset())
        return False


def cached(
    ttl: float | None = None,
    *,
    depends_on: Iterable[object] | None = None,
    name: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Cache a function's result (sync or ``async def``) until a table it read changes.

    ``depends_on`` lists mapped classes, ``Table`` objects or table names; by default the
    tables are discovered from the function's queries. ``name`` (default: the function's
    qualified name) groups statistics and works with ``ormtune.invalidate(name)``.
    """
    from ormtune.caching._cache import default_cache
    from ormtune.caching._option import check_ttl

    checked_ttl = check_ttl(ttl)
    groups = _groups(depends_on) if depends_on is not None else None

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        state = _Cached(fn, checked_ttl, groups, name or f"{fn.__module__}.{fn.__qualname__}")
        if inspect.iscoroutinefunction(fn):
            flights = AsyncSingleFlight()

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                cache = default_cache()
                sessions = _sessions(args, kwargs)
                unsafe = await greenlet_spawn(_unsafe, cache, sessions) if sessions else None
                if unsafe is not None:
                    cache._stats.bypass(state.name, unsafe)
                    return await fn(*args, **kwargs)
                key = state.key(cache, args, kwargs)
                if key is None or state.groups is None:
                    return await _run_async(state, cache, key, None, None, args, kwargs)
                tokens = state.tokens()
                lookup = await _lookup_async(cache, state, key, tokens)
                if lookup is None:
                    return await fn(*args, **kwargs)
                if lookup.value is not None:
                    found = _decode(cache, state, lookup, tokens)
                    if found is not _MISSING:
                        return found
                if not await flights.lead_or_wait(key, _WAIT):
                    again = await _lookup_async(cache, state, key, tokens)
                    if again is not None and again.value is not None:
                        found = _decode(cache, state, again, tokens)
                        if found is not _MISSING:
                            return found
                    return await _run_async(state, cache, key, tokens, lookup, args, kwargs)
                try:
                    return await _run_async(state, cache, key, tokens, lookup, args, kwargs)
                finally:
                    flights.land(key)

            return cast("Callable[P, R]", async_wrapper)

        flights_sync = SingleFlight()

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cache = default_cache()
            sessions = _sessions(args, kwargs)
            unsafe = _unsafe(cache, sessions)
            if unsafe is not None:
                cache._stats.bypass(state.name, unsafe)
                return fn(*args, **kwargs)
            key = state.key(cache, args, kwargs)
            if key is None or state.groups is None:
                return _run(state, cache, key, None, None, args, kwargs)
            tokens = state.tokens()
            try:
                lookup = cache.backend.lookup(key, tokens)
            except CacheBackendError as exc:
                cache._failed(state.name, exc)
                return fn(*args, **kwargs)
            if lookup.value is not None:
                found = _decode(cache, state, lookup, tokens)
                if found is not _MISSING:
                    return found
            if not flights_sync.lead_or_wait(key, _WAIT):
                return _run(state, cache, key, tokens, lookup, args, kwargs)
            try:
                return _run(state, cache, key, tokens, lookup, args, kwargs)
            finally:
                flights_sync.land(key)

        return cast("Callable[P, R]", wrapper)

    return decorate


_MISSING = object()


def _decode(cache: QueryCache, state: _Cached, lookup: Lookup, tokens: list[Token]) -> Any:
    assert lookup.value is not None
    try:
        value = _codec.decode(lookup.value)
    except _codec.Undecodable:
        cache._stats.bypass(state.name, "undecodable entry")
        return _MISSING
    cache._stats.hit(state.name)
    note_snapshot(tokens, lookup.versions)  # a response cached around this call depends on it
    return value


def _store(
    cache: QueryCache,
    sessions: list[Session],
    state: _Cached,
    key: str | None,
    tokens: list[Token] | None,
    lookup: Lookup | None,
    recorded: list[str],
    result: Any,
) -> Callable[[], None] | None:
    """What to do after the call (a store), or ``None``; counts the outcome."""
    known = state.learn(recorded)
    if sessions and _unsafe(cache, sessions) is not None:
        cache._stats.bypass(state.name, "session wrote during the call")
        return None
    if key is None:
        cache._stats.bypass(state.name, "arguments cannot be part of a key")
        return None
    cache._stats.miss(state.name)
    if tokens is None or lookup is None:
        return None  # first call: dependencies learnt now, no snapshot to store with
    if not known:
        cache._stats.reject(state.name, "function read tables it had not read before")
        return None
    try:
        data = _codec.encode(result)
    except _codec.Unencodable as exc:
        cache._stats.reject(state.name, str(exc))
        return None
    if len(data) > cache.max_entry_bytes:
        cache._stats.reject(state.name, "result too large")
        return None
    ttl = state.ttl if state.ttl is not None else cache.default_ttl

    def store() -> None:
        try:
            stored = cache.backend.store(
                key, data, tokens=tokens, versions=lookup.versions, ttl=ttl
            )
        except CacheBackendError as exc:
            cache._failed(state.name, exc)
            return
        if not stored:
            cache._stats.reject(state.name, "outdated snapshot")

    return store


def _run(
    state: _Cached,
    cache: QueryCache,
    key: str | None,
    tokens: list[Token] | None,
    lookup: Lookup | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    with recording() as recorded:
        result = state.fn(*args, **kwargs)
    store = _store(cache, _sessions(args, kwargs), state, key, tokens, lookup, recorded, result)
    if store is not None:
        store()
    return result


async def _run_async(
    state: _Cached,
    cache: QueryCache,
    key: str | None,
    tokens: list[Token] | None,
    lookup: Lookup | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    with recording() as recorded:
        result = await cast("Callable[..., Awaitable[Any]]", state.fn)(*args, **kwargs)
    store = _store(cache, _sessions(args, kwargs), state, key, tokens, lookup, recorded, result)
    if store is not None:
        await greenlet_spawn(store)
    return result


async def _lookup_async(
    cache: QueryCache, state: _Cached, key: str, tokens: list[Token]
) -> Lookup | None:
    try:
        return await greenlet_spawn(cache.backend.lookup, key, tokens)
    except CacheBackendError as exc:
        cache._failed(state.name, exc)
        return None
