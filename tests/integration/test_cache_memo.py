"""What a hit remembers between executions (entry keys and tokens per parameter values,
decoded entries per stored bytes) never serves another statement's or another parameter's
rows, never misses a dependency learnt later, and never shares a mutable value between hits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import ForeignKey, String, bindparam, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ormtune.caching import QueryCache, cache
from ormtune.testing import assert_max_queries
from tests.cache_models import Employee, Payment, Tag

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine

    from tests.conftest import Backend


class MemoBase(DeclarativeBase):
    pass


class Animal(MemoBase):
    __tablename__ = "m_animals"

    id: Mapped[int] = mapped_column(primary_key=True)
    zoo: Mapped[int]
    name: Mapped[str] = mapped_column(String(30))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}


class Dog(Animal):
    __tablename__ = "m_dogs"

    id: Mapped[int] = mapped_column(ForeignKey("m_animals.id"), primary_key=True)
    bark: Mapped[str] = mapped_column(String(30))
    # Dogs' own columns are loaded by a second query, only when the result holds a dog.
    __mapper_args__ = {"polymorphic_identity": "dog", "polymorphic_load": "selectin"}


@pytest.fixture
def db(cache_db: Engine) -> Engine:
    return cache_db


@pytest.fixture
def zoo(backend: Backend) -> Iterator[Engine]:
    from sqlalchemy import create_engine

    engine = create_engine(backend.sync_url)
    MemoBase.metadata.drop_all(engine)
    MemoBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Animal(id=1, zoo=1, name="cat"))
        session.commit()
    yield engine
    MemoBase.metadata.drop_all(engine)
    engine.dispose()


def rows(engine: Engine, stmt: Any) -> list[Any]:
    with Session(engine) as session:
        return [_plain(row) for row in session.execute(stmt)]


def _plain(row: Any) -> tuple[Any, ...]:
    return tuple(
        (type(v).__name__, v.id, getattr(v, "label", None)) if hasattr(v, "id") else v for v in row
    )


def test_alternating_parameters_each_get_their_own_rows(db: Engine, qc: QueryCache) -> None:
    def tags(tag_id: int) -> list[Any]:
        return rows(db, select(Tag).where(Tag.id == tag_id).options(cache()))

    expected = {i: rows(db, select(Tag).where(Tag.id == i)) for i in (1, 2)}
    for i in (1, 2):
        tags(i)
        tags(i)
    with assert_max_queries(0):
        for i in (1, 2, 2, 1, 2, 1, 1):
            assert tags(i) == expected[i]
    stats = qc.stats.overall
    assert (stats.misses, stats.hits) == (3, 8)  # learn, fill 1, fill 2; then hits only


def test_statements_with_equal_parameters_never_share_an_entry(db: Engine, qc: QueryCache) -> None:
    statements = [
        select(Tag).where(Tag.id == 1),
        select(Tag).where(Tag.id != 1),
        select(Tag.label).where(Tag.id == 1),
        select(Employee).where(Employee.id == 1),
        select(Tag).where(Tag.id == 1).options(cache(name="named")),
    ]
    expected = [rows(db, stmt) for stmt in statements]
    cached = [stmt.options(cache()) if i < 4 else stmt for i, stmt in enumerate(statements)]
    for _ in range(2):
        for stmt in cached:
            rows(db, stmt)
    with assert_max_queries(0):
        for _ in range(2):
            assert [rows(db, stmt) for stmt in cached] == expected


def test_values_equal_across_types_are_different_keys(db: Engine, qc: QueryCache) -> None:
    # 1 == True and hash(1) == hash(True): a memo keyed by the values alone would give both
    # one key, and True would be served the entry 1 filled.
    stmt: Any = select(Tag.label, bindparam("v")).where(Tag.id == 1).options(cache())

    def read(value: Any) -> list[Any]:
        with Session(db) as session:
            return [row.label for row in session.execute(stmt, {"v": value})]

    read(1)  # learns the statement
    for value in (1, True, "1", 1, True, "1"):
        assert read(value) == ["rent"]
    stats = qc.stats.overall
    assert (stats.misses, stats.hits) == (4, 3)  # one fill per value, then one hit each


def test_a_table_learnt_after_the_key_was_remembered_is_a_dependency(
    zoo: Engine, qc: QueryCache
) -> None:
    def read() -> list[tuple[str, str | None]]:
        stmt = select(Animal).where(Animal.zoo == 1).order_by(Animal.id).options(cache())
        with Session(zoo) as session:
            return [(a.name, a.bark if isinstance(a, Dog) else None) for a in session.scalars(stmt)]

    for _ in range(2):
        read()
    with assert_max_queries(0):
        assert read() == [("cat", None)]  # remembered: depends on m_animals only
    with Session(zoo) as session:
        session.add(Dog(id=2, zoo=1, name="rex", bark="woof"))
        session.commit()
    assert read() == [("cat", None), ("rex", "woof")]  # reads m_dogs: not stored, learnt
    read()  # stored, now depending on m_dogs too
    with assert_max_queries(0):
        assert read() == [("cat", None), ("rex", "woof")]
    with Session(zoo) as session:
        session.execute(text("UPDATE m_dogs SET bark = 'WOOF'"))  # m_dogs alone
        session.commit()
    assert read() == [("cat", None), ("rex", "WOOF")]


def test_objects_of_two_hits_share_no_state(db: Engine, qc: QueryCache) -> None:
    stmt = select(Tag).where(Tag.id == 1).options(cache())
    for _ in range(2):
        rows(db, stmt)
    with Session(db, autoflush=False) as first, Session(db) as second:
        with assert_max_queries(0):
            (mine,) = first.scalars(stmt).all()
            mine.label = "changed, not flushed"
            (theirs,) = second.scalars(stmt).all()
        assert theirs is not mine
        assert theirs.label == "rent"
        assert first.is_modified(mine)
        assert not second.is_modified(theirs)


def test_a_remembered_entry_returns_session_objects_as_they_are(db: Engine, qc: QueryCache) -> None:
    stmt = select(Tag).order_by(Tag.id).options(cache())
    for _ in range(3):  # learn, fill, and a first hit that decodes the entry
        rows(db, stmt)
    with Session(db, autoflush=False) as session:
        mine = session.get(Tag, 2)
        assert mine is not None
        mine.label = "not flushed"
        with assert_max_queries(0):
            got = session.scalars(stmt).all()
        assert got[1] is mine
        assert [t.label for t in got] == ["rent", "not flushed"]


def test_mutable_values_are_never_shared_between_hits(db: Engine, qc: QueryCache) -> None:
    stmt = select(Payment).where(Payment.account_id == 1).order_by(Payment.id).options(cache())
    for _ in range(2):
        with Session(db) as session:
            session.scalars(stmt).all()
    with Session(db) as first, Session(db) as second:
        with assert_max_queries(0):
            mine = first.scalars(stmt).first()
            assert mine is not None
            assert mine.meta is not None
            mine.meta["n"] = "changed in place"
            theirs = second.scalars(stmt).first()
        assert theirs is not None
        assert theirs.meta is not None
        assert theirs.meta is not mine.meta
        assert theirs.meta["n"] == 0
