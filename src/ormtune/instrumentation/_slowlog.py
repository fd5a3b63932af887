"""The slow-query log: statements over a threshold, with their call-site and, optionally, plan.

A slow statement is logged at WARNING on ``ormtune.slow_query`` with its SQL, fingerprint,
duration, row count and the line of application code that ran it (found when the statement
turns out slow, so fast statements never pay for a stack walk).

With ``explain=True`` the line also carries the statement's plan, under rules that keep the
plan from becoming a problem of its own:

* ``EXPLAIN`` (PostgreSQL, MariaDB/MySQL) or ``EXPLAIN QUERY PLAN`` (SQLite), which plans the
  statement without running it; ``analyze=True`` runs ``EXPLAIN ANALYZE`` (MariaDB:
  ``ANALYZE``) only for SELECTs, never for statements that write;
* at most once per fingerprint per ``explain_interval`` seconds (default five minutes);
* on a connection of its own (a ``NullPool`` engine on the same URL, or ``explain_engine``), so
  the application's transaction and pool are never touched, in a transaction that is rolled
  back;
* with a time limit (``explain_timeout``): PostgreSQL ``SET LOCAL statement_timeout``, MariaDB
  ``SET STATEMENT max_statement_time=... FOR``, MySQL ``max_execution_time``, and the
  driver's connect timeout; SQLite's plan is only compiled, never run (and an in-memory SQLite
  database, which no other connection can see, is not explained);
* in an empty context, so the request's capture does not count the ``EXPLAIN`` (metrics, which
  see every statement in the process, do, as ``operation="other"``).

A plan that cannot be had (an error, the time limit, no greenlet under asyncio) is logged as
``plan_error`` instead; the slow-query log never raises.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ormtune.exceptions import ConfigurationError
from ormtune.instrumentation._logs import query_fields, safe_log, slow_query_logger
from ormtune.querylog import find_callsite

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Connection, Engine

    from ormtune.querylog import QueryEvent

__all__ = ["SlowQueryLog"]

_explaining: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ormtune_explaining", default=False
)
_PLANNED_KINDS = frozenset({"select", "insert", "update", "delete"})
# Connect-timeout arguments by DBAPI driver name (seconds; psycopg wants whole seconds).
_CONNECT_TIMEOUT = {
    "psycopg": "connect_timeout",
    "psycopg2": "connect_timeout",
    "asyncpg": "timeout",
    "pymysql": "connect_timeout",
    "aiomysql": "connect_timeout",
    "mysqldb": "connect_timeout",
}


class SlowQueryLog:
    """Logs statements that took ``threshold`` seconds or more: a
    :class:`~ormtune.typing.QueryObserver`. See the module documentation for ``explain``."""

    def __init__(
        self,
        threshold: float = 0.5,
        *,
        explain: bool = False,
        analyze: bool = False,
        explain_interval: float = 300.0,
        explain_timeout: float = 2.0,
        explain_engine: Engine | None = None,
        parameters: bool = False,
        skip_modules: tuple[str, ...] = (),
        logger: logging.Logger = slow_query_logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 0 or explain_timeout <= 0 or explain_interval < 0:
            raise ConfigurationError(
                f"SlowQueryLog needs threshold >= 0, explain_timeout > 0 and "
                f"explain_interval >= 0 (seconds), but was given threshold={threshold!r}, "
                f"explain_timeout={explain_timeout!r}, explain_interval={explain_interval!r}"
            )
        self.threshold = threshold
        self.explain = explain
        self.analyze = analyze
        self.explain_interval = explain_interval
        self.explain_timeout = explain_timeout
        self.explain_engine = explain_engine
        self.parameters = parameters
        self.skip_modules = tuple(skip_modules)
        self.logger = logger
        self.clock = clock
        # EXPLAIN needs the values, so a subscriber with explain on asks for them.
        self.receives_values = False
        self._explained: dict[str, float] = {}
        self._lock = threading.Lock()
        self._engines: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()

    def on_query(self, event: QueryEvent) -> None:
        if event.duration < self.threshold or _explaining.get():
            return
        callsite = event.callsite or find_callsite(self.skip_modules)
        fields = query_fields(event, values=self.parameters, received=self.receives_values)
        fields.update(
            event="slow_query",
            sql=event.sql,
            callsite=str(callsite) if callsite is not None else None,
            threshold_ms=round(self.threshold * 1000, 3),
        )
        if self.explain and self.receives_values and self._due(event):
            plan, error = contextvars.Context().run(self._plan, event)
            fields["plan"] = plan
            if error is not None:
                fields["plan_error"] = error
        safe_log(
            self.logger,
            logging.WARNING,
            "slow query: %.1f ms %s",
            event.duration * 1000,
            event.fingerprint,
            extra=fields,
        )

    def _due(self, event: QueryEvent) -> bool:
        """Whether this fingerprint may be explained now (and, if so, note that it was)."""
        if event.error is not None or event.executemany or event.kind not in _PLANNED_KINDS:
            return False
        now = self.clock()
        key = event.fingerprint_id
        with self._lock:
            last = self._explained.get(key)
            if last is not None and now - last < self.explain_interval:
                return False
            if len(self._explained) >= 10_000:  # forget fingerprints not explained lately
                cutoff = now - self.explain_interval
                self._explained = {k: t for k, t in self._explained.items() if t >= cutoff}
            self._explained[key] = now
        return True

    def _plan(self, event: QueryEvent) -> tuple[str | None, str | None]:
        """The plan as text, or an error message; runs in a fresh context."""
        _explaining.set(True)
        url = event.engine.url
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            return None, "an in-memory SQLite database cannot be seen from another connection"
        try:
            engine = self._engine_for(event.engine)
            with engine.connect() as conn:
                try:
                    return self._run_explain(conn, event), None
                finally:
                    conn.rollback()
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _engine_for(self, engine: Engine) -> Engine:
        if self.explain_engine is not None:
            return self.explain_engine
        own = self._engines.get(engine)
        if own is None:
            connect_args: dict[str, Any] = {}
            timeout_argument = _CONNECT_TIMEOUT.get(engine.dialect.driver)
            if timeout_argument is not None:
                connect_args[timeout_argument] = max(1, round(self.explain_timeout))
            if engine.dialect.is_async:
                # Usable from the greenlet an AsyncSession runs the slow statement in.
                own = create_async_engine(
                    engine.url, poolclass=NullPool, connect_args=connect_args
                ).sync_engine
            else:
                own = create_engine(engine.url, poolclass=NullPool, connect_args=connect_args)
            self._engines[engine] = own
        return own

    def _run_explain(self, conn: Connection, event: QueryEvent) -> str:
        dialect = conn.dialect
        analyze = self.analyze and event.kind == "select"
        milliseconds = max(1, round(self.explain_timeout * 1000))
        sql = event.sql
        if dialect.name == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")
            statement = ("EXPLAIN ANALYZE " if analyze else "EXPLAIN ") + sql
        elif dialect.name in ("mysql", "mariadb"):
            if getattr(dialect, "is_mariadb", False):
                seconds = max(0.001, self.explain_timeout)
                verb = "ANALYZE " if analyze else "EXPLAIN "
                statement = f"SET STATEMENT max_statement_time={seconds:.3f} FOR {verb}{sql}"
            else:
                conn.exec_driver_sql(f"SET SESSION max_execution_time = {milliseconds}")
                statement = ("EXPLAIN ANALYZE " if analyze else "EXPLAIN ") + sql
        elif dialect.name == "sqlite":
            statement = "EXPLAIN QUERY PLAN " + sql
        else:
            statement = "EXPLAIN " + sql
        rows = conn.exec_driver_sql(statement, event.parameters).all()
        return "\n".join(" | ".join(str(value) for value in row) for row in rows)
