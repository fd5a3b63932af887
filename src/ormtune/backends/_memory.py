"""The in-process cache backend: bounded LRU entries with TTL, and a versioned token table.

Versions follow the scheme in ``_scheme.py``: every group gets a generation from a counter
that only grows for the life of the backend, a member's version is its generation with a bump
counter, and a group that is dropped (because the table holds too many groups, or the group
too many members) comes back with a new generation. Entries and versions live in the same
process, so a per-instance counter is enough to make generations unique, and no version is
ever read twice across a bump: not after eviction, expiry, a dropped group or ``clear()``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from itertools import count
from typing import TYPE_CHECKING

from ormtune.backends._scheme import COUNTER_BITS, COUNTER_LIMIT
from ormtune.exceptions import ConfigurationError
from ormtune.typing import Lookup

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from ormtune.typing import Token, Version

__all__ = ["MemoryBackend", "MemoryStats"]

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_GROUPS = 10_000
DEFAULT_MAX_MEMBERS = 10_000


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """A snapshot of a memory store's bookkeeping.

    ``bytes`` counts keys and values (not Python's object overhead), the quantity ``max_bytes``
    bounds. ``evictions`` counts entries dropped to respect the bounds, ``expirations``
    entries found expired, ``groups`` the token groups whose versions are held.
    """

    entries: int
    bytes: int
    evictions: int
    expirations: int
    groups: int


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ConfigurationError(f"{name} must be at least 1, got {value!r}")
    return value


def check_ttl(ttl: float | None) -> None:
    """Refuse a TTL that would store an entry already expired."""
    if ttl is not None and not ttl > 0:
        raise ConfigurationError(f"ttl must be a positive number of seconds or None, got {ttl!r}")


class _Entry:
    __slots__ = ("expires", "size", "value", "versions")

    def __init__(
        self, value: bytes, versions: tuple[int, ...], expires: float | None, size: int
    ) -> None:
        self.value = value
        self.versions = versions
        self.expires = expires
        self.size = size


class EntryStore:
    """Entries under string keys, bounded by count and bytes (LRU), each with an optional TTL.

    Not thread-safe: the owner holds its lock around every call. Shared by
    :class:`MemoryBackend` and the two-tier backend's L1.
    """

    __slots__ = (
        "_bytes",
        "_clock",
        "_data",
        "evictions",
        "expirations",
        "max_bytes",
        "max_entries",
    )

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Callable[[], float]) -> None:
        self.max_entries = _positive("max_entries", max_entries)
        self.max_bytes = _positive("max_bytes", max_bytes)
        self._clock = clock
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> _Entry | None:
        """The live entry under ``key`` (now most recently used), or ``None``."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires is not None and entry.expires <= self._clock():
            self.expirations += 1
            self._remove(key, entry)
            return None
        self._data.move_to_end(key)
        return entry

    def put(self, key: str, value: bytes, versions: tuple[int, ...], ttl: float | None) -> bool:
        """Store an entry, evicting the least recently used ones beyond the bounds.

        Returns ``False`` (storing nothing) when the entry alone exceeds ``max_bytes``.
        """
        size = len(key) + len(value)
        old = self._data.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        if size > self.max_bytes:
            return False
        expires = None if ttl is None else self._clock() + ttl
        self._data[key] = _Entry(value, versions, expires, size)
        self._bytes += size
        data = self._data
        while len(data) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = data.popitem(last=False)
            self._bytes -= evicted.size
            self.evictions += 1
        return True

    def discard(self, key: str) -> None:
        entry = self._data.get(key)
        if entry is not None:
            self._remove(key, entry)

    def _remove(self, key: str, entry: _Entry) -> None:
        del self._data[key]
        self._bytes -= entry.size

    def clear(self) -> None:
        self._data.clear()
        self._bytes = 0


class _Group:
    __slots__ = ("base", "members")

    def __init__(self, base: int) -> None:
        self.base = base  # the generation, shifted: the version of a member never bumped
        self.members: dict[str, int] = {}


class VersionTable:
    """Token versions for one process (see the module docstring). Not thread-safe."""

    __slots__ = ("_generations", "_groups", "max_groups", "max_members")

    def __init__(self, *, max_groups: int, max_members: int) -> None:
        self.max_groups = _positive("max_groups", max_groups)
        self.max_members = _positive("max_members", max_members)
        self._generations = count(1)
        self._groups: dict[str, _Group] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def _create(self, name: str) -> _Group:
        groups = self._groups
        groups.pop(name, None)
        while len(groups) >= self.max_groups:
            # Dropping a group is safe at any time: it comes back with a new generation.
            del groups[next(iter(groups))]
        group = groups[name] = _Group(next(self._generations) << COUNTER_BITS)
        return group

    def read(self, tokens: Sequence[Token]) -> tuple[Version, ...]:
        groups = self._groups
        out = []
        for name, member in tokens:
            group = groups.get(name)
            if group is None:
                group = self._create(name)
            out.append(group.members.get(member, group.base))
        return tuple(out)

    def bump(self, tokens: Collection[Token]) -> None:
        groups = self._groups
        for name, member in tokens:
            group = groups.get(name)
            if group is None:
                group = self._create(name)
            members = group.members
            current = members.get(member)
            if current is None:
                if len(members) >= self.max_members:
                    # Too many fine-grained members: start the group over. Its entries all
                    # stop matching, which is safe, and the table stays bounded.
                    group = self._create(name)
                    members = group.members
                current = group.base
            if current - group.base >= COUNTER_LIMIT:
                group = self._create(name)
                members = group.members
                current = group.base
            members[member] = current + 1


class MemoryBackend:
    """The embedded cache backend: entries and versions in this process, nothing shared.

    Bounded by ``max_entries`` and ``max_bytes`` (least recently used entries go first) and
    by ``max_groups`` / ``max_members`` for the version table; any of those bounds may drop
    state, never correctness (see the module docstring). ``clock`` measures TTLs; tests pass a
    fake one instead of sleeping. Thread-safe through one lock held for a few dictionary
    operations per call.
    """

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_groups: int = DEFAULT_MAX_GROUPS,
        max_members: int = DEFAULT_MAX_MEMBERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._entries = EntryStore(max_entries=max_entries, max_bytes=max_bytes, clock=clock)
        self._versions = VersionTable(max_groups=max_groups, max_members=max_members)

    def __repr__(self) -> str:
        stats = self.stats
        return f"<MemoryBackend entries={stats.entries} bytes={stats.bytes}>"

    @property
    def stats(self) -> MemoryStats:
        """Entry count, bytes held, evictions, expirations and groups, read atomically."""
        with self._lock:
            entries = self._entries
            return MemoryStats(
                entries=len(entries),
                bytes=entries.nbytes,
                evictions=entries.evictions,
                expirations=entries.expirations,
                groups=len(self._versions),
            )

    def lookup(self, key: str, tokens: Sequence[Token], /) -> Lookup:
        """The entry under ``key`` if stored with the current versions of ``tokens``."""
        with self._lock:
            versions = self._versions.read(tokens)
            entry = self._entries.get(key)
            if entry is None:
                return Lookup(None, versions)
            if entry.versions != versions:
                # Stale for good: versions never come back, so free the space now.
                self._entries.discard(key)
                return Lookup(None, versions)
            return Lookup(entry.value, versions)

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
        """Store ``value`` if ``tokens`` still have ``versions``; ``False`` otherwise.

        Also ``False`` when the value alone is larger than ``max_bytes``.
        """
        check_ttl(ttl)
        expected = tuple(versions)
        with self._lock:
            if self._versions.read(tokens) != expected:
                return False
            return self._entries.put(key, value, expected, ttl)

    def versions(self, tokens: Sequence[Token], /) -> tuple[Version, ...]:
        """The current version of each token, in order."""
        with self._lock:
            return self._versions.read(tokens)

    def bump(self, tokens: Collection[Token], /) -> None:
        """Give every token a new version, atomically with respect to other calls."""
        with self._lock:
            self._versions.bump(tokens)

    def delete(self, key: str, /) -> None:
        """Drop one entry, if present."""
        with self._lock:
            self._entries.discard(key)

    def clear(self) -> None:
        """Drop every entry; versions stay, so none ever repeats."""
        with self._lock:
            self._entries.clear()
