"""autoload's direct many-to-one batch (targets selected by key from their own table) gives
what the plain lazy loads give: control (plain lazy loading) against treatment (autoload),
whole graphs compared, exact query counts. Null foreign keys, soft-deleted targets, targets
already in the identity map (fresh or expired), and the soft-delete filter."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

import ormtune
from ormtune.integrity import include_deleted
from ormtune.testing import assert_num_queries
from tests.integrity_models import Base, Job, Payment, User

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy import Engine

    from tests.conftest import Backend

YESTERDAY = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
def db(backend: Backend) -> Iterator[Engine]:
    """Payments 1-6: on jobs 10 (live), 11 (soft-deleted), 12 (live) and none; users 1-2."""
    engine = create_engine(backend.sync_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        alice = User(id=1, email="a@example.com", name="alice")
        bob = User(id=2, email="b@example.com", name="bob")
        jobs = [
            Job(id=10, title="ten", client=alice),
            Job(id=11, title="eleven", client=bob, deleted_at=YESTERDAY),
            Job(id=12, title="twelve", client=bob),
        ]
        session.add_all([alice, bob, *jobs])
        for payment_id, job_id in [(1, 10), (2, 11), (3, 12), (4, None), (5, 10), (6, 11)]:
            user = alice if payment_id % 2 else bob
            session.add(Payment(id=payment_id, amount=payment_id, user=user, job_id=job_id))
        session.commit()
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


def both(engine: Engine, walk: Callable[[Session], list[Any]], plain: int, auto: int) -> None:
    with Session(engine) as session, assert_num_queries(plain):
        control = walk(session)
    with ormtune.autoload(), Session(engine) as session, assert_num_queries(auto):
        assert walk(session) == control


def jobs_of(statement: Any) -> Callable[[Session], list[Any]]:
    def walk(session: Session) -> list[Any]:
        return [
            (p.id, None if p.job is None else (p.job.id, p.job.title))
            for p in session.scalars(statement)
        ]

    return walk


def test_null_keys_and_soft_deleted_targets(db: Engine) -> None:
    # plain: payments, then jobs 10 and 12 (11 is filtered out: asked for on each of its
    # payments, as it is never in the identity map); autoload: payments, one batch.
    walk = jobs_of(select(Payment).order_by(Payment.id))
    both(db, walk, 1 + 4, 2)


def test_include_deleted_reaches_the_batch(db: Engine) -> None:
    walk = jobs_of(select(Payment).order_by(Payment.id).options(include_deleted()))
    both(db, walk, 1 + 3, 2)


def test_targets_in_the_identity_map_are_taken_from_it(db: Engine) -> None:
    def walk(session: Session) -> list[Any]:
        ten = session.get(Job, 10)
        twelve = session.get(Job, 12)
        assert ten is not None
        assert twelve is not None
        session.expire(twelve)  # expired: selected again, as a lazy load would refresh it
        return jobs_of(select(Payment).order_by(Payment.id))(session)

    # plain: 2 gets, payments, job 12's refresh, job 11 twice; autoload: 2 gets, payments,
    # one batch for jobs 11 and 12.
    both(db, walk, 2 + 1 + 1 + 2, 2 + 1 + 1)
