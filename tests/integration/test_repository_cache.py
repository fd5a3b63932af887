"""Repository reads through the query cache: declared once on the repository."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import ormtune
from ormtune.repository import AsyncRepository, Repository
from ormtune.testing import assert_max_queries
from tests.cache_models import Account, CacheBase, Payment, sample

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ormtune.caching import QueryCache
    from tests.conftest import Backend


class CachedPayments(Repository[Payment]):
    load = [Payment.account]
    cache = ormtune.cache(ttl=60, name="payments")


class AsyncCachedPayments(AsyncRepository[Payment]):
    load = [Payment.account]
    cache = ormtune.cache(ttl=60, name="payments")


@pytest.fixture
def db(cache_db: Engine) -> Engine:
    return cache_db


def test_reads_are_cached_and_writes_invalidate_them(db: Engine, qc: QueryCache) -> None:
    def read() -> tuple[list[tuple[int, str]], int, bool, str]:
        with Session(db) as session:
            repo = CachedPayments(session)
            rows = repo.list(filters={"account_id": 1}, order_by=[Payment.id])
            return (
                [(p.id, p.account.name) for p in rows],
                repo.count(filters={"account_id": 1}),
                repo.exists(filters={"account_id": 2}),
                str(repo.get(1).amount),
            )

    read()
    expected = read()
    with assert_max_queries(0):
        assert read() == expected
    with Session(db) as session:
        CachedPayments(session).create(account_id=1, amount=7)
        session.commit()
    rows, count, _, _ = read()
    assert count == expected[1] + 1
    assert len(rows) == len(expected[0]) + 1
    assert qc.stats["payments"].hits >= 4


async def test_async_repository_reads_are_cached(backend: Backend, qc: QueryCache) -> None:
    engine = create_async_engine(backend.async_url)
    async with engine.begin() as conn:
        await conn.run_sync(CacheBase.metadata.drop_all)
        await conn.run_sync(CacheBase.metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add_all(sample())
        await session.commit()

    async def names() -> list[str]:
        async with AsyncSession(engine) as session:
            rows = await AsyncCachedPayments(session).list(filters={"account_id": 2})
            return [p.account.name for p in rows]

    try:
        await names()
        expected = await names()
        async with ormtune.capture() as log:
            assert await names() == expected
        assert log.count == 0
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(CacheBase.metadata.drop_all)
        await engine.dispose()


def test_a_repository_without_cache_is_untouched(db: Engine, qc: QueryCache) -> None:
    with Session(db) as session:
        Repository(session, Account).list()
    assert qc.stats.overall.hits + qc.stats.overall.misses == 0
