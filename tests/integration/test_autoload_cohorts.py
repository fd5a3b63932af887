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
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    column_property,
    mapped_column,
    relationship,
)

import ormtune
from ormtune.batchload import autoload
from ormtune.querylog import _run_cohorts, cohort_of
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


def batched_books(author: Author) -> bool:
    state = inspect(author)
    return "books" in state.dict or "books" in state.callables


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
            # The first query's authors only: the second query's are not its peers. (The
            # trigger's books are loaded; each peer's wait as its own loader until read.)
            assert all(batched_books(author) for author in first)
            assert not any(batched_books(author) for author in second)
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
        members = len(cohort_of(inspect(children[0])) or ())
    assert treated == control
    # The children came in four chunk queries (three roots each), four runs; they are one
    # cohort, whose grandchildren came in one batch of seven chunks (twenty children, three
    # keys each).
    assert len(children) == 2 * PARENTS
    assert len(runs) == 4
    assert len(cohorts) == 1
    assert members == len(children)
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


class _Eager(DeclarativeBase):
    pass


class _Owner(_Eager):
    __tablename__ = "ac_owners"
    id: Mapped[int] = mapped_column(primary_key=True)
    pets: Mapped[list[_Pet]] = relationship(lazy="immediate", order_by="_Pet.id")


class _Pet(_Eager):
    __tablename__ = "ac_pets"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("ac_owners.id"))
    vet_id: Mapped[int] = mapped_column(ForeignKey("ac_vets.id"))
    vet: Mapped[_Vet] = relationship()
    toys: Mapped[list[_PetToy]] = relationship(order_by="_PetToy.id")


class _Vet(_Eager):
    __tablename__ = "ac_vets"
    id: Mapped[int] = mapped_column(primary_key=True)


class _Keeper(_Eager):
    # The owners again, with their pets loaded by the mapping's selectinload.
    __table__ = _Owner.__table__
    id: Mapped[int] = column_property(_Owner.__table__.c.id)
    pets: Mapped[list[_Pet]] = relationship(lazy="selectin", order_by="_Pet.id", viewonly=True)


class _PetToy(_Eager):
    __tablename__ = "ac_pet_toys"
    id: Mapped[int] = mapped_column(primary_key=True)
    pet_id: Mapped[int] = mapped_column(ForeignKey("ac_pets.id"))
    pet: Mapped[_Pet] = relationship(viewonly=True)


class _IPet(_Eager):
    # The pets again, with their toys loaded by the mapping's immediate loads.
    __table__ = _Pet.__table__
    id: Mapped[int] = column_property(_Pet.__table__.c.id)
    toys: Mapped[list[_PetToy]] = relationship(
        lazy="immediate", order_by="_PetToy.id", viewonly=True
    )


class _Home(_Eager):
    # The owners again, with their pets (of the class above) lazily loaded.
    __table__ = _Owner.__table__
    id: Mapped[int] = column_property(_Owner.__table__.c.id)
    pets: Mapped[list[_IPet]] = relationship(order_by="_IPet.id", viewonly=True)


@pytest.fixture
def immediate(engine: Engine) -> Iterator[Engine]:
    _Eager.metadata.drop_all(engine)
    _Eager.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(_Owner), [{"id": i} for i in range(1, PARENTS + 1)])
        connection.execute(insert(_Vet), [{"id": i} for i in range(1, 4)])
        pets = [
            {"id": 2 * i + j, "owner_id": i, "vet_id": 1 + (i + j) % 3}
            for i in range(1, PARENTS + 1)
            for j in range(2)
        ]
        connection.execute(insert(_Pet), pets)
        connection.execute(insert(_PetToy), [{"id": p["id"], "pet_id": p["id"]} for p in pets])
    yield engine
    _Eager.metadata.drop_all(engine)


def test_the_lazy_loads_of_an_immediate_relationship_are_one_cohort(immediate: Engine) -> None:
    # lazy="immediate" loads each owner's pets with a query of its own: twenty pets in ten
    # runs, which the level below must still batch as one query's rows.
    def walk(session: Session) -> list[Any]:
        owners = session.scalars(select(_Owner).order_by(_Owner.id)).all()
        # The session's next query ends the immediate loads: its rows are not their peers.
        kept = session.scalars(select(_Vet).where(_Vet.id == 1)).all()
        with ormtune.capture(immediate) as log:
            graph = [
                (o.id, [(p.id, p.vet.id, [t.id for t in p.toys]) for p in o.pets]) for o in owners
            ]
        assert len(kept) == 1
        return [graph, log.count, [pet for owner in owners for pet in owner.pets]]

    with Session(immediate) as session:
        control, plain, _ = walk(session)
    with Session(immediate) as session, autoload():
        treated, batched, pets = walk(session)
        cohorts = {cohort_of(inspect(pet)) for pet in pets}
    assert treated == control
    assert plain == 2 + 2 * PARENTS  # vets 2 and 3, then each pet's toys
    assert batched == 2  # the vets and the toys, one batch each
    assert len(cohorts) == 1
    assert [len(cohort or ()) for cohort in cohorts] == [2 * PARENTS]


MANY = 1_200  # selectinload's chunks: 500, 500 and 200 parents


@pytest.fixture
def many_owners(engine: Engine) -> Iterator[Engine]:
    _Eager.metadata.drop_all(engine)
    _Eager.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(_Owner), [{"id": i} for i in range(1, MANY + 1)])
        connection.execute(insert(_Vet), [{"id": 1}])
        rows = [{"id": i, "owner_id": i, "vet_id": 1} for i in range(1, MANY + 1)]
        connection.execute(insert(_Pet), rows)
        connection.execute(insert(_PetToy), [{"id": i, "pet_id": i} for i in range(1, MANY + 1)])
    yield engine
    _Eager.metadata.drop_all(engine)


def test_the_chunks_of_a_selectin_relationship_are_one_cohort(many_owners: Engine) -> None:
    def walk(session: Session) -> list[Any]:
        keepers = session.scalars(select(_Keeper).order_by(_Keeper.id)).all()
        with ormtune.capture(many_owners) as log:
            graph = [(k.id, [(p.id, [t.id for t in p.toys]) for p in k.pets]) for k in keepers]
        return [graph, log.count, [pet for keeper in keepers for pet in keeper.pets]]

    with Session(many_owners) as session:
        control, plain, _ = walk(session)
    with Session(many_owners) as session, autoload(chunk_size=1_000):
        treated, batched, pets = walk(session)
        cohorts = {cohort_of(inspect(pet)) for pet in pets}
    assert treated == control
    assert plain == MANY
    # One batch of the 1,200 pets' toys, in chunks of 1,000: not one batch per selectinload
    # chunk (500, 500 and 200 pets: three queries).
    assert batched == 2
    assert [len(cohort or ()) for cohort in cohorts] == [MANY]


def test_the_immediate_loads_inside_a_chunked_batch_are_the_batch_s(immediate: Engine) -> None:
    # A batch of the homes' pets in four chunks; each chunk's pets immediately load their
    # toys. The toys are one cohort, whose pets come in one batch.
    def walk(session: Session) -> list[Any]:
        homes = session.scalars(select(_Home).order_by(_Home.id)).all()
        pets = [pet for home in homes for pet in home.pets]
        with ormtune.capture(immediate) as log:
            graph = [(p.id, [(t.id, t.pet.id) for t in p.toys]) for p in pets]
        return [graph, log.count, [toy for pet in pets for toy in pet.toys]]

    with Session(immediate) as session:
        control, plain, _ = walk(session)
    with Session(immediate) as session, autoload(_Home.pets, chunk_size=3), autoload():
        treated, batched, toys = walk(session)
        cohorts = {cohort_of(inspect(toy)) for toy in toys}
    assert treated == control
    assert plain == 2 * PARENTS
    assert batched == 1
    assert len(cohorts) == 1


def test_objects_an_insert_returns_are_not_peers_of_immediate_loads(immediate: Engine) -> None:
    with Session(immediate) as session, autoload():
        owners = session.scalars(select(_Owner).order_by(_Owner.id)).all()
        rows = [{"id": 1_000 + i, "owner_id": 1, "vet_id": 1} for i in range(3)]
        inserted = session.scalars(insert(_Pet).returning(_Pet), rows).all()
        with ormtune.capture(immediate) as log:
            treated = [(p.id, [t.id for t in p.toys]) for o in owners for p in o.pets]
        cohort = cohort_of(inspect(owners[0].pets[0]))
        assert cohort is not None
        assert len(cohort) == 2 * PARENTS
        assert not {cohort_of(inspect(pet)) for pet in inserted} & {cohort}
        session.rollback()
    with Session(immediate) as session:
        owners = session.scalars(select(_Owner).order_by(_Owner.id)).all()
        control = [(p.id, [t.id for t in p.toys]) for o in owners for p in o.pets]
    assert treated == control
    assert log.count == 1


def test_a_long_session_of_immediate_loads_keeps_nothing_per_query(immediate: Engine) -> None:
    with Session(immediate) as session, autoload():
        for i in range(50):
            keys = [1 + i % PARENTS, 1 + (i + 1) % PARENTS]
            owners = session.scalars(select(_Owner).where(_Owner.id.in_(keys))).all()
        owners = []  # all gone: the next query loads both owners' pets
        owners = session.scalars(select(_Owner).where(_Owner.id.in_([3, 7]))).all()
        pets = [pet for owner in owners for pet in owner.pets]
        session.scalars(select(_Vet)).all()  # the next query ends the last immediate loads
        assert _run_cohorts._parts.get(session.identity_map) is None
        assert session.identity_map not in _run_cohorts._post_loads
        assert len(cohort_of(inspect(pets[0])) or ()) == len(pets) == 4
