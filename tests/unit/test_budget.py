"""Query budgets used directly (without the pytest plugin), sync and asyncio."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from ormtune import QueryCountError
from ormtune.querylog import listening
from ormtune.testing import assert_max_queries, assert_num_queries


def test_budget_error_carries_counts_and_log() -> None:
    engine = create_engine("sqlite://")
    with (
        pytest.raises(QueryCountError) as info,
        engine.connect() as conn,
        assert_max_queries(1) as log,
    ):
        conn.execute(text("SELECT 1"))
        conn.execute(text("SELECT 1"))
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert info.value.log is log
    assert str(info.value).splitlines()[0] == "Expected to perform 1 query or less but 2 were done"
    assert not listening()


def test_budget_counts_only_the_given_engine() -> None:
    counted, ignored = create_engine("sqlite://"), create_engine("sqlite://")
    with counted.connect() as a, ignored.connect() as b, assert_num_queries(1, counted):
        a.execute(text("SELECT 1"))
        b.execute(text("SELECT 1"))
        b.execute(text("SELECT 1"))


async def test_budget_as_async_context_manager() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.connect() as conn:
        async with assert_num_queries(2) as log:
            await conn.execute(text("SELECT 1"))
            await conn.execute(text("SELECT 2"))
        assert log.count == 2
        with pytest.raises(QueryCountError, match="Expected to perform 0 queries but 1 was"):
            async with assert_num_queries(0):
                await conn.execute(text("SELECT 3"))
    await engine.dispose()
