"""Unused eager loads (``detect(unused_eager=True)``) against real databases, sync and asyncio.

Every test runs on SQLite, PostgreSQL (psycopg / asyncpg) and MariaDB (pymysql / aiomysql)
through the ``engine`` and ``async_engine`` fixtures. The models live here: relationships that
are lazy by default (loaded eagerly by options) and ones whose mapping loads them eagerly
(``lazy="selectin"``, ``lazy="joined"``), with a subclass to check inherited relationships.
"""

from __future__ import annotations

import gc
import logging
import pickle
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from sqlalchemy import ForeignKey, String, inspect, select
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    lazyload,
    mapped_column,
    relationship,
    selectinload,
    subqueryload,
)
from sqlalchemy.orm.attributes import InstrumentedAttribute

import ormtune
from ormtune.backends import MemoryBackend
from ormtune.caching import QueryCache
from ormtune.nplusone import Finding, NPlusOneError, NPlusOneWarning, detect
from ormtune.nplusone._eager import ReadTracking, tracked
from ormtune.nplusone._hooks import hooked
from ormtune.testing import assert_max_queries
from tests.nplusone_support import async_seeded, line_of, seeded, where

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence

    from sqlalchemy import Engine
    from sqlalchemy.orm.strategy_options import _AbstractLoad

AUTHORS = 4
BOOKS_EACH = 2


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Publisher(Base):
    __tablename__ = "ue_publishers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    catalogue: Mapped[list[Book]] = relationship(
        lazy="selectin", back_populates="publisher", order_by="Book.id"
    )


class Sponsor(Base):
    __tablename__ = "ue_sponsors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Author(Base):
    __tablename__ = "ue_authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    kind: Mapped[str] = mapped_column(String(20))
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")
    awards: Mapped[list[Award]] = relationship(order_by="Award.id")

    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "author"}


class Poet(Author):
    __mapper_args__ = {"polymorphic_identity": "poet"}


class Award(Base):
    __tablename__ = "ue_awards"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    author_id: Mapped[int] = mapped_column(ForeignKey("ue_authors.id"))
    sponsor_id: Mapped[int] = mapped_column(ForeignKey("ue_sponsors.id"))
    sponsor: Mapped[Sponsor] = relationship(lazy="joined")


class Book(Base):
    __tablename__ = "ue_books"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("ue_authors.id"))
    publisher_id: Mapped[int] = mapped_column(ForeignKey("ue_publishers.id"))
    author: Mapped[Author] = relationship(back_populates="books")
    publisher: Mapped[Publisher] = relationship(back_populates="catalogue")


def _authors() -> list[Author]:
    publisher = Publisher(name="press")
    sponsor = Sponsor(name="fund")
    authors: list[Author] = []
    for i in range(AUTHORS):
        cls = Poet if i % 2 else Author
        author = cls(name=f"author {i}", awards=[Award(title=f"award {i}", sponsor=sponsor)])
        author.books = [Book(title=f"book {i}.{j}", publisher=publisher) for j in range(BOOKS_EACH)]
        authors.append(author)
    return authors


@pytest.fixture
def db(engine: Engine) -> Iterator[Engine]:
    """The ``engine`` fixture's database with this module's tables: 4 authors (every second
    one a Poet), 2 books each, one award each, one publisher, one sponsor."""
    with seeded(engine, Base.metadata, _authors):
        yield engine


@pytest_asyncio.fixture
async def async_db(async_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with async_seeded(async_engine, Base.metadata, _authors):
        yield async_engine


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    yield
    assert not hooked()
    assert tracked() == []
    for cls in (Author, Poet, Book):
        for descriptor in vars(cls).values():
            assert type(descriptor) is not ReadTracking


def _line_of(marker: str) -> int:
    return line_of(__file__, marker)


def _where(marker: str) -> str:
    return where(__file__, marker)


def _titles(authors: Sequence[Author]) -> list[list[str]]:
    return [[book.title for book in author.books] for author in authors]


OPTIONS: list[tuple[str, Callable[[Any], _AbstractLoad]]] = [
    ("selectinload", selectinload),
    ("joinedload", joinedload),
    ("subqueryload", subqueryload),
]


@pytest.mark.parametrize(("name", "option"), OPTIONS, ids=[name for name, _ in OPTIONS])
def test_an_eager_load_nothing_reads_raises_when_the_block_ends(
    db: Engine, name: str, option: Callable[[Any], _AbstractLoad]
) -> None:
    watched = detect("raise", unused_eager=True)
    with pytest.raises(NPlusOneError) as info, watched, Session(db) as s:
        statement = select(Author).options(option(Author.books))
        authors = s.scalars(statement).unique().all()  # query: option
        assert tracked() == ["Author.books", "Poet.books"]
        names = [author.name for author in authors]  # columns only

    assert len(names) == AUTHORS
    [finding] = info.value.findings
    assert isinstance(finding, Finding)
    assert finding.kind == "unused-eager"
    assert (finding.relationship, finding.count) == ("Author.books", AUTHORS)
    assert finding.fix == f"{name}(Author.books)"
    assert finding.fingerprint is None
    assert finding.callsite is not None
    assert finding.callsite.lineno == _line_of("# query: option")
    assert str(finding) == (
        f"Unused eager load: Author.books loaded for {AUTHORS} Author objects and never read\n"
        f"  at {_where('# query: option')} in "
        f"test_an_eager_load_nothing_reads_raises_when_the_block_ends\n"
        f"  fix: remove {name}(Author.books) from this query's options; "
        f"raiseload(Author.books) in its place finds code that reads it"
    )


def test_eager_loads_of_the_mapping_are_reported_with_lazy_select(db: Engine) -> None:
    with detect("log", unused_eager=True) as detection, Session(db) as s:
        publishers = s.scalars(select(Publisher)).all()  # query: catalogue
        awards = s.scalars(select(Award).order_by(Award.id)).unique().all()  # query: sponsor
        assert [publisher.name for publisher in publishers] == ["press"]
        assert len(awards) == AUTHORS

    catalogue, sponsor = detection.findings
    assert (catalogue.relationship, catalogue.count, catalogue.fix) == (
        "Publisher.catalogue",
        1,
        'lazy="select"',
    )
    assert catalogue.summary == (
        "Unused eager load: Publisher.catalogue loaded for 1 Publisher object and never read"
    )
    assert catalogue.callsite is not None
    assert catalogue.callsite.lineno == _line_of("# query: catalogue")
    assert (sponsor.relationship, sponsor.count) == ("Award.sponsor", AUTHORS)
    assert sponsor.callsite is not None
    assert sponsor.callsite.lineno == _line_of("# query: sponsor")
    assert sponsor.advice == (
        'set lazy="select" on Award.sponsor (or add .options(lazyload(Award.sponsor)) to '
        "this query); raiseload(Award.sponsor) finds code that reads it"
    )


def test_no_finding_where_none_is_due(db: Engine) -> None:
    with detect("raise", unused_eager=True) as detection, Session(db) as s:
        # Read on one object of the query (a Poet, through the subclass's attribute): used.
        authors = s.scalars(select(Author).options(selectinload(Author.books))).all()
        assert len(authors[-1].books) == BOOKS_EACH
        assert isinstance(authors[-1], Poet)
        [publisher] = s.scalars(select(Publisher)).all()
        assert publisher.catalogue  # the mapping's selectin, read
        awards = s.scalars(select(Award)).all()
        assert awards[-1].sponsor.name == "fund"  # the mapping's joined, read
        # Read through inspect() and getattr(): used.
        books = s.scalars(select(Book).options(joinedload(Book.author))).unique().all()
        assert inspect(books[0]).attrs.author.value is not None
        assert getattr(books[1], "author").name  # noqa: B009
        # Not eager at all: lazy loads, raiseload, and objects loaded one at a time.
        lazy = s.scalars(select(Author).options(lazyload("*"))).all()
        assert lazy
        assert s.get(Book, books[0].id) is books[0]

    assert detection.findings == []


def test_reads_are_kept_when_the_objects_are_expunged_or_collected(db: Engine) -> None:
    with detect("raise", unused_eager=True) as detection:
        with Session(db) as s:
            authors = s.scalars(select(Author).options(selectinload(Author.books))).all()
            s.expunge(authors[0])
            assert authors[0].books  # read on an expunged object: still a use
            books = s.scalars(select(Book).options(joinedload(Book.author))).unique().all()
            assert books[0].author.name
        del authors, books
        gc.collect()  # every object gone: the reads were noted on the query, not on them

    assert detection.findings == []


def test_an_unread_eager_load_is_reported_after_its_objects_are_gone(db: Engine) -> None:
    with detect("log", unused_eager=True) as detection:
        with Session(db) as s:
            authors = s.scalars(select(Author).options(selectinload(Author.books))).all()
            assert len(authors) == AUTHORS
        del authors
        gc.collect()

    assert [(f.relationship, f.count) for f in detection.findings] == [("Author.books", AUTHORS)]


def test_values_and_identities_are_unchanged(db: Engine) -> None:
    with Session(db) as s:
        plain = _titles(list(s.scalars(select(Author).options(selectinload(Author.books)))))
    descriptor = vars(Author)["books"]
    with detect("log", unused_eager=True) as detection, Session(db) as s:
        authors = list(s.scalars(select(Author).options(selectinload(Author.books))))
        assert Author.books is descriptor
        assert isinstance(Author.books, InstrumentedAttribute)
        assert inspect(Author).all_orm_descriptors["books"] is descriptor
        assert _titles(authors) == plain
        assert authors[0].books is authors[0].__dict__["books"]
    assert detection.findings == []
    assert type(Author.books) is InstrumentedAttribute


def test_pickled_objects_round_trip(db: Engine) -> None:
    with detect("raise", unused_eager=True) as detection, Session(db) as s:
        authors = s.scalars(select(Author).options(selectinload(Author.books))).all()
        copies = pickle.loads(pickle.dumps(authors))
        assert _titles(copies) == _titles(authors)  # reads the originals too

    assert detection.findings == []


def test_modes_and_allow_lists(db: Engine, caplog: pytest.LogCaptureFixture) -> None:
    def query() -> None:
        with Session(db) as s:
            s.scalars(select(Author).options(selectinload(Author.books))).all()  # query: allow

    allowances: list[dict[str, Any]] = [
        {"allow": ("Author.*",)},
        {"allow_callsites": (f"*/{Path(__file__).name}:{_line_of('# query: allow')}",)},
    ]
    for allowance in allowances:
        with detect("raise", unused_eager=True, **allowance) as detection:
            query()
        assert detection.findings == []

    with pytest.warns(NPlusOneWarning) as warned, detect("warn", unused_eager=True):
        query()
    [warning] = warned
    assert warning.lineno == _line_of("# query: allow")
    assert str(warning.message).startswith("Unused eager load: Author.books loaded for 4 ")

    logged = caplog.at_level(logging.WARNING, logger="ormtune.nplusone")
    with logged, detect("log", unused_eager=True):
        query()
    assert [r.getMessage().splitlines()[0] for r in caplog.records] == [
        f"Unused eager load: Author.books loaded for {AUTHORS} Author objects and never read"
    ]

    with detect("raise") as detection:  # unused_eager is off by default: nothing switched
        query()
        assert tracked() == []
    assert detection.findings == []

    with detect("off", unused_eager=True) as detection:  # off is off
        query()
        assert tracked() == []
        assert not hooked()
    assert detection.findings == []


def test_an_exception_leaving_the_block_goes_on_unchanged(db: Engine) -> None:
    with pytest.raises(KeyError), detect("raise", unused_eager=True), Session(db) as s:
        s.scalars(select(Author).options(selectinload(Author.books))).all()
        raise KeyError("app")


def test_nested_blocks_each_judge_their_own_unit_of_work(db: Engine) -> None:
    with detect("log", unused_eager=True) as outer, Session(db) as s:
        with detect("log", unused_eager=True) as inner:
            authors = s.scalars(select(Author).options(selectinload(Author.books))).all()
        assert tracked() == ["Author.books", "Poet.books"]
        assert authors[0].books  # read after the inner block: used for the outer one
        with detect("log") as plain:  # a block without unused_eager keeps the tracking on
            assert authors[1].books
        assert tracked() != []

    assert [f.relationship for f in inner.findings] == ["Author.books"]
    assert outer.findings == []
    assert plain.findings == []


def test_threads_judge_only_their_own_queries(db: Engine) -> None:
    loaded = threading.Event()
    read = threading.Event()
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            loaded.wait()
            with Session(db) as s:  # not watched: its query is not judged by the block
                authors = s.scalars(select(Author).options(selectinload(Author.books))).all()
                assert authors[0].books  # and its reads are not the block's objects' reads
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            read.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with detect("log", unused_eager=True) as detection, Session(db) as s:
        s.scalars(select(Author).options(selectinload(Author.books))).all()
        loaded.set()
        read.wait()
    thread.join()

    assert errors == []
    [finding] = detection.findings
    assert (finding.relationship, finding.count) == ("Author.books", AUTHORS)


async def test_async_reads_through_awaitable_attrs_are_uses(async_db: AsyncEngine) -> None:
    async with detect("raise", unused_eager=True) as detection, AsyncSession(async_db) as s:
        statement = select(Author).options(selectinload(Author.books)).order_by(Author.id)
        authors = (await s.scalars(statement)).all()
        assert len(await authors[0].awaitable_attrs.books) == BOOKS_EACH

    assert detection.findings == []


async def test_async_unused_eager_load_names_the_awaiting_line(async_db: AsyncEngine) -> None:
    with pytest.raises(NPlusOneError) as info:
        async with detect("raise", unused_eager=True), AsyncSession(async_db) as s:
            statement = select(Book).options(joinedload(Book.author))
            books = (await s.scalars(statement)).unique().all()  # query: async
            assert len(books) == AUTHORS * BOOKS_EACH

    [finding] = info.value.findings
    assert isinstance(finding, Finding)
    assert (finding.relationship, finding.count) == ("Book.author", AUTHORS * BOOKS_EACH)
    assert finding.callsite is not None
    assert finding.callsite.filename == __file__
    assert finding.callsite.lineno == _line_of("# query: async")


def test_nested_options_name_their_own_loader(db: Engine) -> None:
    statement = select(Author).options(selectinload(Author.books).subqueryload(Book.publisher))
    with detect("log", unused_eager=True) as detection, Session(db) as s:
        authors = s.scalars(statement).all()
        assert authors[0].books  # Author.books used, Book.publisher not

    [finding] = detection.findings
    assert (finding.relationship, finding.count) == ("Book.publisher", AUTHORS * BOOKS_EACH)
    assert finding.fix == "subqueryload(Book.publisher)"


def test_objects_loaded_without_a_query_are_not_judged(db: Engine) -> None:
    with Session(db) as s:
        detached = s.scalars(select(Author).options(selectinload(Author.books))).all()
    with detect("raise", unused_eager=True) as detection, Session(db) as s:
        merged = [s.merge(author, load=False) for author in detached]
        assert len(merged) == AUTHORS
    assert detection.findings == []


def test_cache_hits_and_autoload_work_under_it(db: Engine) -> None:
    statement = (
        select(Author).order_by(Author.id).options(selectinload(Author.books), ormtune.cache())
    )
    # The cache's hook goes after the detection's (QueryCache.install() explains why).
    with detect("raise", unused_eager=True) as detection, QueryCache(MemoryBackend()):
        for _ in range(2):  # the first run teaches the cache the statement, the second fills it
            with Session(db) as s:
                expected = _titles(s.scalars(statement).all())
        with Session(db) as s, assert_max_queries(0):
            hit = s.scalars(statement).all()  # objects made without a query: not judged
            assert len(hit) == AUTHORS
    assert detection.findings == []

    watched = detect("raise", unused_eager=True)
    with ormtune.autoload(Author.books), watched as detection, Session(db) as s:
        authors = s.scalars(select(Author).order_by(Author.id)).all()
        # The first read loads every author's books (autoload's own selectinload).
        assert _titles(authors) == expected
    assert detection.findings == []


def test_an_autoload_batch_in_chunks_keeps_its_eager_loads_judged_as_one(db: Engine) -> None:
    # One author per chunk: the awards come in four queries, each joining its sponsor; the
    # batch's rows stay the one cohort the detection saw them load into.
    watched = detect("log", unused_eager=True)
    with ormtune.autoload(Author.awards, chunk_size=1), watched as detection, Session(db) as s:
        authors = s.scalars(select(Author).order_by(Author.id)).all()
        sponsors = {award.sponsor.name for author in authors for award in author.awards}
        assert sponsors == {"fund"}
    assert detection.findings == []
