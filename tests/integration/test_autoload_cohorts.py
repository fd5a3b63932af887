"""Which objects autoload batches together: the rows of one query, found from its query run.

Autoload finds a cohort when a lazy load is about to run, in the session's identity map,
instead of recording every loaded object as it is loaded. These cases put the query's rows
where that search must still find them (behind newer objects, refreshed by
``populate_existing``, split by ``yield_per``, in the chunks of a batch) or must not mix them
(two queries, objects loaded before autoload began). Each compares the object graph with plain
lazy loading and counts queries, on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Engine, ForeignKey, create_engine, insert, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import ormtune
from ormtune.batchload import autoload
from ormtune.querylog import cohort_of
from tests.batchload_models import Author, Base, Book, Node, insert_all
from tests.conftest import BACKENDS, Backend

if TYPE_CHECKING:
    from collections.abc import Iterator

PARENTS = 10
WITH_BOOKS = PARENTS - PARENTS // 4  # every fourth author has no books


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    backend: Backend = request.getfixturevalue(f"{request.param}_backend")
    engine = create_engine(backend.sync_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        insert_all(connection, PARENTS)
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


def books_of(authors: list[Author]) -> list[tuple[int, list[int]]]:
    return [(author.id, [book.id for book in author.books]) for author in authors]


def test_a_query_behind_newer_objects_is_one_cohort(engine: Engine) -> None:
    with Session(engine) as session, autoload():
        authors = list(session.scalars(select(Author).order_by(Author.id)))
        session.scalars(select(Book)).all()  # newer objects, of other queries, after them
        session.scalars(select(Node)).all()
        with ormtune.capture(engine) as log:
            treated = books_of(authors)
    with Session(engine) as session:
        control = books_of(list(session.scalars(select(Author).order_by(Author.id))))
    assert treated == control
    assert log.count == 1  # one batch: every author's books


def test_two_queries_are_two_cohorts(engine: Engine) -> None:
    half = PARENTS // 2
    with Session(engine) as session, autoload():
        first = list(session.scalars(select(Author).where(Author.id <= half).order_by(Author.id)))
        second = list(session.scalars(select(Author).where(Author.id > half).order_by(Author.id)))
        with ormtune.capture(engine) as log:
            assert first[0].books is not None
            # The first query's authors only: the second query's are not its peers.
            assert all("books" in inspect(author).dict for author in first)
            assert not any("books" in inspect(author).dict for author in second)
            treated = books_of(first) + books_of(second)
    with Session(engine) as session:
        control = books_of(list(session.scalars(select(Author).order_by(Author.id))))
    assert treated == control
    assert log.count == 2


def test_populate_existing_makes_the_rows_peers_again(engine: Engine) -> None:
    half = PARENTS // 2
    with Session(engine) as session, autoload():
        # Half of the authors are in the identity map before the query that reloads them, and
        # objects of another query lie between them and the authors that query adds.
        early = list(session.scalars(select(Author).where(Author.id <= half)))
        books = session.scalars(select(Book)).all()
        authors = list(
            session.scalars(
                select(Author).order_by(Author.id).execution_options(populate_existing=True)
            )
        )
        assert authors[:half] == sorted(early, key=lambda author: author.id)
        assert books
        with ormtune.capture(engine) as log:
            treated = books_of(authors)
    with Session(engine) as session:
        control = books_of(list(session.scalars(select(Author).order_by(Author.id))))
    assert treated == control
    assert log.count == 1  # refreshed and new rows alike: one batch


_BEFORE_AUTOLOAD = """
import sys
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
import ormtune
from ormtune.batchload import autoload
from tests.batchload_models import Author

engine = create_engine(sys.argv[1])
with Session(engine) as session:
    authors = list(session.scalars(select(Author).order_by(Author.id)))
    with autoload(), ormtune.capture(engine) as log:
        books = [len(author.books) for author in authors]
print(log.count)
"""


def test_objects_loaded_before_autoload_began_are_left_to_the_lazy_load(engine: Engine) -> None:
    # In a process of its own: autoload_option() elsewhere in this suite leaves autoload's
    # hooks on for the rest of the process, and then every object is loaded under them.
    url = engine.url.render_as_string(hide_password=False)
    done = subprocess.run(
        [sys.executable, "-c", _BEFORE_AUTOLOAD, url],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == PARENTS  # one plain lazy load per author


def test_a_session_get_loop_has_no_peers(engine: Engine) -> None:
    with Session(engine) as session, autoload(), ormtune.capture(engine) as log:
        for key in range(1, PARENTS + 1):
            author = session.get(Author, key)
            assert author is not None
            assert author.books is not None
    assert log.count == 2 * PARENTS  # each object its own query's only row: plain lazy loads


def test_lazy_loads_inside_a_yield_per_loop(engine: Engine) -> None:
    if engine.dialect.name in ("mysql", "mariadb"):
        # yield_per streams from a server-side cursor, and the MySQL protocol runs nothing else
        # on the connection until it is drained: no lazy load inside the loop, with or without
        # ormtune.
        pytest.skip("a lazy load inside a yield_per loop needs a second query on the connection")

    def walk(session: Session) -> list[tuple[int, list[int]]]:
        query = select(Author).order_by(Author.id).execution_options(yield_per=3)
        return [
            (author.id, [book.id for book in author.books]) for author in session.scalars(query)
        ]

    with Session(engine) as session:
        control = walk(session)
    with Session(engine) as session, autoload(), ormtune.capture(engine) as log:
        treated = walk(session)
    assert treated == control
    # Rows arrive three at a time; each group is batched when the loop reaches it.
    assert log.count < 1 + PARENTS


def test_the_chunks_of_one_batch_are_one_cohort(engine: Engine) -> None:
    def walk(session: Session) -> tuple[list[Any], list[Node]]:
        roots = session.scalars(select(Node).where(Node.parent_id.is_(None)).order_by(Node.id))
        tree, children = [], []
        for root in roots:
            children += root.children
            tree.append((root.id, [(c.id, [g.id for g in c.children]) for c in root.children]))
        return tree, children

    with Session(engine) as session:
        control, _ = walk(session)
    with Session(engine) as session, autoload(chunk_size=3), ormtune.capture(engine) as log:
        treated, children = walk(session)
        cohorts = {id(cohort_of(inspect(child))) for child in children}
        runs = {inspect(child).runid for child in children}
    assert treated == control
    # The children came in four chunk queries (three roots each); they are one cohort, whose
    # grandchildren came in one batch of seven chunks (twenty children, three keys each).
    assert len(children) == 2 * PARENTS
    assert len(cohorts) == 1
    assert len(runs) == 1
    assert log.count == 1 + 4 + 7


def test_the_first_lazy_load_indexes_every_run_in_the_map(engine: Engine) -> None:
    with Session(engine) as session, autoload():
        authors = list(session.scalars(select(Author).order_by(Author.id)))
        books = list(session.scalars(select(Book).order_by(Book.id)))
        singles = [session.get(Node, key) for key in (1, 2)]  # two runs of one object each
        with ormtune.capture(engine) as log:
            treated = books_of(authors)
        assert log.count == 1
        # Every object in the map was indexed then: the books are one cohort, each node its own.
        book_cohorts = {id(cohort_of(inspect(book))) for book in books}
        assert len(book_cohorts) == 1
        assert None not in {cohort_of(inspect(book)) for book in books}
        node_cohorts = [cohort_of(inspect(node)) for node in singles]
        assert all(cohort is not None and len(cohort) == 1 for cohort in node_cohorts)
    with Session(engine) as session:
        control = books_of(list(session.scalars(select(Author).order_by(Author.id))))
    assert treated == control


class _Interleaved(DeclarativeBase):
    pass


class _Parent(_Interleaved):
    __tablename__ = "ac_parents"
    id: Mapped[int] = mapped_column(primary_key=True)
    kids: Mapped[list[_Kid]] = relationship(lazy="subquery", order_by="_Kid.id")


class _Kid(_Interleaved):
    __tablename__ = "ac_kids"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("ac_parents.id"))
    toys: Mapped[list[_Toy]] = relationship(order_by="_Toy.id")


class _Toy(_Interleaved):
    __tablename__ = "ac_toys"
    id: Mapped[int] = mapped_column(primary_key=True)
    kid_id: Mapped[int] = mapped_column(ForeignKey("ac_kids.id"))


@pytest.fixture
def interleaved(engine: Engine) -> Iterator[Engine]:
    _Interleaved.metadata.drop_all(engine)
    _Interleaved.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(_Parent), [{"id": i} for i in range(1, PARENTS + 1)])
        connection.execute(insert(_Kid), [{"id": i, "parent_id": i} for i in range(1, PARENTS + 1)])
        connection.execute(insert(_Toy), [{"id": i, "kid_id": i} for i in range(1, PARENTS + 1)])
    yield engine
    _Interleaved.metadata.drop_all(engine)


def test_runs_a_subquery_loader_interleaves_are_still_one_cohort_each(
    interleaved: Engine,
) -> None:
    # A subquery loader adds its objects among the parents' in the identity map.
    def walk(session: Session) -> list[Any]:
        parents = session.scalars(select(_Parent).order_by(_Parent.id)).all()
        with ormtune.capture(interleaved) as log:
            graph = [(p.id, [(k.id, [t.id for t in k.toys]) for k in p.kids]) for p in parents]
        return [graph, log.count]

    with Session(interleaved) as session:
        control, plain = walk(session)
    with Session(interleaved) as session, autoload():
        treated, batched = walk(session)
    assert treated == control
    assert plain == PARENTS
    assert batched == 1


def test_an_object_put_back_into_the_session_does_not_split_a_cohort(engine: Engine) -> None:
    with Session(engine) as session, autoload():
        node = session.get(Node, 1)
        authors = list(session.scalars(select(Author).order_by(Author.id)))
        session.expunge(node)
        session.add(node)  # back at the end of the identity map, with its old run
        with ormtune.capture(engine) as log:
            treated = books_of(authors)
    with Session(engine) as session:
        control = books_of(list(session.scalars(select(Author).order_by(Author.id))))
    assert treated == control
    assert log.count == 1
