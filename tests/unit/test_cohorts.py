"""Cohorts (ormtune.querylog): which query loaded each object, held without keeping it alive.

In-memory SQLite; the batch loads built on cohorts are covered by
tests/integration/test_autoload.py.
"""

from __future__ import annotations

import gc
import weakref
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, inspect, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, composite, mapped_column

from ormtune.querylog import cohort_of, shared_cohort, track_cohorts, untrack_cohorts
from tests.models import Base, Post, User, sample_users

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine


@pytest.fixture
def memory() -> Iterator[Engine]:
    """An in-memory SQLite database with 4 users of 2 posts each, cohorts tracked."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(sample_users(4, 2))
        session.commit()
    track_cohorts()
    try:
        yield engine
    finally:
        untrack_cohorts()
        engine.dispose()


def test_one_query_is_one_cohort_in_row_order(memory: Engine) -> None:
    with Session(memory) as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        cohort = cohort_of(inspect(users[0]))
        assert cohort is not None
        assert {id(cohort_of(inspect(user))) for user in users} == {id(cohort)}
        assert [state.obj() for state in cohort.states()] == users
        other = session.scalars(select(Post)).all()
        assert cohort_of(inspect(other[0])) is not cohort


def test_a_refreshed_expired_object_keeps_its_cohort(memory: Engine) -> None:
    with Session(memory) as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        cohort = cohort_of(inspect(users[0]))
        assert cohort is not None
        session.commit()  # expires every user
        assert users[1].name  # refreshes users[1] alone, from a query of its own
        assert cohort_of(inspect(users[1])) is cohort
        assert [state.obj() for state in cohort.states()] == users


def test_populate_existing_moves_objects_to_the_new_query(memory: Engine) -> None:
    with Session(memory) as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        first = cohort_of(inspect(users[0]))
        again = session.scalars(
            select(User).where(User.id <= users[1].id).execution_options(populate_existing=True)
        ).all()
        second = cohort_of(inspect(again[0]))
        assert second is not None
        assert second is not first
        assert [state.obj() for state in second.states()] == users[:2]
        assert first is not None
        assert [state.obj() for state in first.states()] == users[2:]


def test_garbage_collected_members_are_skipped(memory: Engine) -> None:
    with Session(memory) as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        cohort = cohort_of(inspect(users[0]))
        assert cohort is not None
        kept = [users[0], users[3]]
        del users
        gc.collect()
        assert [state.obj() for state in cohort.states()] == kept
        assert len(cohort) == 4  # rows loaded, living or not


def test_a_cohort_goes_with_its_objects_without_the_cycle_collector(memory: Engine) -> None:
    with Session(memory) as session:
        users = session.scalars(select(User)).all()
        cohort = cohort_of(inspect(users[0]))
        assert cohort is not None
        gone = weakref.ref(cohort)
        state = weakref.ref(inspect(users[0]))
        del cohort
        gc.disable()
        try:
            session.expunge_all()
            del users
            # Reference counting alone frees the objects, their states and the cohort:
            # nothing of ormtune's keeps a state alive or makes a cycle through one.
            assert state() is None
            assert gone() is None
        finally:
            gc.enable()


def test_shared_cohort_joins_the_rows_of_several_queries(memory: Engine) -> None:
    with Session(memory) as session:
        options = shared_cohort()
        first = session.scalars(
            select(User).where(User.id <= 2).order_by(User.id), execution_options=options
        ).all()
        second = session.scalars(
            select(User).where(User.id > 2).order_by(User.id), execution_options=options
        ).all()
        cohort = cohort_of(inspect(first[0]))
        assert cohort is not None
        assert cohort_of(inspect(second[-1])) is cohort
        assert [state.obj() for state in cohort.states()] == [*first, *second]


class _Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __composite_values__(self) -> tuple[int, int]:
        return self.x, self.y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


class _ShapeBase(DeclarativeBase):
    pass


class _Shape(_ShapeBase):
    __tablename__ = "shapes"
    id: Mapped[int] = mapped_column(primary_key=True)
    x: Mapped[int]
    y: Mapped[int]
    # active_history: setting the composite reads its previous value first
    point: Mapped[_Point] = composite(_Point, "x", "y", active_history=True)


def test_composite_attributes_work_while_cohorts_are_tracked() -> None:
    # Reading a composite that is not built yet fires the ORM's "refresh" event with a marker
    # object in place of a QueryContext (SQLAlchemy's own test suite:
    # ActiveHistoryFlagTest.test_composite_property_flag).
    engine = create_engine("sqlite://")
    _ShapeBase.metadata.create_all(engine)
    track_cohorts()
    try:
        with Session(engine) as session:
            session.add_all([_Shape(point=_Point(1, 2)), _Shape(point=_Point(3, 4))])
            session.commit()
        with Session(engine) as session:
            shapes = session.scalars(select(_Shape).order_by(_Shape.id)).all()
            shapes[0].point = _Point(5, 6)
            session.expire(shapes[1], ["point"])
            assert [s.point for s in shapes] == [_Point(5, 6), _Point(3, 4)]
            cohort = cohort_of(inspect(shapes[0]))
            assert cohort is not None
            assert [state.obj() for state in cohort.states()] == shapes
    finally:
        untrack_cohorts()
        engine.dispose()


def test_bulk_update_by_primary_key_while_cohorts_are_tracked(memory: Engine) -> None:
    # An ORM bulk UPDATE by primary key fires the "refresh" event with no QueryContext at all
    # for the objects of the identity map it updates in place.
    with Session(memory) as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        cohort = cohort_of(inspect(users[0]))
        session.execute(update(User), [{"id": users[0].id, "name": "renamed"}])
        assert users[0].name == "renamed"
        assert cohort_of(inspect(users[0])) is cohort  # not a query's row: no new cohort
