"""The statements one capture recorded, and views over them."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ormtune.querylog._callsite import CallSite
    from ormtune.querylog._event import QueryEvent

__all__ = ["QueryGroup", "QueryLog"]

_duration: Callable[[QueryEvent], float] = attrgetter("duration")


@dataclass(slots=True)
class QueryGroup:
    """All recorded statements that share one fingerprint."""

    fingerprint: str
    events: list[QueryEvent] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.events)

    @property
    def total_duration(self) -> float:
        """Seconds spent in these statements."""
        return sum(event.duration for event in self.events)

    @property
    def callsites(self) -> Counter[CallSite]:
        """How often each call-site ran this statement (empty when call-sites were off)."""
        return Counter(event.callsite for event in self.events if event.callsite is not None)


class QueryLog:
    """What a capture recorded, in execution order.

    Iterating gives :class:`~ormtune.querylog.QueryEvent` objects; ``len(log)`` is the number of
    statements. Appends are safe from several threads (a capture also records statements run by
    ``asyncio.to_thread`` and other helpers that copy the current context).
    """

    __slots__ = ("_events", "_lock")

    def __init__(self) -> None:
        self._events: list[QueryEvent] = []
        self._lock = threading.Lock()

    def append(self, event: QueryEvent) -> None:
        self._events.append(event)  # list.append is atomic: no lock on the hot path

    def clear(self) -> None:
        """Forget every recorded statement (the capture goes on recording)."""
        with self._lock:
            self._events.clear()

    @property
    def events(self) -> list[QueryEvent]:
        """A copy of the recorded events, oldest first."""
        with self._lock:
            return list(self._events)

    @property
    def count(self) -> int:
        return len(self._events)

    @property
    def total_duration(self) -> float:
        """Seconds spent in the database, summed over the recorded statements."""
        with self._lock:
            events = list(self._events)
        return sum(map(_duration, events))  # in order, as a generator would: the same float

    @property
    def statements(self) -> list[str]:
        """The SQL of each recorded statement, as sent to the driver."""
        return [event.sql for event in self.events]

    def by_fingerprint(self) -> list[QueryGroup]:
        """Statements grouped by fingerprint, most frequent first (ties: first seen first)."""
        groups: dict[str, QueryGroup] = {}
        for event in self.events:
            group = groups.get(event.fingerprint)
            if group is None:
                group = groups[event.fingerprint] = QueryGroup(event.fingerprint)
            group.events.append(event)
        return sorted(groups.values(), key=lambda group: -group.count)

    def duplicates(self) -> list[QueryGroup]:
        """Fingerprints that ran more than once: candidates for batching or caching."""
        return [group for group in self.by_fingerprint() if group.count > 1]

    def report(self, *, timings: bool = True, limit: int | None = None) -> str:
        """A readable summary: totals, then each fingerprint with its count and call-sites.

        ``timings=False`` leaves out durations, for output that must be reproducible (test
        failure messages). ``limit`` caps how many fingerprints are listed.
        """
        groups = self.by_fingerprint()
        repeated = sum(1 for group in groups if group.count > 1)
        noun = "query" if self.count == 1 else "queries"
        head = f"{self.count} {noun}"
        if timings:
            head += f" in {self.total_duration * 1000:.1f} ms"
        lines = [f"{head}, {len(groups)} distinct, {repeated} repeated"]
        width = len(str(groups[0].count)) + 1 if groups else 2
        shown = groups if limit is None else groups[:limit]
        for group in shown:
            line = f"  {f'{group.count}x':>{width}} "
            if timings:
                line += f"{group.total_duration * 1000:8.2f} ms  "
            lines.append(line + group.fingerprint)
            indent = " " * (width + 3)
            for callsite, times in group.callsites.most_common():
                suffix = f" ({times}x)" if times != group.count else ""
                lines.append(f"{indent}at {callsite}{suffix}")
        if len(shown) < len(groups):
            lines.append(f"  ... {len(groups) - len(shown)} more")
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[QueryEvent]:
        return iter(self.events)

    @overload
    def __getitem__(self, index: int) -> QueryEvent: ...
    @overload
    def __getitem__(self, index: slice) -> list[QueryEvent]: ...
    def __getitem__(self, index: int | slice) -> QueryEvent | list[QueryEvent]:
        with self._lock:
            return self._events[index]

    def __repr__(self) -> str:
        return f"<QueryLog {self.count} queries>"
