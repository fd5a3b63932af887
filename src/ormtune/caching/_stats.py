"""Cache statistics: per cache name and overall, readable and exact.

Each counted outcome is also emitted as a :class:`~ormtune.querylog.CacheEvent` on the signal
channel (when anyone subscribes), with a short fixed reason code, so metrics and the dashboard
can show them without importing this package.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from ormtune.querylog import CacheEvent, emit, signals_wanted

__all__ = ["CacheStats", "NameStats", "StatsRecorder"]


@dataclass(slots=True)
class NameStats:
    """Counters of one cache name (or of all of them, in ``CacheStats.overall``).

    ``bypasses`` and ``rejected`` count by reason: a bypass is a query the cache did not
    serve or fill (``"populate_existing"``, ``"session wrote to payments"``, ...); a rejected
    store is a fill that was not stored (``"outdated snapshot"``, ``"too large"``, ...).
    """

    hits: int = 0
    misses: int = 0
    bypasses: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    invalidations: int = 0
    errors: int = 0

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (hits + misses); 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def copy(self) -> NameStats:
        return NameStats(
            self.hits,
            self.misses,
            Counter(self.bypasses),
            Counter(self.rejected),
            self.invalidations,
            self.errors,
        )


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of the counters: ``overall`` and ``by_name[name]``."""

    overall: NameStats
    by_name: dict[str, NameStats]

    def __getitem__(self, name: str) -> NameStats:
        return self.by_name.get(name, NameStats())

    def report(self) -> str:
        """A small table: one line per cache name, then the total."""
        lines = [f"{'name':<28} {'hits':>7} {'misses':>7} {'hit rate':>8} {'bypasses':>8}"]
        for name, stats in sorted([*self.by_name.items(), ("(all)", self.overall)]):
            lines.append(
                f"{name:<28} {stats.hits:>7} {stats.misses:>7} {stats.hit_rate:>8.1%} "
                f"{sum(stats.bypasses.values()):>8}"
            )
        return "\n".join(lines)


# Human reasons (in stats) -> short fixed codes (on signals, bounded for metric labels).
_CODES = (
    ("session wrote to", "dirty-session"),
    ("populate_existing", "populate-existing"),
    ("with_for_update", "for-update"),
    ("yield_per", "streaming"),
    ("refresh", "refresh"),
    ("not an ORM statement", "not-orm"),
    ("statement has no cache key", "no-cache-key"),
    ("non-deterministic function", "non-deterministic"),
    ("cache backend unavailable", "backend-error"),
    ("cache backend recovering", "backend-recovering"),
    ("transaction snapshot", "old-snapshot"),
    ("undecodable entry", "undecodable"),
    ("arguments cannot be part of a key", "unkeyable-arguments"),
    ("outdated snapshot", "version-moved"),
    ("result too large", "too-large"),
    ("objects were already in the session", "identity-map"),
    ("statement read tables", "new-tables"),
    ("function read tables", "new-tables"),
)


def reason_code(reason: str) -> str:
    """The short fixed code of a human-readable bypass or rejection reason."""
    for prefix, code in _CODES:
        if reason.startswith(prefix):
            return code
    return "unencodable" if "cannot be cached" in reason else "other"


class StatsRecorder:
    """The live counters, updated under one lock (a few hundred nanoseconds per event)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._overall = NameStats()
        self._by_name: dict[str, NameStats] = {}

    def _both(self, name: str) -> tuple[NameStats, NameStats]:
        stats = self._by_name.get(name)
        if stats is None:
            stats = self._by_name[name] = NameStats()
        return stats, self._overall

    def hit(self, name: str) -> None:
        with self._lock:
            for stats in self._both(name):
                stats.hits += 1
        if signals_wanted():
            emit(CacheEvent(name, "hit"))

    def miss(self, name: str) -> None:
        with self._lock:
            for stats in self._both(name):
                stats.misses += 1
        if signals_wanted():
            emit(CacheEvent(name, "miss"))

    def bypass(self, name: str, reason: str) -> None:
        with self._lock:
            for stats in self._both(name):
                stats.bypasses[reason] += 1
        if signals_wanted():
            emit(CacheEvent(name, "bypass", reason_code(reason)))

    def reject(self, name: str, reason: str) -> None:
        with self._lock:
            for stats in self._both(name):
                stats.rejected[reason] += 1
        if signals_wanted():
            emit(CacheEvent(name, "rejected", reason_code(reason)))

    def error(self, name: str | None) -> None:
        with self._lock:
            targets = self._both(name) if name is not None else (self._overall,)
            for stats in targets:
                stats.errors += 1

    def invalidated(self, name: str | None, count: int = 1, tables: tuple[str, ...] = ()) -> None:
        with self._lock:
            targets = self._both(name) if name is not None else (self._overall,)
            for stats in targets:
                stats.invalidations += count
        if signals_wanted():
            emit(CacheEvent(name or "(all)", "invalidation", None, tables))

    def snapshot(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._overall.copy(), {n: s.copy() for n, s in self._by_name.items()})

    def reset(self) -> None:
        with self._lock:
            self._overall = NameStats()
            self._by_name = {}
