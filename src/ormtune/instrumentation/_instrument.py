"""``instrument()``: metrics, query logs and the slow-query log, subscribed in one call."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ormtune.instrumentation._logs import QueryLogger
from ormtune.instrumentation._metrics import metrics as get_metrics
from ormtune.instrumentation._pool import instrument_pool
from ormtune.instrumentation._slowlog import SlowQueryLog
from ormtune.querylog import Registration, observe, observe_signals

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ormtune.instrumentation._metrics import Metrics
    from ormtune.querylog import QueryEvent

__all__ = ["Instrumentation", "instrument"]

_internal = logging.getLogger("ormtune.instrumentation")


class _Fanout:
    """One observer feeding metrics, the query log and the slow-query log, so a statement
    costs one delivery, not three; a failure in one never stops the others."""

    __slots__ = ("_observers",)

    def __init__(self, observers: tuple[QueryLogger | SlowQueryLog | Metrics, ...]) -> None:
        self._observers = observers

    def on_query(self, event: QueryEvent) -> None:
        for observer in self._observers:
            try:
                observer.on_query(event)
            except Exception:
                _internal.debug("%r failed on a query event", observer, exc_info=True)


class Instrumentation(Registration):
    """What :func:`instrument` set up; ``close()`` (or leaving its ``with`` block) undoes it.

    ``metrics`` is the :class:`Metrics` to hand to the middleware (None without metrics);
    ``query_logger`` and ``slow_query_log`` are the observers, for inspection.
    """

    __slots__ = ("metrics", "query_logger", "slow_query_log")

    def __init__(
        self,
        metrics: Metrics | None,
        query_logger: QueryLogger | None,
        slow_query_log: SlowQueryLog | None,
        registrations: list[Registration],
    ) -> None:
        def close_all() -> None:
            for registration in reversed(registrations):
                registration.close()

        super().__init__(close_all)
        self.metrics = metrics
        self.query_logger = query_logger
        self.slow_query_log = slow_query_log


def instrument(
    *engines: Engine | AsyncEngine,
    metrics: bool = True,
    registry: CollectorRegistry | None = None,
    pool_names: dict[Engine | AsyncEngine, str] | None = None,
    log_queries: bool = True,
    log_parameters: bool = False,
    slow_query_threshold: float | None = 0.5,
    explain: bool = False,
    explain_analyze: bool = False,
    explain_interval: float = 300.0,
    explain_timeout: float = 2.0,
    skip_modules: tuple[str, ...] = (),
) -> Instrumentation:
    """Turn on ormtune's production signals for the process (or only ``engines``' statements).

    * ``metrics=True``: Prometheus metrics on ``registry`` (default: the global registry) for
      every statement and for the cache / N+1 / autoload signals; the pools of ``engines`` are
      recorded too (``pool_names`` labels them; default ``backend/database``).
    * ``log_queries=True``: every statement on ``ormtune.sql`` at DEBUG (free while DEBUG is
      off); ``log_parameters=True`` logs values instead of shapes.
    * ``slow_query_threshold``: seconds (None turns the slow-query log off); ``explain`` adds
      plans, see :class:`SlowQueryLog`.

    Pass the result's ``metrics`` to the middleware. Closing the result unsubscribes all.
    """
    registrations: list[Registration] = []
    collected = get_metrics(registry) if metrics else None
    query_logger = (
        QueryLogger(parameters=log_parameters, skip_modules=skip_modules) if log_queries else None
    )
    slow_log = None
    if slow_query_threshold is not None:
        slow_log = SlowQueryLog(
            slow_query_threshold,
            explain=explain,
            analyze=explain_analyze,
            explain_interval=explain_interval,
            explain_timeout=explain_timeout,
            parameters=log_parameters,
            skip_modules=skip_modules,
        )
    observers = tuple(o for o in (collected, query_logger, slow_log) if o is not None)
    try:
        if observers:
            # Values reach the observers when the log shows them or EXPLAIN needs them.
            values = log_parameters or (explain and slow_log is not None)
            for observer in (query_logger, slow_log):
                if observer is not None:
                    observer.receives_values = values
            registrations.append(observe(_Fanout(observers), *engines, parameters=values))
        if collected is not None:
            registrations.append(observe_signals(collected))
            for engine in engines:
                name = (pool_names or {}).get(engine)
                registrations.append(instrument_pool(engine, collected, name=name))
    except BaseException:
        for registration in reversed(registrations):
            registration.close()
        raise
    return Instrumentation(collected, query_logger, slow_log, registrations)
