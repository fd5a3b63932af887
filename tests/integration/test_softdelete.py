"""Soft delete: for every path a row can be read by, a soft-deleted row is absent, and present
with ``include_deleted()``. SQLite, PostgreSQL and MariaDB; sync and asyncio drivers."""

from __future__ import annotations

import datetime
import pickle
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import (
    ForeignKey,
    create_engine,
    delete,
    func,
    literal,
    select,
    union,
    update,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    aliased,
    joinedload,
    mapped_column,
    selectinload,
    subqueryload,
)
from sqlalchemy.orm import Session as SyncSession
from sqlalchemy.orm.exc import ObjectDeletedError

import ormtune
from ormtune.exceptions import DuplicateKeyError
from ormtune.integrity import (
    audit_context,
    include_deleted,
    is_deleted,
    is_soft_deletable,
    restore,
    soft_delete,
)
from ormtune.repository import translating
from ormtune.testing import assert_num_queries
from tests.integrity_models import Account, Job, JobTag, Payment, Tag, User

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tests.integrity_harness import Harness

YESTERDAY = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def seed(session: Session) -> None:
    """Users 1 (live) and 2 (deleted); user 1 has payments 10 (live) and 11 (deleted) and
    job 5 tagged with tags 1 (live) and 2 (deleted); user 2 has payment 20 (live). Tag 3 is
    live, but its link to job 5 (a ``JobTag`` row) is soft-deleted."""
    live_tag, gone_tag = Tag(id=1, name="live"), Tag(id=2, name="gone", deleted_at=YESTERDAY)
    alice = User(id=1, email="alice@example.com", name="alice")
    bob = User(id=2, email="bob@example.com", name="bob", deleted_at=YESTERDAY)
    job = Job(id=5, title="job", client=alice, tags=[live_tag, gone_tag])
    alice.payments = [
        Payment(id=10, amount=1, job=job),
        Payment(id=11, amount=2, job=job, deleted_at=YESTERDAY),
    ]
    bob.payments = [Payment(id=20, amount=3)]
    session.add_all([alice, bob, Tag(id=3, name="unlinked")])
    session.flush()
    session.add(JobTag(job_id=5, tag_id=3, deleted_at=YESTERDAY))
    session.commit()
    session.expunge_all()


@pytest.fixture
async def db(integrity_db: Harness) -> Harness:
    await integrity_db.run(seed)
    return integrity_db


def ids(rows: Any) -> list[int]:
    return sorted(row if isinstance(row, int) else row.id for row in rows)


async def test_the_mixin_marks_models() -> None:
    assert is_soft_deletable(User)
    assert not is_soft_deletable(Account)
    assert not is_deleted(Account())
    assert is_deleted(User(deleted_at=YESTERDAY))


async def test_plain_selects(db: Harness) -> None:
    def check(session: Session) -> None:
        assert ids(session.scalars(select(User))) == [1]
        assert ids(session.scalars(select(User).options(include_deleted()))) == [1, 2]
        assert ids(session.scalars(select(User.id))) == [1]
        assert session.scalar(select(func.count()).select_from(Payment)) == 2
        counted = select(func.count()).select_from(Payment).options(include_deleted())
        assert session.scalar(counted) == 3

    await db.run(check)


async def test_joins(db: Harness) -> None:
    def check(session: Session) -> None:
        joined = select(User.id, Payment.id).join(User.payments)
        assert sorted(tuple(r) for r in session.execute(joined)) == [(1, 10)]
        everything = sorted(tuple(r) for r in session.execute(joined.options(include_deleted())))
        assert everything == [(1, 10), (1, 11), (2, 20)]
        outer = select(Payment.id, User.id).outerjoin(Payment.user).order_by(Payment.id)
        assert [tuple(r) for r in session.execute(outer.options(include_deleted()))] == [
            (10, 1),
            (11, 1),
            (20, 2),
        ]

    await db.run(check)


async def test_lazy_loads(db: Harness) -> None:
    def check(session: Session) -> None:
        alice = session.get(User, 1)
        assert alice is not None
        assert ids(alice.payments) == [10]
        assert ids(alice.jobs[0].tags) == [1]  # many-to-many through the secondary table
        session.expunge_all()
        alice = session.scalars(select(User).where(User.id == 1).options(include_deleted())).one()
        assert ids(alice.payments) == [10, 11]  # the opt-out travels to relationship loads
        assert ids(alice.jobs[0].tags) == [1, 2, 3]  # deleted tag, deleted link
        # a many-to-one to a deleted row reads as None
        session.expunge_all()
        payment = session.get(Payment, 20, options=[include_deleted()])
        assert payment is not None
        assert payment.user.id == 2  # opted out: the deleted user is there
        session.expunge_all()

    await db.run(check)


@pytest.mark.parametrize("loader", [selectinload, joinedload, subqueryload])
async def test_eager_loads(db: Harness, loader: Any) -> None:
    def check(session: Session) -> None:
        statement = select(User).options(
            loader(User.payments), loader(User.jobs).options(loader(Job.tags))
        )
        (alice,) = session.scalars(statement).unique()
        assert ids(alice.payments) == [10]
        assert ids(alice.jobs[0].tags) == [1]
        session.expunge_all()
        users = session.scalars(statement.options(include_deleted())).unique().all()
        assert ids(users) == [1, 2]
        alice = next(u for u in users if u.id == 1)
        assert ids(alice.payments) == [10, 11]
        assert ids(alice.jobs[0].tags) == [1, 2, 3]

    await db.run(check)


async def test_joined_many_to_one_of_a_deleted_row_is_none(db: Harness) -> None:
    def check(session: Session) -> None:
        payments = session.scalars(select(Payment).options(joinedload(Payment.user))).all()
        assert {p.id: p.user.id if p.user else None for p in payments} == {10: 1, 20: None}

    await db.run(check)


async def test_has_and_any(db: Harness) -> None:
    def check(session: Session) -> None:
        with_payment_11 = select(User.id).where(User.payments.any(Payment.id == 11))
        assert ids(session.scalars(with_payment_11)) == []
        assert ids(session.scalars(with_payment_11.options(include_deleted()))) == [1]
        of_bob = select(Payment.id).where(Payment.user.has(User.name == "bob"))
        assert ids(session.scalars(of_bob.options(include_deleted()))) == [20]
        assert ids(session.scalars(of_bob)) == []

    await db.run(check)


async def test_nested_has_and_any(db: Harness) -> None:
    def check(session: Session) -> None:
        # any() inside any(): user 1's job 5 has payment 11, which is deleted
        nested = select(User.id).where(User.jobs.any(Job.payments.any(Payment.id == 11)))
        assert ids(session.scalars(nested)) == []
        assert ids(session.scalars(nested.options(include_deleted()))) == [1]
        live = select(User.id).where(User.jobs.any(Job.payments.any(Payment.id == 10)))
        assert ids(session.scalars(live)) == [1]
        # has() inside any(): payment 20's user (bob) is deleted
        of_bob = select(Job.id).where(Job.payments.any(Payment.user.has(User.name == "bob")))
        session.execute(update(Payment).where(Payment.id == 20).values(job_id=5))
        assert ids(session.scalars(of_bob)) == []
        assert ids(session.scalars(of_bob.options(include_deleted()))) == [5]
        # three levels, and an EXISTS in the columns clause rather than the WHERE clause
        deep = User.jobs.any(Job.payments.any(Payment.user.has(User.name == "bob")))
        assert ids(session.scalars(select(User.id).where(deep))) == []
        flags = session.execute(select(User.id, deep).options(include_deleted())).all()
        assert sorted(tuple(r) for r in flags) == [(1, True), (2, False)]
        assert [tuple(r) for r in session.execute(select(User.id, deep))] == [(1, False)]
        # inside a subquery selected from
        inner = select(User).where(User.payments.any(Payment.id == 11)).subquery()
        assert ids(session.scalars(select(inner.c.id).select_from(inner))) == []
        # and in a bulk UPDATE's WHERE clause
        renamed = update(User).where(deep).values(name="renamed")
        assert session.execute(renamed).rowcount == 0  # type: ignore[attr-defined]
        session.rollback()

    await db.run(check)


async def test_a_soft_deleted_association_row_does_not_link(db: Harness) -> None:
    def check(session: Session) -> None:
        job = session.get(Job, 5)
        assert job is not None
        assert ids(job.tags) == [1]  # lazy: tag 3 is live, its link is not
        tag3 = session.get(Tag, 3)
        assert tag3 is not None
        assert tag3.jobs == []  # the other direction
        assert ids(session.scalars(select(Job.id).where(Job.tags.any(Tag.id == 3)))) == []
        assert ids(session.scalars(select(Tag.id).join_from(Job, Job.tags))) == [1]
        opted_out = select(Tag.id).join_from(Job, Job.tags).options(include_deleted())
        assert ids(session.scalars(opted_out)) == [1, 2, 3]
        linked_to_3 = select(Job.id).where(Job.tags.any(Tag.id == 3))
        assert ids(session.scalars(linked_to_3.options(include_deleted()))) == [5]
        assert ids(session.scalars(select(JobTag.tag_id))) == [1, 2]  # the class itself
        session.expunge_all()
        job = session.get(Job, 5, options=[include_deleted()])
        assert job is not None
        assert ids(job.tags) == [1, 2, 3]  # a lazy load from an opted-out object
        # restoring the link row links the tag again
        link = session.get(JobTag, (5, 3), options=[include_deleted()])
        assert link is not None
        restore(link)
        session.commit()
        session.expunge_all()
        job = session.get(Job, 5)
        assert job is not None
        assert ids(job.tags) == [1, 3]

    await db.run(check)


async def test_union_members(db: Harness) -> None:
    def check(session: Session) -> None:
        members = union(
            select(Payment).where(Payment.amount < 2), select(Payment).where(Payment.amount >= 2)
        )
        assert ids(session.scalars(select(Payment).from_statement(members))) == [10, 20]
        subquery = members.subquery()
        assert ids(session.scalars(select(aliased(Payment, subquery)))) == [10, 20]
        opted_out = select(aliased(Payment, subquery)).options(include_deleted())
        assert ids(session.scalars(opted_out)) == [10, 11, 20]

    await db.run(check)


async def test_ctes(db: Harness) -> None:
    def check(session: Session) -> None:
        cte = select(Payment).where(Payment.amount > 0).cte("positive")
        assert ids(session.scalars(select(aliased(Payment, cte)))) == [10, 20]
        ids_cte = select(Payment.id).cte("payment_ids")
        assert ids(session.scalars(select(ids_cte.c.id))) == [10, 20]
        opted_out = select(ids_cte.c.id).options(include_deleted())
        assert ids(session.scalars(opted_out)) == [10, 11, 20]

    await db.run(check)


async def test_session_get_from_the_database(db: Harness) -> None:
    def check(session: Session) -> None:
        assert session.get(User, 2) is None
        bob = session.get(User, 2, options=[include_deleted()])
        assert bob is not None
        assert bob.is_deleted

    await db.run(check)


async def test_session_get_after_a_soft_delete_in_this_session(db: Harness) -> None:
    def check(session: Session) -> None:
        alice = session.get(User, 1)
        assert alice is not None
        with audit_context(actor="admin"):
            soft_delete(alice)
        assert session.get(User, 1) is alice  # not flushed yet: still live in the database
        session.flush()
        assert alice not in session  # the flush took it out, as a flushed delete() does
        assert session.get(User, 1) is None  # so get() asks the database, which filters it
        session.commit()
        assert alice.name == "alice"  # loaded attributes stay readable
        assert alice.deleted_by == "admin"
        assert session.get(User, 1) is None
        again = session.get(User, 1, options=[include_deleted()])
        assert again is not None
        assert again is not alice
        restore(again)
        session.commit()
        assert session.get(User, 1) is again

    await db.run(check)


async def test_session_get_of_an_expired_instance_deleted_elsewhere(db: Harness) -> None:
    def check(session: Session) -> None:
        alice = session.get(User, 1)
        assert alice is not None
        # another writer (a Core statement: no ORM events) soft-deletes the row
        table: Any = User.__table__
        session.connection().execute(
            table.update().where(table.c.id == 1).values(deleted_at=YESTERDAY)
        )
        session.commit()  # expires alice
        assert session.get(User, 1) is None  # the refresh is filtered too
        assert alice not in session  # get() found the row gone and forgot the instance

    await db.run(check)


async def test_refreshing_an_instance_deleted_elsewhere_finds_it_gone(db: Harness) -> None:
    def check(session: Session) -> None:
        alice = session.get(User, 1)
        assert alice is not None
        table: Any = User.__table__
        session.connection().execute(
            table.update().where(table.c.id == 1).values(deleted_at=YESTERDAY)
        )
        session.commit()
        with pytest.raises(ObjectDeletedError):
            alice.name  # noqa: B018 - the attribute access is the test

    await db.run(check)


async def test_session_get_of_an_instance_loaded_with_include_deleted(db: Harness) -> None:
    def check(session: Session) -> None:
        bob = session.get(User, 2, options=[include_deleted()])
        assert bob is not None
        # documented: an identity-map hit has no SQL and no event; the instance is returned
        assert session.get(User, 2) is bob
        assert is_deleted(bob)

    await db.run(check)


async def test_bulk_update_and_delete_respect_it(db: Harness) -> None:
    def bulk_update(session: Session) -> None:
        changed: Any = session.execute(update(Payment).values(status="void"))
        assert changed.rowcount == 2
        statuses = session.execute(
            select(Payment.id, Payment.status).options(include_deleted()).order_by(Payment.id)
        ).all()
        assert [tuple(r) for r in statuses] == [(10, "void"), (11, "pending"), (20, "void")]
        session.rollback()
        opted_out = update(Payment).values(status="void").options(include_deleted())
        assert session.execute(opted_out).rowcount == 3  # type: ignore[attr-defined]
        session.rollback()

    await db.run(bulk_update)

    def bulk_delete(session: Session) -> None:
        session.execute(delete(Payment).where(Payment.user_id == 1))
        left = session.scalars(select(Payment.id).options(include_deleted()))
        assert ids(left) == [11, 20]  # the deleted payment was not touched
        session.rollback()
        opted_out = delete(Payment).where(Payment.user_id == 1).options(include_deleted())
        session.execute(opted_out)
        assert ids(session.scalars(select(Payment.id).options(include_deleted()))) == [20]
        session.rollback()

    await db.run(bulk_delete)


async def test_a_deleted_row_does_not_block_its_unique_key(db: Harness) -> None:
    def check(session: Session) -> None:
        session.add(User(id=3, email="bob@example.com", name="bob again"))
        with translating(User.metadata):
            session.flush()

    if db.backend == "mariadb":
        # no partial indexes: the plain unique index still holds deleted rows (documented)
        with pytest.raises(DuplicateKeyError):
            await db.run(check)
        return
    await db.run(check)
    assert await db.repo(User).count(filters={"email": "bob@example.com"}) == 1


async def test_autoload_batches_with_the_filter_and_the_opt_out(db: Harness) -> None:
    def seed_more(session: Session) -> None:
        for i in range(3, 6):
            session.add(User(id=i, email=f"u{i}@example.com", name=f"u{i}"))
            session.add(Payment(id=i * 10, amount=1, user_id=i))
            session.add(Payment(id=i * 10 + 1, amount=1, user_id=i, deleted_at=YESTERDAY))
        session.commit()
        session.expunge_all()

    await db.run(seed_more)

    def walk(session: Session, *options: Any) -> dict[int, list[int]]:
        users = session.scalars(select(User).order_by(User.id).options(*options)).all()
        return {u.id: ids(u.payments) for u in users}

    with ormtune.autoload(), assert_num_queries(2):  # users, then all their payments
        live = await db.run(walk)
    assert live == {1: [10], 3: [30], 4: [40], 5: [50]}
    await db.fresh()
    with ormtune.autoload(), assert_num_queries(2):
        everything = await db.run(lambda s: walk(s, include_deleted()))
    assert everything == {1: [10, 11], 2: [20], 3: [30, 31], 4: [40, 41], 5: [50, 51]}


async def test_objects_loaded_under_the_filter_still_pickle(db: Harness) -> None:
    def check(session: Session) -> None:
        alice = session.scalars(select(User).where(User.id == 1)).one()
        bob = session.get(User, 2, options=[include_deleted()])
        copies = pickle.loads(pickle.dumps([alice, bob]))
        assert [(u.id, u.is_deleted) for u in copies] == [(1, False), (2, True)]

    await db.run(check)


class _OtherBase(DeclarativeBase):
    """Another application's models, whose tables share names with soft-deletable ones."""


class _OtherUser(_OtherBase):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)


class _OtherPayment(_OtherBase):
    __tablename__ = "payments"  # the name of Payment's table, but no deleted_at
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))


def test_a_same_named_table_of_another_metadata_is_left_alone() -> None:
    engine = create_engine("sqlite://")
    _OtherBase.metadata.create_all(engine)
    with SyncSession(engine) as session:
        session.add_all([_OtherUser(id=1), _OtherUser(id=2), _OtherPayment(id=1, user_id=1)])
        session.commit()
        paid = (
            select(literal(1))
            .select_from(_OtherPayment)  # in the EXISTS's own FROM, as has() / any() put it
            .where(_OtherPayment.user_id == _OtherUser.id)
            .exists()
        )
        assert session.scalars(select(_OtherUser.id).where(~paid)).all() == [2]
        assert session.scalars(select(_OtherUser.id).where(paid)).all() == [1]
    engine.dispose()
