"""N+1 and repeated-query detection against real databases, sync and asyncio.

Every test runs on SQLite, PostgreSQL (psycopg / asyncpg) and MariaDB (pymysql / aiomysql)
through the ``engine`` and ``async_engine`` fixtures. The models live here, on their own
declarative base, so that they can use ``AsyncAttrs`` and a ``write_only`` relationship.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    WriteOnlyMapped,
    defer,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

import ormtune
from ormtune.nplusone import Detection, Finding, NPlusOneError, NPlusOneWarning, detect
from ormtune.nplusone._findings import BATCH_ADVICE
from ormtune.nplusone._hooks import hooked
from ormtune.querylog import StatementKind
from tests.nplusone_support import async_seeded, line_of, seeded, where

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from sqlalchemy import Engine

USERS = 5
PAYMENTS_EACH = 2
LAZY_PAYMENTS = "= np_payments.user_id order by np_payments.id"  # in the lazy load's SQL


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "np_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    payments: Mapped[list[Payment]] = relationship(back_populates="user", order_by="Payment.id")
    notes: WriteOnlyMapped[Note] = relationship(order_by="Note.id")


class Payment(Base):
    __tablename__ = "np_payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int]
    user_id: Mapped[int] = mapped_column(ForeignKey("np_users.id"))
    user: Mapped[User] = relationship(back_populates="payments")


class Note(Base):
    __tablename__ = "np_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int] = mapped_column(ForeignKey("np_users.id"))


def _users() -> list[User]:
    users = []
    for i in range(USERS):
        user = User(name=f"user {i}")
        user.payments = [Payment(amount=10 * i + j) for j in range(PAYMENTS_EACH)]
        user.notes.add(Note(text=f"note {i}"))
        users.append(user)
    return users


@pytest.fixture
def db(engine: Engine) -> Iterator[Engine]:
    """The ``engine`` fixture's database with this module's tables: 5 users, 2 payments each."""
    with seeded(engine, Base.metadata, _users):
        yield engine


@pytest_asyncio.fixture
async def async_db(async_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with async_seeded(async_engine, Base.metadata, _users):
        yield async_engine


def _line_of(marker: str) -> int:
    return line_of(__file__, marker)


def _where(marker: str) -> str:
    return where(__file__, marker)


def test_n_plus_one_raises_at_the_second_lazy_load_inside_the_loop(db: Engine) -> None:
    counts = []
    with (
        ormtune.capture() as log,
        pytest.raises(NPlusOneError) as info,
        detect("raise"),
        Session(db) as session,
    ):
        for user in session.scalars(select(User).order_by(User.id)):
            payments = user.payments  # loop: raise
            counts.append(len(payments))

    assert counts == [PAYMENTS_EACH]  # raised before the second lazy load ran SQL
    assert len(log) == 2  # the users, one lazy load
    [finding] = info.value.findings
    assert isinstance(finding, Finding)
    assert finding.kind == "n+1"
    assert finding.relationship == "User.payments"
    assert finding.count == 2
    assert finding.callsite is not None
    assert finding.callsite.filename == __file__
    assert finding.callsite.lineno == _line_of("# loop: raise")
    assert finding.fingerprint == log[1].fingerprint
    assert finding.fingerprint is not None
    assert LAZY_PAYMENTS in finding.fingerprint
    assert finding.fix == ".options(selectinload(User.payments))"
    assert str(info.value) == (
        "N+1 query: User.payments lazy-loaded 2 times, once per User loaded by the same query\n"
        f"  at {_where('# loop: raise')} in "
        "test_n_plus_one_raises_at_the_second_lazy_load_inside_the_loop\n"
        f"  sql: {finding.fingerprint}\n"
        "  fix: add .options(selectinload(User.payments)) to the query that loads the User "
        "objects, or enable ormtune.autoload()"
    )
    # The traceback leads through the loop's line, where the attribute was read.
    assert info.traceback[0].lineno + 1 == _line_of("# loop: raise")


def test_many_to_one_n_plus_one_warns_at_the_loop_with_joinedload(db: Engine) -> None:
    def read_owners() -> tuple[Detection, list[str]]:
        owners = []
        with detect("warn") as detection, Session(db) as session:
            for payment in session.scalars(select(Payment).order_by(Payment.id)):
                user = payment.user  # loop: many-to-one
                owners.append(user.name)
        return detection, owners

    with ormtune.capture() as log, pytest.warns(NPlusOneWarning) as warned:
        detection, owners = read_owners()

    # One lazy load per user: each user's second payment finds its user in the identity map.
    assert len(log) == 1 + USERS
    assert len(set(owners)) == USERS
    [finding] = detection.findings
    assert (finding.kind, finding.relationship, finding.count) == ("n+1", "Payment.user", USERS)
    assert finding.fix == ".options(joinedload(Payment.user))"
    [warning] = warned.list
    assert str(warning.message) == str(finding)
    assert warning.filename == __file__
    assert warning.lineno == _line_of("# loop: many-to-one")
    assert "or enable ormtune.autoload()" in str(finding)


def test_the_fixes_it_names_remove_the_finding(db: Engine) -> None:
    def read_payments(*options: Any) -> int:
        with Session(db) as session:
            users = session.scalars(select(User).options(*options)).all()
            return sum(len(user.payments) for user in users)

    with detect("log") as control, ormtune.capture() as plain:
        assert read_payments() == USERS * PAYMENTS_EACH
    assert [(f.kind, f.count) for f in control.findings] == [("n+1", USERS)]
    assert len(plain) == 1 + USERS

    with detect("raise") as eager, ormtune.capture() as selectin:
        assert read_payments(selectinload(User.payments)) == USERS * PAYMENTS_EACH
    assert eager.findings == []
    assert len(selectin) == 2

    with ormtune.autoload(), detect("raise") as batched:
        assert read_payments() == USERS * PAYMENTS_EACH
    assert batched.findings == []


def test_log_mode_logs_each_finding_when_the_block_ends(
    db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ormtune.nplusone")
    with detect("log") as detection, Session(db) as session:
        for user in session.scalars(select(User)):
            assert user.payments
        assert caplog.records == []  # reported when the unit of work ends, with full counts

    [finding] = detection.findings
    assert finding.count == USERS
    assert [record.getMessage() for record in caplog.records] == [str(finding)]
    # attributed to the loop's line, as a warning would be, not to ormtune's own code
    [record] = caplog.records
    assert finding.callsite is not None
    assert (record.pathname, record.lineno, record.funcName) == (
        finding.callsite.filename,
        finding.callsite.lineno,
        finding.callsite.function,
    )
    assert caplog.records[0].levelno == logging.WARNING


def test_no_finding_where_none_is_due(db: Engine) -> None:
    with ormtune.capture() as log, detect("raise") as detection, Session(db) as session:
        # A single object: session.get(), a one-row result, .first().
        assert session.get(User, 1) is not None
        assert len(session.get_one(User, 1).payments) == PAYMENTS_EACH
        one = session.scalars(select(User).where(User.id == 2)).one()
        assert one.payments
        first = session.scalars(select(User).where(User.id > 2).order_by(User.id)).first()
        assert first is not None
        assert first.payments
        # The same object loading a relationship again is not a second member.
        session.expire(first, ["payments"])
        assert first.payments
        # Eager loads.
        for user in session.scalars(select(User).options(selectinload(User.payments))):
            assert user.payments
        for payment in session.scalars(select(Payment).options(joinedload(Payment.user))):
            assert payment.user
        # Many-to-one answered by the identity map: every user is loaded (and held) already.
        users = session.scalars(select(User)).all()
        for payment in session.scalars(select(Payment)):
            assert payment.user in users

    assert detection.findings == []
    assert detection.report() == "no N+1 or repeated queries"
    lazy_loads = [event for event in log if LAZY_PAYMENTS in event.fingerprint]
    assert len(lazy_loads) == 4  # one per single object above: they did lazy-load
    assert not hooked()


# Detection alone knows which query loaded an object from SQLAlchemy's per-query run id, not
# from an event per loaded object. A refresh of one object gives it a run of its own; these
# make sure the object still counts with the query that loaded it, and that separately loaded
# objects never count together.


def test_objects_expired_by_commit_still_count_with_their_query(db: Engine) -> None:
    with pytest.raises(NPlusOneError) as info, detect("raise"), Session(db) as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        session.commit()  # every user is expired: each refreshes itself at its next access
        for user in users:
            assert user.payments  # expired loop
    [finding] = info.value.findings
    assert isinstance(finding, Finding)
    assert finding.relationship == "User.payments"
    assert finding.callsite is not None
    assert finding.callsite.lineno == _line_of("# expired loop")


def test_deferred_and_refreshed_attributes_keep_the_objects_together(db: Engine) -> None:
    with detect("log", repeated_threshold=None) as detection, Session(db) as session:
        users = session.scalars(select(User).options(defer(User.name)).order_by(User.id)).all()
        for user in users:
            session.refresh(user, ["id"])
            assert user.name  # a deferred column: one more single-object load
            assert user.payments  # deferred loop
    [finding] = detection.findings
    assert (finding.kind, finding.relationship, finding.count) == ("n+1", "User.payments", USERS)
    assert finding.callsite is not None
    assert finding.callsite.lineno == _line_of("# deferred loop")


def test_objects_loaded_one_by_one_or_refreshed_by_a_new_query_are_not_peers(db: Engine) -> None:
    with detect("raise", repeated_threshold=None) as detection, Session(db) as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        # populate_existing loads each user again in a query of its own: no longer peers.
        for user in users:
            again = session.scalars(
                select(User).where(User.id == user.id).execution_options(populate_existing=True)
            ).one()
            assert again is user
            assert user.payments
        # Objects that no query loaded (added and flushed here) have no peers either.
        fresh = [User(name=f"fresh {i}") for i in range(3)]
        session.add_all(fresh)
        session.flush()
        session.expire_all()
        for user in fresh:
            assert user.payments == []
    assert detection.findings == []


def test_objects_loaded_before_any_detection_do_not_count(db: Engine) -> None:
    with Session(db) as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        with detect("raise", repeated_threshold=None) as detection:
            for user in users:
                assert user.payments
    assert detection.findings == []


def test_allow_list_exempts_relationships_and_lines(db: Engine) -> None:
    allowances: list[dict[str, Any]] = [
        {"allow": ("User.payments",)},
        {"allow": ("User.*",)},
        {"allow_callsites": (f"*/{Path(__file__).name}:{_line_of('# loop: allowed')}",)},
        {"allow_callsites": ("*:test_allow_list_exempts_relationships_and_lines",)},
    ]
    for allowance in allowances:
        with detect("raise", repeated_threshold=2, **allowance) as detection, Session(db) as s:
            for user in s.scalars(select(User)):
                assert user.payments  # loop: allowed
        # Allowed N+1 lazy loads are not reported again as repeated queries either.
        assert detection.findings == [], allowance


def test_repeated_lookups_in_a_loop_raise_when_the_block_ends(db: Engine) -> None:
    found = []
    with pytest.raises(NPlusOneError) as info, detect("raise"), Session(db) as session:
        for payment_id in range(1, 6):
            payment = session.get(Payment, payment_id)  # loop: lookups
            found.append(payment)

    assert len(found) == 5  # the loop ran to the end: raised when the block ended

    [finding] = info.value.findings
    assert isinstance(finding, Finding)
    assert (finding.kind, finding.relationship, finding.count) == ("repeated", None, 5)
    assert finding.fix == BATCH_ADVICE
    assert finding.fingerprint is not None
    assert "from np_payments where np_payments.id = ?" in finding.fingerprint
    assert str(info.value) == (
        "Repeated query: the same SELECT ran 5 times from one line\n"
        f"  at {_where('# loop: lookups')} in "
        "test_repeated_lookups_in_a_loop_raise_when_the_block_ends\n"
        f"  sql: {finding.fingerprint}\n"
        f"  fix: {BATCH_ADVICE}"
    )


def test_repeated_threshold_is_the_number_of_runs_that_counts(db: Engine) -> None:
    with detect("raise") as below, Session(db) as session:
        for payment_id in range(1, 5):
            session.get(Payment, payment_id)
    assert below.findings == []  # 4 < the default 5

    with detect("log", repeated_threshold=2) as low, Session(db) as session:
        for payment_id in range(1, 3):
            session.get(Payment, payment_id)
    assert [(f.kind, f.count) for f in low.findings] == [("repeated", 2)]

    with detect("raise", repeated_threshold=None) as off, Session(db) as session:
        for payment_id in range(1, 11):
            session.get(Payment, payment_id)
    assert off.findings == []


def test_writes_and_n_plus_one_lazy_loads_are_not_repeated_queries(db: Engine) -> None:
    with ormtune.capture() as log, detect("log", repeated_threshold=2) as detection:
        with Session(db) as session:
            user = session.get_one(User, 1)
            for amount in range(3):
                user.payments.append(Payment(amount=amount))
                session.flush()  # an INSERT per iteration, from one line
            session.commit()
        with Session(db) as session:
            for user in session.scalars(select(User)):
                assert user.payments

    assert sum(1 for event in log if event.kind is StatementKind.INSERT) == 3
    assert [(f.kind, f.relationship, f.count) for f in detection.findings] == [
        ("n+1", "User.payments", USERS)
    ]


def test_write_only_reads_and_one_by_one_lazy_loads_are_repeated(db: Engine) -> None:
    with detect("log") as detection, Session(db) as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        for user in users:
            assert session.scalars(user.notes.select()).all()  # loop: write-only
        session.expunge_all()
        for user_id in range(1, USERS + 1):
            assert session.get_one(User, user_id).payments  # loop: one by one

    write_only, lookups, one_by_one = detection.findings
    assert (write_only.kind, write_only.relationship, write_only.count) == (
        "repeated",
        None,
        USERS,
    )
    assert write_only.callsite is not None
    assert write_only.callsite.lineno == _line_of("# loop: write-only")
    # Loading the users one at a time is itself a repeated query, at the same line.
    assert (lookups.kind, lookups.relationship, lookups.count) == ("repeated", None, USERS)
    assert lookups.callsite == one_by_one.callsite
    assert (one_by_one.kind, one_by_one.relationship, one_by_one.count) == (
        "repeated",
        "User.payments",
        USERS,
    )
    assert one_by_one.fix == ".options(selectinload(User.payments))"
    assert one_by_one.callsite is not None
    assert one_by_one.callsite.lineno == _line_of("# loop: one by one")
    assert str(one_by_one).splitlines()[0] == (
        "Repeated query: User.payments lazy-loaded 5 times from one line, "
        "for User objects that were loaded one at a time"
    )
    assert str(one_by_one).splitlines()[-1] == (
        "  fix: load the User objects with one query, with .options(selectinload(User.payments))"
    )


def test_threads_are_isolated(db: Engine) -> None:
    both_loaded = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def n_plus_one() -> None:
        with Session(db) as session:
            users = session.scalars(select(User)).all()
            both_loaded.wait()
            for user in users:
                assert user.payments

    def elsewhere() -> None:
        try:
            n_plus_one()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with detect("log") as detection:
        thread = threading.Thread(target=elsewhere)
        thread.start()
        n_plus_one()
        thread.join()

    assert errors == []
    [finding] = detection.findings
    assert finding.count == USERS  # this thread's loads only, not the other thread's


def test_after_raising_the_transaction_goes_on_and_no_statement_failed(db: Engine) -> None:
    with ormtune.capture() as log, Session(db) as session:
        with detect("raise"), pytest.raises(NPlusOneError):
            users = session.scalars(select(User).order_by(User.id)).all()
            users[0].name = "renamed"
            session.flush()  # a write in the open transaction, which the error must not undo
            for user in users:
                assert user.payments
        # The lazy load was stopped before it ran: the transaction is intact (PostgreSQL
        # refuses every statement after a failed one) and the objects keep their state.
        assert len(users[1].payments) == PAYMENTS_EACH  # loads now, outside the block
        renamed = users[0].id
        assert session.scalar(select(User.name).where(User.id == renamed)) == "renamed"
        session.commit()
    assert all(event.error is None for event in log)
    with Session(db) as session:
        assert session.scalar(select(User.name).where(User.id == renamed)) == "renamed"


async def test_async_n_plus_one_raises_at_the_awaited_attribute(async_db: AsyncEngine) -> None:
    counts = []
    with pytest.raises(NPlusOneError) as info:
        async with detect("raise"), AsyncSession(async_db) as session:
            users = (await session.scalars(select(User).order_by(User.id))).all()
            for user in users:
                payments = await user.awaitable_attrs.payments  # loop: async
                counts.append(len(payments))

    assert counts == [PAYMENTS_EACH]
    [finding] = info.value.findings
    assert isinstance(finding, Finding)
    assert finding.relationship == "User.payments"
    assert finding.callsite is not None
    assert finding.callsite.filename == __file__
    assert finding.callsite.lineno == _line_of("# loop: async")
    assert finding.callsite.function == "test_async_n_plus_one_raises_at_the_awaited_attribute"


async def test_async_repeated_queries_name_the_awaiting_line(async_db: AsyncEngine) -> None:
    async with detect("log") as detection, AsyncSession(async_db) as session:
        for payment_id in range(1, 6):
            await session.get(Payment, payment_id)  # loop: async lookups

    [finding] = detection.findings
    assert (finding.kind, finding.count) == ("repeated", 5)
    assert finding.callsite is not None
    assert finding.callsite.filename == __file__
    assert finding.callsite.lineno == _line_of("# loop: async lookups")


async def test_asyncio_tasks_are_isolated(async_db: AsyncEngine) -> None:
    inside_loaded = asyncio.Event()

    async def n_plus_one(signal: asyncio.Event | None) -> int:
        async with AsyncSession(async_db) as session:
            users = (await session.scalars(select(User))).all()
            if signal is None:
                await inside_loaded.wait()
            total = 0
            for user in users:
                total += len(await user.awaitable_attrs.payments)
                if signal is not None:
                    signal.set()
            return total

    outside = asyncio.create_task(n_plus_one(None))  # started before the block: not watched
    async with detect("log") as detection:
        # gather() wraps the coroutine in a task started inside the block: it is watched.
        totals = await asyncio.gather(n_plus_one(inside_loaded), outside)

    assert list(totals) == [USERS * PAYMENTS_EACH] * 2
    [finding] = detection.findings
    assert (finding.relationship, finding.count) == ("User.payments", USERS)
