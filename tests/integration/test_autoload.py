"""autoload(): control (plain lazy loading) against treatment (autoload), same code, same data.

Every case walks an object graph the naive way and compares the *whole* result, including which
Python objects are shared, with exact query counts for both runs, at 1, 10 and 1,200 parents
(1,200 exercises chunking by 500) on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import gc
import math
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, lazyload, relationship, selectinload

import ormtune
from ormtune.batchload import autoload, autoload_option, autoloading
from tests.batchload_models import (
    Author,
    Base,
    Book,
    Car,
    Employee,
    Manager,
    Node,
    Order,
    Vehicle,
    insert_all,
)
from tests.conftest import BACKENDS, Backend

SIZES = [1, 10, 1200]


@pytest.fixture(scope="module", params=BACKENDS)
def module_backend(request: pytest.FixtureRequest) -> Backend:
    result: Backend = request.getfixturevalue(f"{request.param}_backend")
    return result


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}-parents")
def seeded(module_backend: Backend, request: pytest.FixtureRequest) -> Iterator[tuple[Engine, int]]:
    """An engine on a database holding ``n`` parents of every shape (read-only for tests)."""
    engine = create_engine(module_backend.sync_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        insert_all(connection, request.param)
    yield engine, request.param
    Base.metadata.drop_all(engine)
    engine.dispose()


Walk = Callable[[Session], tuple[Any, list[object]]]


def run(engine: Engine, walk: Walk, *, autoloaded: bool) -> tuple[Any, list[int], int]:
    """Walk in a fresh session: (data, object identities as first-seen indexes, query count)."""
    with ormtune.capture(engine) as log, Session(engine) as session:
        if autoloaded:
            with autoload():
                data, objects = walk(session)
        else:
            data, objects = walk(session)
        seen: dict[int, int] = {}
        identities = [seen.setdefault(id(obj), len(seen)) for obj in objects]
    return data, identities, log.count


def compare(engine: Engine, walk: Walk) -> tuple[int, int]:
    """Run control and treatment; assert the graphs are equal; return both query counts."""
    control_data, control_ids, control_count = run(engine, walk, autoloaded=False)
    treated_data, treated_ids, treated_count = run(engine, walk, autoloaded=True)
    assert treated_data == control_data
    assert treated_ids == control_ids
    return control_count, treated_count


def chunks(keys: int) -> int:
    return math.ceil(keys / 500)


def batched(cohort: int, keys: int | None = None, *, reselect: bool = False) -> int:
    """Queries autoload spends on one relationship of a cohort: none beyond the plain lazy load
    for a cohort of one; otherwise one query per 500 keys, plus one re-select of the parents
    where the other side cannot be selected directly by key (many-to-many, parents with
    expired attributes)."""
    if cohort == 1:
        return 1
    return int(reselect) + chunks(cohort if keys is None else keys)


# --- one-to-many ------------------------------------------------------------------------------


def walk_authors_books(session: Session) -> tuple[Any, list[object]]:
    objects: list[object] = []
    data = []
    for author in session.scalars(select(Author).order_by(Author.id)):
        books = author.books  # newest first (order_by Book.id.desc())
        objects += [author, *books]
        data.append((author.id, author.name, [(b.id, b.title) for b in books]))
    return data, objects


def test_one_to_many(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    assert compare(engine, walk_authors_books) == (1 + n, 1 + batched(n))


# --- many-to-one ------------------------------------------------------------------------------


def authors_with_books(n: int) -> int:
    return n - n // 4


def walk_books_author(session: Session) -> tuple[Any, list[object]]:
    objects: list[object] = []
    data = []
    for book in session.scalars(select(Book).order_by(Book.id)):
        objects += [book, book.author]
        data.append((book.id, book.author.id, book.author.name))
    return data, objects


def test_many_to_one(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    targets = authors_with_books(n)
    # plain: one query per distinct author; the rest come from the identity map
    expected_plain = 1 + targets
    # autoload: a cohort whose members all point at one target is left to the plain load;
    # otherwise the targets are selected by key from their own table (no re-select)
    expected_auto = 1 + (1 if targets == 1 else chunks(targets))
    assert compare(engine, walk_books_author) == (expected_plain, expected_auto)


def test_many_to_one_targets_in_the_identity_map_cost_nothing(seeded: tuple[Engine, int]) -> None:
    engine, _ = seeded

    def walk(session: Session) -> tuple[Any, list[object]]:
        authors = session.scalars(select(Author)).all()  # every target already loaded
        data, objects = walk_books_author(session)
        return data, [*objects, *authors]

    assert compare(engine, walk) == (2, 2)


# --- many-to-many through a secondary table ---------------------------------------------------


def walk_books_tags(session: Session) -> tuple[Any, list[object]]:
    objects: list[object] = []
    data = []
    for book in session.scalars(select(Book).order_by(Book.id)):
        objects += [book, *book.tags]
        data.append((book.id, [(tag.id, tag.label) for tag in book.tags]))
    return data, objects


def test_many_to_many_shares_target_objects(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    books = 3 * authors_with_books(n)
    control, treated = compare(engine, walk_books_tags)  # identities compared: tags are shared
    assert (control, treated) == (1 + books, 1 + batched(books, reselect=True))


# --- self-referential tree, level by level ----------------------------------------------------


def walk_tree(session: Session) -> tuple[Any, list[object]]:
    objects: list[object] = []
    data = []
    roots = session.scalars(select(Node).where(Node.parent_id.is_(None)).order_by(Node.id))
    for root in roots:
        children = root.children
        grandchildren = [(child.id, [g.id for g in child.children]) for child in children]
        objects += [root, *children, *(g for child in children for g in child.children)]
        data.append((root.id, grandchildren))
    return data, objects


def test_self_referential_tree_level_by_level(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    level_one = batched(n)
    level_two = batched(2 * n)  # the 2n children, however many queries loaded them, are peers
    assert compare(engine, walk_tree) == (1 + n + 2 * n, 1 + level_one + level_two)


# --- inheritance: only some cohort members have the relationship ------------------------------


def walk_employees(session: Session) -> tuple[Any, list[object]]:
    objects: list[object] = []
    data: list[tuple[int, tuple[str, ...]]] = []
    for employee in session.scalars(select(Employee).order_by(Employee.id)):
        objects.append(employee)
        if isinstance(employee, Manager):
            objects += employee.reports
            data.append((employee.id, tuple(r.name for r in employee.reports)))
        else:
            data.append((employee.id, (employee.kind,)))
    return data, objects


def test_joined_inheritance(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    # Managers loaded as Employees have their own table's columns unloaded (expired): the
    # batch re-selects the parents, which loads those for every manager at once.
    assert compare(engine, walk_employees) == (1 + n, 1 + batched(n, reselect=True))


def walk_vehicles(session: Session) -> tuple[Any, list[object]]:
    objects: list[object] = []
    data = []
    for vehicle in session.scalars(select(Vehicle).order_by(Vehicle.id)):
        objects.append(vehicle)
        parts = vehicle.parts if isinstance(vehicle, Car) else []
        objects += parts
        data.append((vehicle.id, vehicle.kind, [p.id for p in parts]))
    return data, objects


def test_single_table_inheritance(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    assert compare(engine, walk_vehicles) == (1 + n, 1 + batched(n))


# --- composite primary keys -------------------------------------------------------------------


def walk_orders(session: Session) -> tuple[Any, list[object]]:
    objects: list[object] = []
    data = []
    for order in session.scalars(select(Order).order_by(Order.number)):
        objects += [order, *order.lines]
        data.append(((order.region, order.number), [line.id for line in order.lines]))
    return data, objects


def test_composite_primary_key(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    assert compare(engine, walk_orders) == (1 + n, 1 + batched(n))


# --- session states ---------------------------------------------------------------------------


def test_objects_expired_by_commit(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded

    def walk(session: Session) -> tuple[Any, list[object]]:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        session.commit()  # expires every attribute of every author
        data = [(a.id, [b.id for b in a.books], a.name) for a in authors]
        return data, [*authors, *(b for a in authors for b in a.books)]

    # plain: per author, a refresh of its expired columns, then its books.
    # autoload: the first author's refresh, then one batch whose re-select also refreshes
    # every other author (it fills in expired columns from the rows it reads anyway).
    treated = 2 if n == 1 else 1 + batched(n, reselect=True)
    assert compare(engine, walk) == (1 + 2 * n, 1 + treated)


def test_attributes_the_application_set_are_never_overwritten(
    seeded: tuple[Engine, int],
) -> None:
    engine, _ = seeded

    def walk(session: Session) -> tuple[Any, list[object]]:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        replacement = Book(id=999_999, title="set by the application")
        with session.no_autoflush:  # the old books, orphaned by the assignment, stay unflushed
            authors[-1].books = [replacement]  # set by the application: a batch leaves it alone
            data = [(a.id, [b.title for b in a.books]) for a in authors]
        session.rollback()
        return data, [replacement]

    compare(engine, walk)


def test_autoflush_sees_pending_changes(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded

    def walk(session: Session) -> tuple[Any, list[object]]:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        moved = session.get(Book, 10)  # author 1's first book
        assert moved is not None
        moved.author_id = n  # to the last author, not flushed: the first lazy load autoflushes
        pending = Book(id=999_998, title="pending", author_id=n)
        session.add(pending)
        data = [(a.id, sorted(b.id for b in a.books)) for a in authors]
        session.rollback()
        return data, []

    compare(engine, walk)


@pytest.mark.xfail(
    reason="known gap: a batch reads every peer's relationship at the first lazy load, so a row "
    "the loop writes later reaches plain lazy loading's later autoflush only (README)",
    strict=True,
)
def test_a_row_written_later_in_the_loop(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    if n == 1:
        pytest.skip("one parent: no peers, nothing batched")

    def walk(session: Session) -> tuple[Any, list[object]]:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        data = []
        for i, author in enumerate(authors):
            data.append((author.id, sorted(b.id for b in author.books)))
            if i == 0:  # for the last author, whose books the loop has not read yet
                session.add(Book(id=999_997, title="added", author_id=authors[-1].id))
        session.rollback()
        return data, []

    compare(engine, walk)


def test_garbage_collected_members_are_not_loaded(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    with Session(engine) as session, autoload():
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        kept = authors[:3]
        del authors
        gc.collect()
        with ormtune.capture(engine, parameters=True) as log:
            assert [len(a.books) for a in kept] == [3] * len(kept)
    if n == 1:  # the only member left: a plain lazy load
        assert [e.tables for e in log] == [("bl_books",)]
        return
    batch = log[0]
    assert batch.tables == ("bl_books",)
    assert len(batch.parameters) == 3  # only the three living authors
    assert log.count == 1


# --- left alone -------------------------------------------------------------------------------


def test_relationships_already_eager_loaded(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded

    def walk(session: Session) -> tuple[Any, list[object]]:
        query = select(Author).order_by(Author.id).options(selectinload(Author.books))
        authors = session.scalars(query).all()
        return [(a.id, [b.id for b in a.books]) for a in authors], list(authors)

    assert compare(engine, walk) == (1 + chunks(n), 1 + chunks(n))


def test_loads_with_explicit_loader_options_are_left_alone(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded

    def walk(session: Session) -> tuple[Any, list[object]]:
        query = select(Author).order_by(Author.id).options(lazyload(Author.books))
        authors = session.scalars(query).all()
        return [(a.id, [b.id for b in a.books]) for a in authors], list(authors)

    assert compare(engine, walk) == (1 + n, 1 + n)


def test_dynamic_is_left_alone(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded

    def walk(session: Session) -> tuple[Any, list[object]]:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        return [(a.id, [b.id for b in a.dynamic_books.order_by(Book.id)]) for a in authors], []

    assert compare(engine, walk) == (1 + n, 1 + n)


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_noload_is_left_alone(seeded: tuple[Engine, int]) -> None:
    engine, _ = seeded

    class NoloadBase(DeclarativeBase):  # its own registry: only this test configures it
        pass

    class Writer(NoloadBase):
        __table__ = Base.metadata.tables["bl_authors"]
        id: Mapped[int]
        books = relationship(
            "Volume",
            lazy="noload",
            viewonly=True,
            primaryjoin="Writer.id == foreign(Volume.author_id)",
        )

    class Volume(NoloadBase):
        __table__ = Base.metadata.tables["bl_books"]

    def walk(session: Session) -> tuple[Any, list[object]]:
        writers = session.scalars(select(Writer).order_by(Writer.id)).all()
        return [(w.id, list(w.books)) for w in writers], []

    assert compare(engine, walk) == (1, 1)
    assert Volume.__table__ is not None


def test_write_only_is_left_alone(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded

    def walk(session: Session) -> tuple[Any, list[object]]:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        data = [
            (a.id, list(session.scalars(a.written_books.select().order_by(Book.id))))
            for a in authors
        ]
        return [(author, [b.id for b in books]) for author, books in data], []

    assert compare(engine, walk) == (1 + n, 1 + n)


@pytest.mark.parametrize(
    ("attribute", "message"), [("raising_books", "lazy='raise'"), ("strict_books", "raise_on_sql")]
)
def test_raise_stays_raise(seeded: tuple[Engine, int], attribute: str, message: str) -> None:
    engine, _ = seeded
    with Session(engine) as session, autoload():
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        for author in authors[:2]:
            with pytest.raises(InvalidRequestError, match=message):
                getattr(author, attribute)


# --- scopes -----------------------------------------------------------------------------------


def test_scope_of_given_relationships_only(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    with ormtune.capture(engine) as log, Session(engine) as session, autoload(Author.books):
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        books = [b for a in authors for b in a.books]  # batched
        for book in books[:2]:
            assert book.tags is not None  # Book.tags is not covered: plain lazy loads
    assert log.count == 1 + batched(n) + 2


def test_scope_of_a_declarative_base(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    from tests.models import Base as OtherBase

    with ormtune.capture(engine) as log, Session(engine) as session, autoload(OtherBase):
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        assert sum(len(a.books) for a in authors) == 3 * authors_with_books(n)
    assert log.count == 1 + n  # another base's autoload does not cover these models
    with ormtune.capture(engine) as log, Session(engine) as session, autoload(Base):
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        assert sum(len(a.books) for a in authors) == 3 * authors_with_books(n)
    assert log.count == 1 + batched(n)


def test_per_statement_option(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    with ormtune.capture(engine) as log, Session(engine) as session:
        query = select(Author).order_by(Author.id).options(autoload_option())
        for author in session.scalars(query):
            for book in author.books:  # batched, and so is the next level
                assert book.tags is not None
        plain = session.scalars(select(Book).order_by(Book.id).limit(3)).all()
    books = 3 * authors_with_books(n)
    assert log.count == 1 + batched(n) + (batched(books, reselect=True) if books else 0) + 1
    assert plain


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ((Author.id,), TypeError, "is not a relationship"),
        ((Author.dynamic_books,), TypeError, "lazy='dynamic'"),
        (("Author.books",), TypeError, "is not a relationship"),
    ],
)
def test_bad_targets_are_named(arguments: tuple[object, ...], error: type, message: str) -> None:
    before = autoloading()
    with pytest.raises(error, match=message):
        autoload(*arguments)
    assert autoloading() == before


@pytest.mark.parametrize(("size", "error"), [(0, ValueError), (-5, ValueError), ("9", TypeError)])
def test_bad_chunk_size(size: object, error: type) -> None:
    before = autoloading()
    with pytest.raises(error, match="chunk_size"):
        autoload(chunk_size=size)  # type: ignore[arg-type]
    assert autoloading() == before


def test_a_closed_scope_stops_batching(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    scope = autoload()
    scope.close()
    assert scope.closed
    with ormtune.capture(engine) as log, Session(engine) as session:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        assert sum(len(a.books) for a in authors) == 3 * authors_with_books(n)
    assert log.count == 1 + n


def test_custom_chunk_size(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    with ormtune.capture(engine) as log, Session(engine) as session, autoload(chunk_size=4):
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        assert sum(len(a.books) for a in authors) == 3 * authors_with_books(n)
    selects_of_books = [e for e in log if e.tables == ("bl_books",)]
    assert len(selects_of_books) == (1 if n == 1 else math.ceil(n / 4))


# --- asyncio ----------------------------------------------------------------------------------


@pytest.fixture
def async_seeded(backend: Backend) -> Iterator[tuple[Backend, int]]:
    engine = create_engine(backend.sync_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        insert_all(connection, 10)
    yield backend, 10
    Base.metadata.drop_all(engine)
    engine.dispose()


async def _async_walk(backend: Backend, *, autoloaded: bool) -> tuple[Any, int]:
    engine = create_async_engine(backend.async_url)
    scope = autoload() if autoloaded else None
    try:
        async with ormtune.capture(engine) as log, AsyncSession(engine) as session:
            authors = (await session.scalars(select(Author).order_by(Author.id))).all()
            data = []
            for author in authors:
                books = await author.awaitable_attrs.books
                data.append((author.id, [b.title for b in books]))
    finally:
        if scope is not None:
            scope.close()
        await engine.dispose()
    return data, log.count


async def test_async_session_through_awaitable_attrs(async_seeded: tuple[Backend, int]) -> None:
    backend, n = async_seeded
    control, control_count = await _async_walk(backend, autoloaded=False)
    treated, treated_count = await _async_walk(backend, autoloaded=True)
    assert treated == control
    assert (control_count, treated_count) == (1 + n, 1 + batched(n))


async def _bare_access_error(backend: Backend, *, autoloaded: bool) -> tuple[type, str, list[int]]:
    engine = create_async_engine(backend.async_url)
    scope = autoload() if autoloaded else None
    try:
        async with AsyncSession(engine) as session:
            authors = (await session.scalars(select(Author).order_by(Author.id))).all()
            with pytest.raises(Exception) as info:
                authors[0].books  # noqa: B018
            # nothing was half-loaded: the awaitable form works afterwards
            books = [b.id for b in await authors[1].awaitable_attrs.books]
            return type(info.value), str(info.value).splitlines()[0], books
    finally:
        if scope is not None:
            scope.close()
        await engine.dispose()


# When MissingGreenlet aborts a statement, the async driver's cursor() coroutine is left
# un-awaited: plain SQLAlchemy does this too (the control run below), so it is collected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
async def test_bare_attribute_access_under_asyncio_still_raises(
    async_seeded: tuple[Backend, int],
) -> None:
    backend, _ = async_seeded
    control = await _bare_access_error(backend, autoloaded=False)
    treated = await _bare_access_error(backend, autoloaded=True)
    gc.collect()
    assert treated == control
    _, message, books = treated
    assert "greenlet_spawn has not been called" in message
    assert books == [22, 21, 20]


def test_objects_loaded_while_cohorts_are_tracked_still_pickle(seeded: tuple[Engine, int]) -> None:
    engine, n = seeded
    with Session(engine) as session, autoload():
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        assert sum(len(a.books) for a in authors) == 3 * authors_with_books(n)
        copies = pickle.loads(pickle.dumps(authors))
    assert [(a.id, [b.id for b in a.books]) for a in copies] == [
        (a.id, [b.id for b in a.books]) for a in authors
    ]
