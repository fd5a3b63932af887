"""Pool metrics under contention on real PostgreSQL (sync and asyncio), and slow-query plans on
PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

import io
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, exc, text
from sqlalchemy.ext.asyncio import create_async_engine

from ormtune.instrumentation import (
    JsonFormatter,
    SlowQueryLog,
    TimedAsyncAdaptedQueuePool,
    TimedQueuePool,
    instrument,
    instrument_pool,
    metrics,
)
from ormtune.querylog import observe
from tests.conftest import BACKENDS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import Backend

WAIT = "ormtune_db_client_connection_wait_time_seconds"


def sample(registry: CollectorRegistry, name: str, pool: str = "main") -> float | None:
    return registry.get_sample_value(name, {"pool": pool})


@pytest.mark.postgresql
def test_pool_gauges_waits_timeouts_and_invalidations(postgresql_backend: Backend) -> None:
    registry = CollectorRegistry()
    engine = create_engine(
        postgresql_backend.sync_url,
        poolclass=TimedQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.2,
    )
    try:
        with instrument_pool(engine, metrics(registry), name="main"):
            assert sample(registry, "ormtune_db_client_connection_pool_size") == 1
            held = engine.connect()
            held.execute(text("select 1"))
            assert sample(registry, "ormtune_db_client_connection_checked_out") == 1
            assert sample(registry, "ormtune_db_client_connection_overflow") == 0
            # The only connection is taken: the next checkout waits 0.2 s and gives up.
            with pytest.raises(exc.TimeoutError):
                engine.connect()
            assert sample(registry, "ormtune_db_client_connection_timeouts_total") == 1
            # A checkout that waits for the held connection, then gets it.
            about_to_wait = threading.Event()
            got: list[float] = []

            def waiter() -> None:
                about_to_wait.set()
                with engine.connect() as conn:
                    got.append(conn.execute(text("select 2")).scalar_one())

            thread = threading.Thread(target=waiter)
            thread.start()
            assert about_to_wait.wait(10)
            held.close()
            thread.join(10)
            assert got == [2]
            assert sample(registry, f"{WAIT}_count") == 2  # the held one and the waiter
            wait_sum = sample(registry, f"{WAIT}_sum")
            assert wait_sum is not None
            assert wait_sum > 0
            assert sample(registry, "ormtune_db_client_connection_checked_out") == 0
            with engine.connect() as conn:
                conn.invalidate()
            assert sample(registry, "ormtune_db_client_connection_invalidated_total") == 1
            # engine.dispose() makes a new pool, which is recorded too.
            engine.dispose()
            with engine.connect() as conn:
                conn.execute(text("select 1"))
                assert sample(registry, "ormtune_db_client_connection_checked_out") == 1
            assert sample(registry, f"{WAIT}_count") == 4
        # Closed: no longer recorded.
        with engine.connect():
            pass
        assert sample(registry, f"{WAIT}_count") == 4
    finally:
        engine.dispose()


@pytest.mark.postgresql
async def test_async_pool_waits_and_timeouts(postgresql_backend: Backend) -> None:
    registry = CollectorRegistry()
    engine = create_async_engine(
        postgresql_backend.async_url,
        poolclass=TimedAsyncAdaptedQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.2,
    )
    try:
        with instrument_pool(engine, metrics(registry), name="main"):
            async with engine.connect() as held:
                await held.execute(text("select 1"))
                assert sample(registry, "ormtune_db_client_connection_checked_out") == 1
                with pytest.raises(exc.TimeoutError):
                    async with engine.connect():
                        pass
            assert sample(registry, "ormtune_db_client_connection_timeouts_total") == 1
            assert sample(registry, f"{WAIT}_count") == 1
            assert sample(registry, "ormtune_db_client_connection_checked_out") == 0
    finally:
        await engine.dispose()


@pytest.mark.postgresql
def test_instrument_records_the_pools_of_its_engines(postgresql_backend: Backend) -> None:
    registry = CollectorRegistry()
    engine = create_engine(postgresql_backend.sync_url, pool_size=3)
    try:
        with instrument(engine, registry=registry, slow_query_threshold=None):
            with engine.connect() as conn:
                conn.execute(text("select 1"))
                pool = f"postgresql/{engine.url.database}"
                assert sample(registry, "ormtune_db_client_connection_checked_out", pool) == 1
            assert sample(registry, "ormtune_db_client_connection_pool_size", pool) == 3
    finally:
        engine.dispose()


class SlowLines:
    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())

    def __enter__(self) -> SlowLines:
        logging.getLogger("ormtune.slow_query").addHandler(self.handler)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger("ormtune.slow_query").removeHandler(self.handler)

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture(params=BACKENDS)
def any_backend(request: pytest.FixtureRequest) -> Backend:
    result: Backend = request.getfixturevalue(f"{request.param}_backend")
    return result


@pytest.fixture
def items(any_backend: Backend) -> Iterator[Backend]:
    engine = create_engine(any_backend.sync_url)
    with engine.begin() as conn:
        conn.execute(text("drop table if exists slow_items"))
        conn.execute(text("create table slow_items (id integer primary key, name varchar(20))"))
        conn.execute(text("insert into slow_items (id, name) values (1, 'a'), (2, 'b')"))
    yield any_backend
    with engine.begin() as conn:
        conn.execute(text("drop table slow_items"))
    engine.dispose()


PLAN_WORDS = {"postgresql": "slow_items", "mariadb": "slow_items", "sqlite": "slow_items"}


def test_slow_queries_carry_their_plan(items: Backend) -> None:
    engine = create_engine(items.sync_url)
    slow = SlowQueryLog(0.0, explain=True, analyze=True)
    slow.receives_values = True
    try:
        with (
            SlowLines() as out,
            observe(slow, engine, parameters=True),
            engine.begin() as conn,
        ):
            conn.execute(text("select name from slow_items where id = :id"), {"id": 2})
            conn.execute(text("update slow_items set name = 'c' where id = :id"), {"id": 1})
        select_line, update_line = out.lines
        assert "plan_error" not in select_line, select_line["plan_error"]
        assert "plan_error" not in update_line, update_line["plan_error"]
        assert "slow_items" in select_line["plan"] or "SEARCH" in select_line["plan"]
        if items.name == "postgresql":
            assert "actual time" in select_line["plan"]  # EXPLAIN ANALYZE for the SELECT
            assert "actual time" not in update_line["plan"]  # plain EXPLAIN for the write
            assert update_line["plan"].startswith("Update on slow_items")
        with engine.connect() as conn:  # the update itself happened once, in the app
            assert conn.execute(text("select name from slow_items where id = 1")).scalar() == "c"
    finally:
        engine.dispose()


async def test_slow_queries_under_asyncio_carry_their_plan(items: Backend) -> None:
    engine = create_async_engine(items.async_url)
    slow = SlowQueryLog(0.0, explain=True)
    slow.receives_values = True
    try:
        with SlowLines() as out, observe(slow, engine, parameters=True):
            async with engine.connect() as conn:
                await conn.execute(text("select name from slow_items where id = :id"), {"id": 2})
        (line,) = out.lines
        assert "plan_error" not in line, line["plan_error"]
        assert line["plan"]
    finally:
        await engine.dispose()
