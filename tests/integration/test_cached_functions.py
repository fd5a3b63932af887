"""``@ormtune.cached`` functions and single flight, against real databases."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from ormtune.caching import QueryCache, cached, invalidate
from ormtune.testing import assert_max_queries
from tests.cache_models import Account, CacheBase, Payment, sample
from tests.integration.test_cache import SERVER_DATABASES, payments_stmt

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from tests.conftest import Backend


@pytest.fixture
def db(cache_db: Engine) -> Engine:
    return cache_db


def test_function_dependencies_are_discovered_from_its_queries(db: Engine, qc: QueryCache) -> None:
    @cached(ttl=60, name="total")
    def total(session: Session, account_id: int) -> dict[str, Any]:
        stmt = select(func.sum(Payment.amount)).where(Payment.account_id == account_id)
        return {"account": account_id, "total": session.scalar(stmt)}

    with Session(db) as session:
        first = total(session, 1)
        assert total(session, 1) == first  # learnt, then stored
        with assert_max_queries(0):
            assert total(session, 1) == first
        with assert_max_queries(1):
            total(session, 2)  # another key
    with Session(db) as session:
        session.execute(update(Payment).where(Payment.account_id == 1).values(amount=1))
        session.commit()
    with Session(db) as session:
        assert total(session, 1)["total"] == 3
    stats = qc.stats["total"]
    assert (stats.hits, stats.misses) == (1, 4)


def test_declared_dependencies_and_invalidate_by_name(db: Engine, qc: QueryCache) -> None:
    calls = []

    @cached(depends_on=[Account], name="account-names")
    def names(session: Session) -> list[str]:
        calls.append(1)
        return list(session.scalars(select(Account.name).order_by(Account.id)))

    with Session(db) as session:
        names(session)
        names(session)
        assert len(calls) == 1  # declared dependencies: the first call is stored
        invalidate("account-names")
        names(session)
        assert len(calls) == 2


def test_unkeyable_arguments_are_counted_not_cached(db: Engine, qc: QueryCache) -> None:
    @cached(name="objects")
    def echo(value: object) -> str:
        return "done"

    echo(object())
    echo(object())
    assert qc.stats["objects"].bypasses == {"arguments cannot be part of a key": 2}


async def test_async_function(backend: Backend, qc: QueryCache) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(backend.async_url)
    async with engine.begin() as conn:
        await conn.run_sync(CacheBase.metadata.drop_all)
        await conn.run_sync(CacheBase.metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add_all(sample())
        await session.commit()
    calls = []

    @cached(name="async-count")
    async def count(session: AsyncSession) -> int:
        calls.append(1)
        return int(await session.scalar(select(func.count()).select_from(Payment)) or 0)

    try:
        async with AsyncSession(engine) as session:
            assert await count(session) == 9
            assert await count(session) == 9
            assert await count(session) == 9
            assert len(calls) == 2  # learnt, stored, served
            session.add(Payment(account_id=1, amount=1))
            await session.commit()
            assert await count(session) == 10
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(CacheBase.metadata.drop_all)
        await engine.dispose()


@SERVER_DATABASES  # threads with their own connections
def test_concurrent_misses_run_the_query_once(db: Engine, qc: QueryCache) -> None:
    with Session(db) as session:
        session.scalars(payments_stmt(1)).all()  # learn the statement
    queries = []
    gate = threading.Barrier(4)

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "c_payments" in statement:
            queries.append(statement)

    def read() -> None:
        gate.wait(10)
        with Session(db) as session:
            assert len(session.scalars(payments_stmt(1)).all()) == 3

    event.listen(db, "after_cursor_execute", count)
    try:
        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    finally:
        event.remove(db, "after_cursor_execute", count)
    stats = qc.stats.overall
    assert len(queries) == stats.misses - 1  # one query per miss after learning...
    assert stats.hits + stats.misses == 5
    assert stats.hits >= 2  # ...and the threads that waited for the leader hit its entry


def test_dependencies_of_mysql_text_with_backslash_escapes(db: Engine, qc: QueryCache) -> None:
    # Read as standard SQL, the literal 'x\'' ends at its second quote and the third opens a
    # literal that runs to the next quote, hiding c_payments: the function would depend on no
    # table and serve its old count after a commit.
    if db.dialect.name not in ("mysql", "mariadb"):
        pytest.skip("backslash escapes in string literals are MySQL's and MariaDB's")
    from sqlalchemy import text

    @cached(ttl=60, name="escaped")
    def count(session: Session) -> int:
        sql = text(r"SELECT 'x\'' AS q, count(*) AS n FROM c_payments WHERE 'b' = 'b'")
        return int(session.execute(sql).one().n)

    with Session(db) as session:
        before = count(session)
        assert count(session) == before  # learnt, then stored
        with assert_max_queries(0):
            assert count(session) == before
    with Session(db) as session:
        session.add(Payment(account_id=1, amount=5))
        session.commit()
    with Session(db) as session:
        assert count(session) == before + 1
