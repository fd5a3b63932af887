"""Signals: what ormtune's features report besides statements (cache outcomes, N+1 findings,
autoload batches), on one typed channel that any package may emit on and observers receive.

Feature packages never import each other, so the cache cannot call the metrics and N+1 detection
cannot know whether anyone counts its findings. Instead they *emit* small frozen records here,
and whoever cares (``ormtune.instrumentation``'s metrics and logs, the dashboard) *subscribes*::

    from ormtune.querylog import CacheEvent, emit, signals_wanted

    # in the cache, on each lookup (the check keeps the hot path free when nobody listens):
    if signals_wanted():
        emit(CacheEvent("orders", "hit", None, ("orders",)))

    # in a consumer:
    class Counter:
        def on_signal(self, signal: Signal) -> None:
            if isinstance(signal, CacheEvent) and signal.outcome == "hit":
                ...

    subscription = observe_signals(Counter())
    ...
    subscription.close()

``emit()`` delivers synchronously, on the emitting thread and in its context (so a consumer can
read the current request's context variables), to every subscriber in the order they
subscribed. A subscriber that raises is logged to the ``ormtune.querylog`` logger and never
breaks the emitter. With no subscriber, ``emit()`` is one global read and a return, and
``signals_wanted()`` lets an emitter skip building the record at all.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from ormtune.querylog._lifecycle import Registration

if TYPE_CHECKING:
    from ormtune.typing import SignalObserver

__all__ = [
    "AutoloadBatch",
    "CacheEvent",
    "CacheOutcome",
    "NPlusOneSignal",
    "Signal",
    "emit",
    "observe_signals",
    "signals_wanted",
]

logger = logging.getLogger("ormtune.querylog")

CacheOutcome: TypeAlias = Literal["hit", "miss", "bypass", "invalidation", "rejected"]
"""What happened in a cache: ``hit`` (served from the cache), ``miss`` (read from the database
and possibly stored), ``bypass`` (the cache was deliberately not consulted, for example because
the session wrote to a table it depends on, or the store was unreachable), ``invalidation``
(entries depending on ``tables`` stopped being valid after a commit), ``rejected`` (a store was
refused: the versions moved while the rows were read, or the value was too large)."""


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """One outcome of one cache, emitted by ``ormtune.caching``.

    ``name`` is the cache's name (a bounded set: one per configured cache or region, never a
    key); ``reason`` says why for ``bypass`` and ``rejected`` (a short fixed word such as
    ``"dirty-session"``, ``"backend-error"``, ``"version-moved"``), None otherwise; ``tables``
    are the tables the entry depends on (or, for an invalidation, the tables whose versions
    were bumped).
    """

    name: str
    outcome: CacheOutcome
    reason: str | None = None
    tables: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NPlusOneSignal:
    """An N+1 or repeated-query finding, emitted by ``ormtune.nplusone`` when the pattern is
    first recognised in a unit of work (once per pattern, not once per lazy load).

    ``relationship`` is ``"Class.attribute"``, or None for a repeated statement that is not a
    lazy load; ``loads`` is how many statements the pattern had cost when it was emitted.
    """

    kind: Literal["n+1", "repeated"]
    relationship: str | None
    loads: int


@dataclass(frozen=True, slots=True)
class AutoloadBatch:
    """One batch load by ``ormtune.autoload()``: ``relationship`` (``"Class.attribute"``)
    loaded for ``parents`` objects at once, instead of one lazy load each."""

    relationship: str
    parents: int


Signal: TypeAlias = CacheEvent | NPlusOneSignal | AutoloadBatch
"""Everything that travels on the signal channel."""

_subscribers: tuple[SignalObserver, ...] = ()  # copy-on-write, read without the lock
_lock = threading.Lock()


def signals_wanted() -> bool:
    """Whether anyone subscribes to signals; an emitter may skip building a signal if not."""
    return bool(_subscribers)


def emit(signal: Signal) -> None:
    """Deliver ``signal`` to every subscriber, now, on this thread; never raises."""
    subscribers = _subscribers
    if not subscribers:
        return
    for subscriber in subscribers:
        try:
            subscriber.on_signal(signal)
        except Exception:
            logger.exception("ormtune signal observer %r failed on %r", subscriber, signal)


def observe_signals(observer: SignalObserver) -> Registration:
    """Send every signal emitted anywhere in the process to ``observer.on_signal`` until the
    returned registration is closed (or its ``with`` block ends)."""
    global _subscribers
    if not callable(getattr(observer, "on_signal", None)):
        raise TypeError(
            f"observe_signals() takes an object with an on_signal(signal) method "
            f"(a SignalObserver), but was given {observer!r} "
            f"(of type {type(observer).__qualname__})"
        )

    def unsubscribe() -> None:
        global _subscribers
        with _lock:
            remaining = list(_subscribers)
            for index, subscriber in enumerate(remaining):
                if subscriber is observer:
                    del remaining[index]
                    break
            _subscribers = tuple(remaining)

    with _lock:
        _subscribers = (*_subscribers, observer)
    return Registration(unsubscribe)
