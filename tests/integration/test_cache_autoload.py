"""Objects of a cached statement have their autoload batches read through the cache too (same
ttl and name), so a warm request that loops over relationships runs no query, and a write to
a child row invalidates exactly the batch entries that held that parent's children. The
control is the same request without ``cache()``: the same object graph, every time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

import ormtune
from ormtune.caching import QueryCache, cache
from ormtune.testing import assert_num_queries
from tests.integrity_models import Base, Job, Payment, Tag, User

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine

    from tests.conftest import Backend

USERS = 3
NAME = "users:list"


@pytest.fixture
def db(backend: Backend) -> Iterator[Engine]:
    """Users 1-3, each with jobs (2 per user), each job with 2 payments of its client; job
    tags on the first job of each user."""
    engine = create_engine(backend.sync_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        payment_id = 100
        for user_id in range(1, USERS + 1):
            user = User(id=user_id, email=f"u{user_id}@example.com", name=f"user {user_id}")
            for job_number in range(2):
                job = Job(id=user_id * 10 + job_number, title=f"job {user_id}.{job_number}")
                job.client = user
                if job_number == 0:
                    job.tags = [Tag(id=user_id, name=f"tag {user_id}")]
                for _ in range(2):
                    payment_id += 1
                    job.payments.append(Payment(id=payment_id, amount=payment_id, user=user))
            session.add(user)
        session.commit()
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


def graph(session: Session, cached: bool, ids: list[int] | None = None) -> list[Any]:
    """What a route returns: users, their jobs, the jobs' payments (two levels of loops)."""
    statement = select(User).order_by(User.id)
    if ids is not None:
        statement = statement.where(User.id.in_(ids))
    if cached:
        statement = statement.options(cache(ttl=60, name=NAME))
    return [
        (
            user.id,
            user.name,
            [(job.id, job.title, [(p.id, p.amount) for p in job.payments]) for job in user.jobs],
        )
        for user in session.scalars(statement)
    ]


def request(engine: Engine, queries: int, cached: bool, ids: list[int] | None = None) -> Any:
    with Session(engine) as session, assert_num_queries(queries):
        return graph(session, cached, ids)


@pytest.fixture
def autoloading() -> Iterator[None]:
    with ormtune.autoload():
        yield


def test_a_warm_request_runs_no_query(db: Engine, qc: QueryCache, autoloading: None) -> None:
    # Control: users, then one batch per level (jobs, payments), on every request.
    control = [request(db, 3, cached=False) for _ in range(3)]
    assert qc.stats.by_name == {}
    # Treatment: the first request teaches the cache the three statements, the second fills
    # their entries, the third reads them all.
    treatment = [request(db, 3, cached=True), request(db, 3, cached=True)]
    treatment.append(request(db, 0, cached=True))
    assert treatment == control
    jobs = [(10, "job 1.0", [(101, 101), (102, 102)]), (11, "job 1.1", [(103, 103), (104, 104)])]
    assert treatment[0][0] == (1, "user 1", jobs)
    stats = qc.stats[NAME]
    assert (stats.hits, stats.misses) == (3, 6)


def test_a_write_to_a_child_row_invalidates_only_the_batches_that_held_it(
    db: Engine, qc: QueryCache
) -> None:
    """With one parent per batch, each user's jobs and each job's payments are entries of
    their own: a write to one payment is read by the next request, which reloads that job's
    payments only."""
    with ormtune.autoload(chunk_size=1):
        # The first run of each statement teaches the cache its shape; chunks after the
        # first are other parameters of a known shape, so they fill at once.
        before = request(db, 1 + USERS + 2 * USERS, cached=True)
        assert request(db, 3, cached=True) == before
        assert request(db, 0, cached=True) == before
        with Session(db) as session:  # a flush: its tokens name the rows' job_id
            payment = session.get(Payment, 103)
            assert payment is not None
            payment.amount = 7
            session.commit()
        after = request(db, 1, cached=True)
        assert after[0][2][1] == (11, "job 1.1", [(103, 7), (104, 104)])
        assert after[1:] == before[1:]
        assert request(db, 0, cached=True) == after
        with Session(db) as session:  # the uncached query agrees
            assert graph(session, cached=False) == after


def test_moving_a_child_to_another_parent_invalidates_both(
    db: Engine, qc: QueryCache, autoloading: None
) -> None:
    warm = [request(db, 3, cached=True, ids=[1, 2]) for _ in range(2)][-1]
    request(db, 3, cached=True, ids=[2, 3])
    assert request(db, 0, cached=True, ids=[1, 2]) == warm
    with Session(db) as session:
        payment = session.get(Payment, 101)
        assert payment is not None
        payment.job_id = 31
        session.commit()
    with Session(db) as session:
        expected = graph(session, cached=False, ids=[1, 2])
    assert (101, 101) not in expected[0][2][0][2]
    assert request(db, 1, cached=True, ids=[1, 2]) == expected
    with Session(db) as session:
        expected = graph(session, cached=False, ids=[2, 3])
    assert (101, 101) in expected[1][2][1][2]
    assert request(db, 1, cached=True, ids=[2, 3]) == expected


def test_batches_of_objects_from_uncached_statements_stay_uncached(
    db: Engine, qc: QueryCache, autoloading: None
) -> None:
    for _ in range(3):
        request(db, 3, cached=False)
    assert qc.stats.by_name == {}


def payments_with_parents(engine: Engine, queries: int, cached: bool) -> list[Any]:
    """Payments and their many-to-one parents (job, then the job's client, and the payer)."""
    with Session(engine) as session, assert_num_queries(queries):
        statement = select(Payment).order_by(Payment.id)
        if cached:
            statement = statement.options(cache(name=NAME))
        return [
            (p.id, p.job.title if p.job else None, p.job.client.name if p.job else None, p.user.id)
            for p in session.scalars(statement)
        ]


def test_many_to_one_batches_are_cached_and_invalidated_by_key(
    db: Engine, qc: QueryCache, autoloading: None
) -> None:
    """A many-to-one batch selects the targets by key from their table; ``p.user`` finds its
    users in the identity map (loaded by ``job.client``), so costs nothing."""
    control = payments_with_parents(db, 3, cached=False)
    assert payments_with_parents(db, 3, cached=True) == control
    assert payments_with_parents(db, 3, cached=True) == control
    assert payments_with_parents(db, 0, cached=True) == control
    with Session(db) as session:
        job = session.get(Job, 21)
        assert job is not None
        job.title = "renamed"
        session.commit()
    after = payments_with_parents(db, 1, cached=True)  # the jobs batch: it held job 21
    assert after == payments_with_parents(db, 3, cached=False)
    assert [row for row in after if row[1] == "renamed"] == [
        (107, "renamed", "user 2", 2),
        (108, "renamed", "user 2", 2),
    ]


def test_many_to_many_batches_re_select_the_parents_and_are_never_stored(
    db: Engine, qc: QueryCache, autoloading: None
) -> None:
    """``Job.tags`` is batched by re-selecting the jobs, which are already in the session:
    such a batch runs, uncached and unrecorded, on every request."""

    def tags(queries: int) -> list[Any]:
        with Session(db) as session, assert_num_queries(queries):
            statement = select(Job).order_by(Job.id).options(cache(name=NAME))
            return [(job.id, [tag.name for tag in job.tags]) for job in session.scalars(statement)]

    expected = tags(3)
    assert tags(3) == expected
    assert tags(2) == expected
    stats = qc.stats[NAME]
    assert (stats.hits, stats.misses, stats.bypasses, stats.rejected) == (1, 2, {}, {})


def test_lazy_loads_of_single_objects_and_refreshes_stay_uncached(
    db: Engine, qc: QueryCache
) -> None:
    def read(queries: int) -> list[Any]:
        with Session(db) as session, assert_num_queries(queries):
            statement = select(User).where(User.id == 1).options(cache(name=NAME))
            user = session.scalars(statement).one()
            jobs = [job.id for job in user.jobs]
            session.expire(user, ["name"])
            return [user.name, jobs]

    expected = read(3)
    assert read(3) == expected
    assert read(2) == expected
    stats = qc.stats[NAME]
    assert (stats.hits, stats.misses, stats.bypasses, stats.rejected) == (1, 2, {}, {})


def test_autoload_reads_a_single_cached_objects_relationships_through_the_cache(
    db: Engine, qc: QueryCache, autoloading: None
) -> None:
    """With nothing to batch it with (one user's jobs, one job's client), autoload still makes
    the lazy load of a cached object a top-level statement, which the cache then serves; a
    write to a row it read is read by the next request. The control (uncached objects) keeps
    SQLAlchemy's own lazy loads: four statements every time, nothing asked of the cache."""

    def read(queries: int, cached: bool) -> list[Any]:
        options = [cache(name=NAME)] if cached else []
        with Session(db) as session, assert_num_queries(queries):
            user = session.scalars(select(User).where(User.id == 1).options(*options)).one()
            job = session.scalars(select(Job).where(Job.id == 21).options(*options)).one()
            return [[(j.id, j.title) for j in user.jobs], job.client.name]

    control = [read(4, cached=False) for _ in range(2)]
    assert qc.stats.by_name == {}
    assert control[0] == [[(10, "job 1.0"), (11, "job 1.1")], "user 2"]
    # learn, fill, hit: the two statements and the two lone loads alike
    expected = control[0]
    assert [read(4, cached=True), read(4, cached=True), read(0, cached=True)] == [expected] * 3
    with Session(db) as session:
        job = session.get(Job, 11)
        assert job is not None
        job.title = "renamed"
        session.commit()
    after = read(1, cached=True)  # user 1's jobs, again from the database
    assert after == [[(10, "job 1.0"), (11, "renamed")], "user 2"]
    assert read(0, cached=True) == after == read(4, cached=False)


async def test_async_session_warm_request_runs_no_query(
    db: Engine, backend: Backend, qc: QueryCache, autoloading: None
) -> None:
    """Under asyncio (the loops run in ``run_sync``, where lazy loads may run) a warm request
    runs no query either."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(backend.async_url)

    async def read(cached: bool) -> list[Any]:
        async with AsyncSession(engine) as session:
            return await session.run_sync(graph, cached)

    try:
        control = await read(cached=False)
        assert await read(cached=True) == control
        assert await read(cached=True) == control
        async with ormtune.capture() as log:
            assert await read(cached=True) == control
        assert log.count == 0
    finally:
        await engine.dispose()
