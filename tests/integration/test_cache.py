"""The query cache against real databases: hits cost no query, commits invalidate, nothing
stale is ever served. Query counts are the oracle (a hit is ``assert_max_queries(0)``)."""

from __future__ import annotations

import decimal
import threading
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, delete, event, func, insert, select, text, update
from sqlalchemy.orm import Session, joinedload, selectinload, with_polymorphic

import ormtune
from ormtune.backends import MemoryBackend
from ormtune.caching import QueryCache, cache
from ormtune.exceptions import CacheBackendError
from ormtune.testing import assert_max_queries
from ormtune.typing import Lookup
from tests.cache_models import Account, CacheBase, Employee, Manager, Payment, Status, Tag, sample

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy import Engine

    from ormtune.typing import Token
    from tests.conftest import Backend


@pytest.fixture
def db(cache_db: Engine) -> Engine:
    return cache_db


def payments_stmt(account_id: int, **options: Any) -> Any:
    """The statement the tests cache: one account's payments."""
    stmt = select(Payment).where(Payment.account_id == account_id).order_by(Payment.id)
    return stmt.options(cache(**options))


def payments_of(engine: Engine, account_id: int, **options: Any) -> list[tuple[int, str]]:
    with Session(engine) as session:
        rows = session.scalars(payments_stmt(account_id, **options)).all()
        return [(p.id, str(p.amount)) for p in rows]


def warm(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run twice: the first run teaches the cache the statement, the second fills it."""
    fn(*args, **kwargs)
    return fn(*args, **kwargs)


def test_a_hit_runs_no_query_and_returns_what_the_database_did(db: Engine, qc: QueryCache) -> None:
    expected = warm(payments_of, db, 1)
    with assert_max_queries(0):
        assert payments_of(db, 1) == expected
    stats = qc.stats["(unnamed)"]
    assert (stats.hits, stats.misses) == (1, 2)


def test_values_of_every_column_type_survive_the_round_trip(db: Engine, qc: QueryCache) -> None:
    def read() -> list[tuple[Any, ...]]:
        with Session(db) as session:
            stmt = select(Payment).where(Payment.account_id == 2).options(cache())
            return [
                (p.amount, p.status, p.created_at, p.meta, type(p.amount))
                for p in session.scalars(stmt)
            ]

    expected = warm(read)
    with assert_max_queries(0):
        got = read()
    assert got == expected
    assert got[0][1] is Status.PENDING
    assert got[0][4] is decimal.Decimal


def test_committed_orm_update_is_seen_by_the_next_read(db: Engine, qc: QueryCache) -> None:
    warm(payments_of, db, 1)
    with Session(db) as session:
        payment = session.scalars(select(Payment).where(Payment.account_id == 1)).first()
        assert payment is not None
        payment.amount = decimal.Decimal("999.00")
        session.commit()
    assert "999.00" in {amount for _, amount in payments_of(db, 1)}


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda s: s.add(Payment(account_id=1, amount=1)), id="orm-insert"),
        pytest.param(
            lambda s: s.delete(s.scalars(select(Payment).where(Payment.account_id == 1)).first()),
            id="orm-delete",
        ),
        pytest.param(
            lambda s: s.execute(update(Payment).where(Payment.amount > 0).values(amount=5)),
            id="orm-bulk-update",
        ),
        pytest.param(
            lambda s: s.execute(delete(Payment).where(Payment.amount > 0)), id="orm-bulk-delete"
        ),
        pytest.param(
            lambda s: s.execute(insert(Payment).values(account_id=1, amount=2)), id="core-insert"
        ),
        pytest.param(
            lambda s: s.execute(text("UPDATE c_payments SET amount = 7")), id="text-update"
        ),
        pytest.param(
            lambda s: s.connection().exec_driver_sql("DELETE FROM c_payments"),
            id="exec-driver-sql",
        ),
        pytest.param(
            lambda s: s.execute(delete(Account).where(Account.id == 1)), id="fk-cascade-delete"
        ),
        pytest.param(lambda s: s.delete(s.get(Account, 1)), id="orm-delete-fk-cascade"),
    ],
)
def test_every_write_path_invalidates(db: Engine, qc: QueryCache, write: Any) -> None:
    before = warm(payments_of, db, 1)
    with Session(db) as session:
        write(session)
        session.commit()
    with Session(db) as session:
        stmt = select(Payment).where(Payment.account_id == 1).order_by(Payment.id)
        fresh = [(p.id, str(p.amount)) for p in session.scalars(stmt)]
    assert fresh != before, "the write should have changed the result"
    assert payments_of(db, 1) == fresh


SERVER_DATABASES = pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
    indirect=True,
)


@SERVER_DATABASES  # SQLite has no TRUNCATE
def test_truncate_invalidates(db: Engine, qc: QueryCache, backend: Backend) -> None:
    warm(payments_of, db, 1)
    with Session(db) as session:
        session.execute(text("DELETE FROM c_payment_tags"))
        session.execute(text("TRUNCATE TABLE c_payment_tags"))
        if backend.name == "postgresql":
            session.execute(text("TRUNCATE TABLE c_payments CASCADE"))
        else:
            session.execute(text("DELETE FROM c_payments"))
        session.commit()
    assert payments_of(db, 1) == []


def test_autocommit_connection_invalidates_at_once(db: Engine, qc: QueryCache) -> None:
    warm(payments_of, db, 1)
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(delete(Payment).where(Payment.account_id == 1))
        assert payments_of(db, 1) == []


def test_core_transaction_invalidates_before_begin_block_returns(
    db: Engine, qc: QueryCache
) -> None:
    warm(payments_of, db, 1)
    with db.begin() as conn:
        conn.execute(delete(Payment).where(Payment.account_id == 1))
    assert payments_of(db, 1) == []


def test_rollback_keeps_entries(db: Engine, qc: QueryCache) -> None:
    expected = warm(payments_of, db, 1)
    with Session(db) as session:
        session.execute(delete(Payment).where(Payment.account_id == 1))
        session.rollback()
    with assert_max_queries(0):
        assert payments_of(db, 1) == expected


def test_savepoint_rollback_drops_its_writes_and_release_keeps_them(
    db: Engine, qc: QueryCache
) -> None:
    expected = warm(payments_of, db, 1)
    with Session(db) as session:
        with session.begin_nested() as nested:
            session.execute(delete(Payment).where(Payment.account_id == 1))
            nested.rollback()
        session.commit()
    with assert_max_queries(0):
        assert payments_of(db, 1) == expected
    with Session(db) as session:
        with session.begin_nested():
            session.execute(delete(Payment).where(Payment.account_id == 1))
        session.commit()
    assert payments_of(db, 1) == []


def test_a_session_that_wrote_reads_its_own_writes_and_never_fills(
    db: Engine, qc: QueryCache
) -> None:
    expected = warm(payments_of, db, 1)
    with Session(db) as session:
        session.add(Payment(account_id=1, amount=3))
        assert len(session.scalars(payments_stmt(1)).all()) == len(expected) + 1  # autoflushed
        assert qc.stats.overall.bypasses == {"session wrote to c_payments": 1}
        session.rollback()
    with assert_max_queries(0):
        assert payments_of(db, 1) == expected


def test_a_write_to_other_rows_keeps_fine_entries(db: Engine, qc: QueryCache) -> None:
    expected = warm(payments_of, db, 1)
    with Session(db) as session:
        session.add(Payment(account_id=2, amount=4))
        other = session.scalars(select(Payment).where(Payment.account_id == 3)).first()
        assert other is not None
        other.amount = decimal.Decimal("1.00")
        session.commit()
    with assert_max_queries(0):
        assert payments_of(db, 1) == expected
    with Session(db) as session:
        session.add(Payment(account_id=1, amount=4))
        session.commit()
    assert len(payments_of(db, 1)) == len(expected) + 1


def test_moving_a_row_between_filter_values_invalidates_both(db: Engine, qc: QueryCache) -> None:
    warm(payments_of, db, 1)
    warm(payments_of, db, 2)
    with Session(db) as session:
        moved = session.scalars(select(Payment).where(Payment.account_id == 1)).first()
        assert moved is not None
        moved.account_id = 2
        session.commit()
        moved_id = moved.id
    assert moved_id not in {i for i, _ in payments_of(db, 1)}
    assert moved_id in {i for i, _ in payments_of(db, 2)}


def test_session_get_is_cached_by_identity(db: Engine, qc: QueryCache) -> None:
    def get(pk: int) -> str:
        with Session(db) as session:
            payment = session.get(Payment, pk, options=[cache(name="payment")])
            assert payment is not None
            return str(payment.amount)

    warm(get, 1)
    warm(get, 2)
    with assert_max_queries(0):
        get(1)
    with Session(db) as session:
        session.execute(update(Payment).where(Payment.id == 2).values(amount=8))
        session.commit()
    with assert_max_queries(1):
        assert get(2) == "8.00"


def test_eager_loads_come_back_without_queries(db: Engine, qc: QueryCache) -> None:
    def read() -> list[tuple[str, list[str], list[list[str]]]]:
        with Session(db) as session:
            stmt = (
                select(Account)
                .order_by(Account.id)
                .options(
                    selectinload(Account.payments).selectinload(Payment.tags), cache(name="acc")
                )
            )
            return [
                (
                    a.name,
                    [str(p.amount) for p in a.payments],
                    [[t.label for t in p.tags] for p in a.payments],
                )
                for a in session.scalars(stmt)
            ]

    expected = warm(read)
    with assert_max_queries(0):
        assert read() == expected
    with Session(db) as session:  # a write to the association table alone
        session.execute(text("DELETE FROM c_payment_tags WHERE tag_id = 2"))
        session.commit()
    changed = read()
    assert changed != expected
    assert "food" not in str(changed)


def test_joined_eager_load_of_many_to_one(db: Engine, qc: QueryCache) -> None:
    def read() -> list[tuple[int, str]]:
        with Session(db) as session:
            stmt = (
                select(Payment)
                .where(Payment.account_id == 1)
                .options(joinedload(Payment.account), cache())
            )
            return [(p.id, p.account.name) for p in session.scalars(stmt)]

    expected = warm(read)
    with assert_max_queries(0):
        assert read() == expected
    with Session(db) as session:
        session.execute(update(Account).where(Account.id == 1).values(name="renamed"))
        session.commit()
    assert {name for _, name in read()} == {"renamed"}


def test_columns_and_aggregates(db: Engine, qc: QueryCache) -> None:
    def read() -> list[tuple[Any, ...]]:
        with Session(db) as session:
            stmt = (
                select(Payment.account_id, func.count(), func.sum(Payment.amount))
                .group_by(Payment.account_id)
                .order_by(Payment.account_id)
                .options(cache())
            )
            return [tuple(row) for row in session.execute(stmt)]

    expected = warm(read)
    with assert_max_queries(0):
        assert read() == expected


def test_polymorphic_loads_and_subclass_table_writes(db: Engine, qc: QueryCache) -> None:
    def read() -> list[tuple[str, str, int | None]]:
        with Session(db) as session:
            poly = with_polymorphic(Employee, [Manager])
            stmt = select(poly).order_by(poly.id).options(cache())
            return [
                (type(e).__name__, e.name, e.budget if isinstance(e, Manager) else None)
                for e in session.scalars(stmt)
            ]

    expected = warm(read)
    with assert_max_queries(0):
        assert read() == expected
    with Session(db) as session:
        session.execute(text("UPDATE c_managers SET budget = 99"))
        session.commit()
    assert ("Manager", "bob", 99) in read()


def test_identity_map_objects_are_returned_not_overwritten(db: Engine, qc: QueryCache) -> None:
    warm(payments_of, db, 1)
    with Session(db, autoflush=False) as session:
        mine = session.scalars(select(Payment).where(Payment.account_id == 1)).first()
        assert mine is not None
        mine.amount = decimal.Decimal("123.45")  # not flushed: the database still has the old
        with assert_max_queries(0):
            got = session.scalars(payments_stmt(1)).all()
        assert mine in got
        assert mine.amount == decimal.Decimal("123.45")


def test_objects_already_in_the_session_are_not_stored(db: Engine, qc: QueryCache) -> None:
    payments_of(db, 1)  # learn the statement
    with Session(db, autoflush=False) as session:
        mine = session.get(Payment, 1)
        assert mine is not None
        mine.amount = decimal.Decimal("0.01")
        session.scalars(payments_stmt(1)).all()
    assert qc.stats.overall.rejected["objects were already in the session"] == 1
    assert "0.01" not in {amount for _, amount in payments_of(db, 1)}


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"populate_existing": True}, "populate_existing"),
        ({"yield_per": 10}, "yield_per / streaming"),
    ],
)
def test_uncacheable_executions_are_counted(
    db: Engine, qc: QueryCache, options: dict[str, Any], reason: str
) -> None:
    with Session(db) as session:
        stmt = select(Payment).options(cache()).execution_options(**options)
        for _ in range(2):
            session.scalars(stmt).all()
    assert qc.stats.overall.bypasses == {reason: 2}


def test_for_update_and_now_are_not_cached(db: Engine, qc: QueryCache) -> None:
    with Session(db) as session:
        for _ in range(2):
            session.scalars(select(Payment).with_for_update().options(cache())).all()
            session.execute(select(Payment.id, func.now()).options(cache())).all()
    bypasses = qc.stats.overall.bypasses
    assert bypasses["with_for_update"] == 2
    # The first run learnt that the SQL calls now() (CURRENT_TIMESTAMP on SQLite).
    learnt = [r for r in bypasses if r.startswith("non-deterministic function")]
    assert len(learnt) == 1
    assert bypasses[learnt[0]] == 1


@SERVER_DATABASES  # SQLite would lock the writer out while the reader holds its cursor
def test_fill_racing_a_commit_is_rejected(db: Engine, qc: QueryCache) -> None:
    payments_of(db, 1)  # learn the statement
    paused, resume = threading.Event(), threading.Event()

    def pause(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "c_payments" in statement and threading.current_thread().name == "reader":
            paused.set()
            assert resume.wait(10)

    event.listen(db, "after_cursor_execute", pause)
    reader = threading.Thread(target=payments_of, args=(db, 1), name="reader")
    reader.start()
    assert paused.wait(10)
    with Session(db) as session:  # commits while the reader holds its old rows
        session.execute(update(Payment).where(Payment.account_id == 1).values(amount=42))
        session.commit()
    resume.set()
    reader.join(10)
    event.remove(db, "after_cursor_execute", pause)
    assert qc.stats.overall.rejected["outdated snapshot"] == 1
    assert {amount for _, amount in payments_of(db, 1)} == {"42.00"}


@pytest.mark.parametrize(  # MariaDB runs REPEATABLE READ by default
    "backend", [pytest.param("mariadb", marks=pytest.mark.mariadb)], indirect=True
)
def test_repeatable_read_never_serves_newer_rows_than_its_snapshot(
    db: Engine, qc: QueryCache
) -> None:
    before = warm(payments_of, db, 2)
    with Session(db) as reader:
        reader.execute(select(Payment.id).limit(1)).all()  # the snapshot is taken here
        with Session(db) as writer:
            writer.execute(update(Payment).where(Payment.account_id == 2).values(amount=6))
            writer.commit()
        after = warm(payments_of, db, 2)  # other sessions fill the cache with the new rows
        assert after != before
        got = [(p.id, str(p.amount)) for p in reader.scalars(payments_stmt(2))]
        assert got == before  # the snapshot's rows, not the cache's newer ones
    assert qc.stats.overall.bypasses["transaction snapshot is older than the last commit"] >= 1


def test_invalidate_by_model_name_and_everything(db: Engine, qc: QueryCache) -> None:
    warm(payments_of, db, 1, name="p")
    for target in ((Payment,), ("p",), ()):
        with assert_max_queries(0):
            payments_of(db, 1, name="p")
        qc.invalidate(*target)
        with assert_max_queries(1):
            payments_of(db, 1, name="p")


class Corrupting(MemoryBackend):
    """A memory backend whose stored bytes are damaged on the way out, like a bad disk."""

    def lookup(self, key: str, tokens: Sequence[Token], /) -> Lookup:
        found = super().lookup(key, tokens)
        if found.value is None:
            return found
        return Lookup(found.value[: len(found.value) // 2], found.versions)


def test_undecodable_entry_is_a_miss(db: Engine) -> None:
    with QueryCache(Corrupting()) as query_cache:
        expected = warm(payments_of, db, 1)
        assert payments_of(db, 1) == expected
        assert query_cache.stats.overall.bypasses == {"undecodable entry": 1}


def test_tags_are_plain_objects_on_a_hit(db: Engine, qc: QueryCache) -> None:
    def read() -> list[Tag]:
        with Session(db, expire_on_commit=False) as session:
            return list(session.scalars(select(Tag).order_by(Tag.id).options(cache())))

    warm(read)
    with assert_max_queries(0):
        tags = read()
    assert [t.label for t in tags] == ["rent", "food"]


async def test_async_session_hits_and_sees_commits(backend: Backend, qc: QueryCache) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(backend.async_url)
    async with engine.begin() as conn:
        await conn.run_sync(CacheBase.metadata.drop_all)
        await conn.run_sync(CacheBase.metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add_all(sample())
        await session.commit()

    async def read() -> list[tuple[int, str, list[str]]]:
        async with AsyncSession(engine) as session:
            stmt = payments_stmt(1).options(selectinload(Payment.tags))
            return [
                (p.id, str(p.amount), [t.label for t in p.tags])
                for p in (await session.scalars(stmt)).all()
            ]

    try:
        await read()
        expected = await read()
        async with ormtune.capture() as log:
            assert await read() == expected
        assert log.count == 0
        async with AsyncSession(engine) as session:
            await session.execute(update(Payment).where(Payment.id == 1).values(amount=31))
            await session.commit()
        assert (1, "31.00") in [(i, a) for i, a, _ in await read()]
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(CacheBase.metadata.drop_all)
        await engine.dispose()


def test_results_over_the_size_limit_are_not_stored(db: Engine) -> None:
    with QueryCache(MemoryBackend(), max_entry_bytes=200) as query_cache:
        for _ in range(3):
            payments_of(db, 1)
        assert query_cache.stats.overall.rejected == {"result too large": 2}
        assert query_cache.stats.overall.hits == 0


def test_different_databases_never_share_entries(tmp_path: Any) -> None:
    engines = []
    for name in ("one", "two"):
        engine = create_engine(f"sqlite:///{tmp_path / name}.db")
        CacheBase.metadata.create_all(engine)
        with Session(engine) as session:
            session.add(Account(id=1, name=f"account in {name}"))
            session.commit()
        engines.append(engine)

    def name_in(engine: Engine) -> str:
        with Session(engine) as session:
            stmt = select(Account).where(Account.id == 1).options(cache())
            return session.scalars(stmt).one().name

    with QueryCache(MemoryBackend()):
        for _ in range(3):
            assert [name_in(e) for e in engines] == ["account in one", "account in two"]
    for engine in engines:
        engine.dispose()


def test_stats_count_every_outcome_exactly(db: Engine, qc: QueryCache) -> None:
    payments_of(db, 1, name="p")  # learn: miss
    payments_of(db, 1, name="p")  # fill: miss
    payments_of(db, 1, name="p")  # hit
    payments_of(db, 2, name="p")  # another key: miss
    with Session(db) as session:
        session.scalars(payments_stmt(1, name="p").with_for_update()).all()  # bypass
        session.add(Payment(account_id=3, amount=1))
        session.commit()  # account 3 only: entries for 1 and 2 stay
    payments_of(db, 1, name="p")  # hit
    stats = qc.stats["p"]
    assert (stats.hits, stats.misses) == (2, 3)
    assert stats.bypasses == {"with_for_update": 1}
    assert stats.rejected == {}
    assert stats.hit_rate == 2 / 5
    assert qc.stats.overall.invalidations > 0


def test_backend_failures_are_logged_once_per_interval(
    db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    class Down(MemoryBackend):
        def lookup(self, key: str, tokens: Sequence[Token], /) -> Lookup:
            raise CacheBackendError("the store is down")

    with QueryCache(Down(), error_log_interval=3600) as query_cache:
        for _ in range(4):
            assert len(payments_of(db, 1)) == 3  # from the database
        assert query_cache.stats.overall.errors == 3  # every lookup after learning
    warnings = [r for r in caplog.records if r.name == "ormtune.caching"]
    assert len(warnings) == 1
    assert "the store is down" in warnings[0].getMessage()


def test_outcomes_are_emitted_as_cache_events(db: Engine, qc: QueryCache) -> None:
    from ormtune.querylog import CacheEvent, Signal, observe_signals

    seen: list[CacheEvent] = []

    class Listener:
        def on_signal(self, signal: Signal) -> None:
            if isinstance(signal, CacheEvent):
                seen.append(signal)

    with observe_signals(Listener()):
        for _ in range(3):
            payments_of(db, 1, name="p")
        with Session(db) as session:
            session.add(Payment(account_id=1, amount=1))
            assert len(session.scalars(payments_stmt(1, name="p")).all()) == 4
            session.commit()
    assert [(e.name, e.outcome, e.reason) for e in seen] == [
        ("p", "miss", None),
        ("p", "miss", None),
        ("p", "hit", None),
        ("p", "bypass", "dirty-session"),
        ("(all)", "invalidation", None),
    ]
    assert seen[-1].tables == ("c_payments",)
