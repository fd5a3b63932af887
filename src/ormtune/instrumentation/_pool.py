"""Connection pool metrics, from SQLAlchemy's pool events, for sync and asyncio engines.

Pool events say when a connection is checked out, checked in, detached or invalidated, which
gives the checked-out and overflow gauges and the invalidation counter for any pool. They do
not say when a checkout *starts*, so the wait for a connection, and a wait that ends in
``sqlalchemy.exc.TimeoutError``, can only be timed around ``Pool.connect()``, the public
method an engine calls for every connection. :class:`TimedQueuePool` and
:class:`TimedAsyncAdaptedQueuePool` do exactly that and nothing else; pass one as
``create_engine(..., poolclass=TimedQueuePool)`` (``create_async_engine(...,
poolclass=TimedAsyncAdaptedQueuePool)``) to get the wait histogram and the timeout counter.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool, QueuePool

from ormtune.instrumentation._metrics import database_label
from ormtune.querylog import Registration

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import PoolProxiedConnection

    from ormtune.instrumentation._metrics import Metrics

__all__ = ["TimedAsyncAdaptedQueuePool", "TimedQueuePool", "instrument_pool"]

# Every instrumented pool and what records it: pool -> its recorders. A recreated pool (after
# engine.dispose()) is added at its first checkout.
_pools: weakref.WeakKeyDictionary[Pool, tuple[_PoolRecorder, ...]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _timed_connect(pool: Pool, connect: Any) -> PoolProxiedConnection:
    started = time.perf_counter()
    try:
        connection: PoolProxiedConnection = connect()
    except exc.TimeoutError:
        for recorder in _pools.get(pool, ()):
            recorder.waited(time.perf_counter() - started, timed_out=True)
        raise
    waited = time.perf_counter() - started
    for recorder in _pools.get(pool, ()):
        recorder.waited(waited, timed_out=False)
    return connection


class TimedQueuePool(QueuePool):
    """A ``QueuePool`` whose checkouts are timed for the wait-time histogram and the timeout
    counter; otherwise exactly ``QueuePool``."""

    def connect(self) -> PoolProxiedConnection:
        return _timed_connect(self, super().connect)


class TimedAsyncAdaptedQueuePool(AsyncAdaptedQueuePool):
    """The asyncio twin of :class:`TimedQueuePool` (the default pool of
    ``create_async_engine``, timed)."""

    def connect(self) -> PoolProxiedConnection:
        return _timed_connect(self, super().connect)


class _PoolRecorder:
    """Keeps one pool's gauges for one :class:`Metrics`."""

    __slots__ = (
        "_checked_out",
        "_checked_out_gauge",
        "_lock",
        "_metrics",
        "_overflow",
        "_overflow_gauge",
        "active",
        "label",
        "size",
    )

    def __init__(self, metrics: Metrics, label: str) -> None:
        self.active = True
        self._metrics = metrics
        self.label = label
        self.size = 0
        self._checked_out = 0
        self._overflow = -1  # the value last published (-1: none yet)
        self._lock = threading.Lock()
        # Every checkout and checkin moves these two: look the children up once.
        self._checked_out_gauge = metrics.pool_checked_out.labels(label)
        self._overflow_gauge = metrics.pool_overflow.labels(label)

    def attach(self, pool: Pool, *, replaced: bool = False) -> None:
        """Start recording ``pool``: from its own count, or from zero when it has just
        replaced the engine's previous pool (its first checkout is then counted as a move)."""
        size = pool.size() if isinstance(pool, QueuePool) else 0
        with self._lock:
            self.size = size
            self._checked_out = (
                pool.checkedout() if isinstance(pool, QueuePool) and not replaced else 0
            )
            self._metrics.pool_size.labels(self.label).set(size)
            self._publish()

    def _publish(self) -> None:
        self._checked_out_gauge.set(self._checked_out)
        overflow = max(0, self._checked_out - self.size)
        if overflow != self._overflow:  # mostly 0: a checkout need not set it again
            self._overflow_gauge.set(overflow)
            self._overflow = overflow

    def moved(self, delta: int) -> None:
        if not self.active:
            return
        try:
            with self._lock:
                self._checked_out = max(0, self._checked_out + delta)
                self._publish()
        except Exception:  # a broken collector must not break a checkout
            return

    def waited(self, seconds: float, *, timed_out: bool) -> None:
        if not self.active:
            return
        try:
            if timed_out:
                self._metrics.pool_timeouts.labels(self.label).inc()
            else:
                self._metrics.pool_wait.labels(self.label).observe(seconds)
        except Exception:
            return

    def invalidated(self) -> None:
        if not self.active:
            return
        try:
            self._metrics.pool_invalidated.labels(self.label).inc()
        except Exception:
            return


def instrument_pool(
    engine: Engine | AsyncEngine, metrics: Metrics, *, name: str | None = None
) -> Registration:
    """Record ``engine``'s pool into ``metrics`` under the label ``pool=name`` (default:
    ``backend/database``) until the returned registration is closed.

    Gauges (size, checked out, overflow in use) and invalidations work for every pool; the
    checkout wait histogram and the timeout counter need a :class:`TimedQueuePool` or
    :class:`TimedAsyncAdaptedQueuePool`. The pool that ``engine.dispose()`` creates is
    recorded too, from its first checkout.
    """
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    recorder = _PoolRecorder(metrics, metrics.pool_label(name or database_label(sync_engine)))

    def add(pool: Pool, *, replaced: bool = False) -> None:
        recorder.attach(pool, replaced=replaced)
        with _lock:
            _pools[pool] = (*_pools.get(pool, ()), recorder)

    # engine.dispose() replaces the engine's pool with one that carries copies of these
    # listeners; its first checkout finds it here. (The engine's own engine_disposed event
    # would say so at once, but a connection event on an engine makes SQLAlchemy dispatch
    # connection events around every statement that engine runs.)
    current = [sync_engine.pool]  # the pool being recorded
    replacing = threading.Lock()

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if not recorder.active:
            return
        pool = sync_engine.pool
        if pool is not current[0]:
            with replacing:
                if pool is not current[0]:
                    current[0] = pool
                    add(pool, replaced=True)
                    listen(pool)
        recorder.moved(+1)

    def checkin(dbapi_connection: Any, record: Any) -> None:
        recorder.moved(-1)

    def detach(dbapi_connection: Any, record: Any) -> None:
        # A detached connection leaves the pool for good without a checkin.
        recorder.moved(-1)

    def invalidate(dbapi_connection: Any, record: Any, exception: BaseException | None) -> None:
        recorder.invalidated()

    pool_listeners = (
        ("checkout", checkout),
        ("checkin", checkin),
        ("detach", detach),
        ("invalidate", invalidate),
        ("soft_invalidate", invalidate),
    )
    listened: list[Pool] = []

    def listen(pool: Pool) -> None:
        # A pool made by engine.dispose() (Pool.recreate()) carries copies of its
        # predecessor's listeners, which event.contains() does not see and event.remove()
        # cannot remove: add only what the pool's dispatch does not already hold. Copies left
        # behind after close() do nothing (the recorder is inactive).
        for event_name, listener in pool_listeners:
            if listener not in list(getattr(pool.dispatch, event_name)):
                event.listen(pool, event_name, listener)
        listened.append(pool)

    add(sync_engine.pool)
    listen(sync_engine.pool)

    def remove() -> None:
        recorder.active = False
        for pool in listened:
            for event_name, listener in pool_listeners:
                if event.contains(pool, event_name, listener):
                    event.remove(pool, event_name, listener)
        with _lock:
            for pool in listened:
                remaining = tuple(r for r in _pools.get(pool, ()) if r is not recorder)
                if remaining:
                    _pools[pool] = remaining
                else:
                    _pools.pop(pool, None)

    return Registration(remove)
