"""Public Protocols and type aliases: the extension points other packages meet through.

A feature that wants every statement an application runs (N+1 detection, metrics, the
dashboard) implements :class:`QueryObserver` and registers it with
``ormtune.querylog.observe()``, instead of adding engine listeners of its own; one that wants
what other features report (cache outcomes, N+1 findings, autoload batches) implements
:class:`SignalObserver` and registers it with ``ormtune.querylog.observe_signals()``.

A cache store implements :class:`CacheBackend`; ``ormtune.caching`` talks to stores only
through it, and ``ormtune.backends`` ships the memory, Redis and two-tier implementations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from sqlalchemy.engine import ExecutionContext

    from ormtune.querylog import QueryEvent, Signal, StatementInfo

__all__ = [
    "CacheBackend",
    "Lookup",
    "QueryObserver",
    "SignalObserver",
    "StatementWatcher",
    "Token",
    "Version",
]

Token: TypeAlias = tuple[str, str]
"""A dependency of cache entries: ``(group, member)``.

The group is one table of one database (``"<bind>|<schema.table>"``); the member names what
in it an entry depends on: ``"*"`` any row, ``"?"`` rows a write could not identify, or
``"user_id=i:7"`` the rows whose ``user_id`` is 7. Backends may keep a group's members
together (one Redis hash per group) and may drop a whole group at any time, as long as every
version in it then changes (see :class:`Version`).
"""

Version: TypeAlias = int
"""The version of one :data:`Token`, opaque to callers: only compared for equality.

A backend guarantees that once a token's version has been read as ``v`` and the token is then
bumped, it never reads as ``v`` again: not after eviction, expiry, a dropped group or a reset
of the backend's bookkeeping (ABA-free). A token that was never bumped has a stable version
until it is.
"""


@runtime_checkable
class QueryObserver(Protocol):
    """Receives one :class:`~ormtune.querylog.QueryEvent` per executed statement.

    ``on_query`` runs on the thread (and in the context) that executed the statement, right
    after the database answered, so it must be quick and must not raise: an exception from an
    observer is logged and swallowed, never passed on to the application.
    """

    def on_query(self, event: QueryEvent, /) -> None: ...


@runtime_checkable
class StatementWatcher(Protocol):
    """Sees each statement just before the database runs it, and again right after.

    Registered with ``ormtune.querylog.watch()``. ``before_statement`` gets SQLAlchemy's
    ``ExecutionContext`` (its ``execution_options`` say what the ORM is doing: a lazy load,
    a refresh) and returns a token, or None to let the statement pass unwatched. It may raise
    to stop the statement before it runs: the exception reaches the application unchanged,
    and no query event is made for the statement. ``after_statement`` gets the token back
    with the statement's analysis once the database has answered (not when it failed); an
    exception from it is logged and swallowed. Both run on the executing thread, in its
    context, for every statement, so they must be quick.
    """

    def before_statement(self, context: ExecutionContext, /) -> object | None: ...

    def after_statement(self, token: object, statement: StatementInfo, /) -> None: ...


@runtime_checkable
class SignalObserver(Protocol):
    """Receives the signals ormtune's features emit besides statements: cache outcomes
    (``CacheEvent``), N+1 findings (``NPlusOneSignal``) and autoload batches
    (``AutoloadBatch``), registered with ``ormtune.querylog.observe_signals()``.

    ``on_signal`` runs on the emitting thread, in its context, so it must be quick; an
    exception from it is logged and swallowed.
    """

    def on_signal(self, signal: Signal, /) -> None: ...


@dataclass(frozen=True, slots=True)
class Lookup:
    """What :meth:`CacheBackend.lookup` found.

    ``value`` is the stored bytes, or ``None`` when there is no entry, it expired, or any
    version it was stored with has moved since. ``versions`` holds the current version of each
    token asked about, in order: the snapshot a caller passes to :meth:`CacheBackend.store`
    when it fills the entry after a miss.
    """

    value: bytes | None
    versions: tuple[Version, ...]


@runtime_checkable
class CacheBackend(Protocol):
    """Where cache entries and the versions of their dependencies live.

    Entries are opaque bytes under string keys, each stored with the versions of its
    dependency tokens; an entry is served only while every one of those versions is current.
    Writers bump tokens after they commit. All methods are synchronous and thread-safe; a
    backend that talks to an asyncio client bridges through SQLAlchemy's greenlet support when
    called from inside ``AsyncSession`` work. A backend that cannot reach its store raises
    :class:`~ormtune.exceptions.CacheBackendError`; callers then fall back to the database.
    """

    def lookup(self, key: str, tokens: Sequence[Token], /) -> Lookup:
        """The entry under ``key`` if it is valid, and the current versions of ``tokens``.

        One round trip for a remote store. The entry is valid when it exists, has not expired
        and was stored with exactly the versions ``tokens`` have now.
        """
        ...

    def store(
        self,
        key: str,
        value: bytes,
        /,
        *,
        tokens: Sequence[Token],
        versions: Sequence[Version],
        ttl: float | None,
    ) -> bool:
        """Store ``value`` under ``key`` only if ``tokens`` still have ``versions`` (CAS).

        Returns ``False`` and stores nothing when any version moved since the caller read it,
        so a slow reader can never store old rows as current. It also returns ``False`` when
        the backend cannot keep the value at all (larger than a memory tier's byte bound).
        ``ttl`` is in seconds and must be positive; ``None`` keeps the entry until it is
        evicted or invalidated.
        """
        ...

    def versions(self, tokens: Sequence[Token], /) -> tuple[Version, ...]:
        """The current version of each token, in order."""
        ...

    def bump(self, tokens: Collection[Token], /) -> None:
        """Give every token a new version, so entries stored with the old ones stop matching.

        All tokens move before the call returns (one round trip for a remote store).
        """
        ...

    def delete(self, key: str, /) -> None:
        """Drop one entry, if present."""
        ...

    def clear(self) -> None:
        """Drop every entry this backend holds under its namespace.

        Versions are not rewound: a version never repeats, even across ``clear()``.
        """
        ...
