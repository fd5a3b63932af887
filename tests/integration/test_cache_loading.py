"""Objects a cache hit rebuilds carry what a real query gives its objects: the statement's
options that propagate to loaders and the path each was loaded at, so their lazy loads and
refreshes equal those of the objects the uncached query loads. The oracle is the uncached
query itself: every test reads the same thing after a miss and after a hit."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session, defaultload, joinedload, selectinload, with_loader_criteria
from sqlalchemy.sql.cache_key import HasCacheKey

from ormtune.caching import QueryCache, cache
from ormtune.integrity import include_deleted
from ormtune.testing import assert_num_queries
from tests.integrity_models import Base, Job, Payment, User

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy import Engine
    from sqlalchemy.orm import InstanceState

    from tests.conftest import Backend

YESTERDAY = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
def db(backend: Backend) -> Iterator[Engine]:
    """Users 1 and 2; user 1 has payments 10 (live), 11 (soft-deleted) and 12 (amount 5) on
    job 5 and job 6; user 2 has payment 20."""
    engine = create_engine(backend.sync_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        alice = User(id=1, email="alice@example.com", name="alice")
        bob = User(id=2, email="bob@example.com", name="bob")
        five, six = Job(id=5, title="five", client=alice), Job(id=6, title="six", client=bob)
        alice.payments = [
            Payment(id=10, amount=1, job=five),
            Payment(id=11, amount=2, job=five, deleted_at=YESTERDAY),
            Payment(id=12, amount=5, job=six),
        ]
        bob.payments = [Payment(id=20, amount=3, job=six)]
        session.add_all([alice, bob])
        session.commit()
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


def miss_then_hit(
    qc: QueryCache, read: Callable[[Session], Any], engine: Engine, *, learnt: bool = False
) -> None:
    """``read`` gives the same answer, with the same queries, after a miss and after a hit
    (the statement's first run teaches the cache its shape, unless ``learnt``)."""
    qc.reset_stats()
    answers = []
    misses = 1 if learnt else 2
    for _ in range(misses + 1):
        with Session(engine) as session:
            answers.append(read(session))
    stats = qc.stats["(unnamed)"]
    assert (stats.hits, stats.misses) == (1, misses)
    assert all(answer == answers[0] for answer in answers)


def payment_ids(session: Session, statement: Any) -> list[int]:
    users = session.scalars(statement).all()
    return [p.id for user in users for p in user.payments]


def test_include_deleted_reaches_lazy_loads_after_a_hit(db: Engine, qc: QueryCache) -> None:
    statement = select(User).where(User.id == 1).options(include_deleted(), cache())
    miss_then_hit(qc, lambda session: payment_ids(session, statement), db)
    with Session(db) as session:
        assert payment_ids(session, statement) == [10, 11, 12]


def test_loader_criteria_reach_lazy_loads_after_a_hit(db: Engine, qc: QueryCache) -> None:
    def read(session: Session, floor: int) -> list[int]:
        statement = (
            select(User)
            .order_by(User.id)
            .options(with_loader_criteria(Payment, Payment.amount > floor), cache())
        )
        return payment_ids(session, statement)

    miss_then_hit(qc, lambda session: read(session, 1), db)
    with Session(db) as session:
        assert read(session, 1) == [12, 20]
    # Another value of the criterion is another entry, and its lazy loads use that value.
    miss_then_hit(qc, lambda session: read(session, 4), db, learnt=True)
    with Session(db) as session:
        assert read(session, 4) == [12]


def test_path_options_reach_lazy_loads_after_a_hit(db: Engine, qc: QueryCache) -> None:
    """``defaultload(User.payments).joinedload(Payment.job)``: the lazy load of the payments
    joins their jobs, so reading the jobs afterwards costs no query, after a hit too."""

    def read(session: Session) -> list[tuple[int, str]]:
        statement = (
            select(User)
            .where(User.id == 1)
            .options(defaultload(User.payments).joinedload(Payment.job), cache())
        )
        user = session.scalars(statement).one()
        with assert_num_queries(1):
            return [(p.id, p.job.title if p.job else "") for p in user.payments]

    miss_then_hit(qc, read, db)


def _described(state: InstanceState[Any]) -> tuple[Any, ...]:
    options = tuple(
        (type(opt).__name__, opt._generate_cache_key() if isinstance(opt, HasCacheKey) else id(opt))
        for opt in state.load_options
    )
    return (state.load_path.path, options)


@pytest.mark.parametrize("eager", [selectinload, joinedload])
def test_every_object_gets_the_options_and_path_of_the_uncached_query(
    db: Engine, qc: QueryCache, eager: Any
) -> None:
    """Eagerly loaded objects get their nested path (``User -> payments -> Payment``)."""
    options = (include_deleted(), cache())  # the same objects each time: compared by identity

    def read(session: Session) -> list[tuple[Any, ...]]:
        statement = (
            select(User)
            .order_by(User.id)
            .options(options[0], eager(User.payments).joinedload(Payment.job), options[1])
        )
        users = session.scalars(statement).unique().all()
        objects: list[Any] = [*users, *(p for u in users for p in u.payments)]
        objects += [p.job for u in users for p in u.payments]
        return [(type(obj).__name__, obj.id, _described(inspect(obj))) for obj in objects]

    miss_then_hit(qc, read, db)
    with Session(db) as session:
        described = read(session)
    paths = {(kind, len(path)) for kind, _, (path, _) in described}
    assert paths == {("User", 1), ("Payment", 3), ("Job", 5)}


def test_expired_attributes_refresh_with_the_statements_options(db: Engine, qc: QueryCache) -> None:
    """A refresh of an expired object replays its load options: after a hit as after a miss,
    the refreshed collection includes the soft-deleted payment."""

    def read(session: Session) -> list[int]:
        statement = select(User).where(User.id == 1).options(include_deleted(), cache())
        user = session.scalars(statement).one()
        session.expire(user, ["payments"])
        return [p.id for p in user.payments]

    miss_then_hit(qc, read, db)
