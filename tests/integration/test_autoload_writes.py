"""autoload() in loops that write: a peer's batched rows against what its plain lazy load reads.

A batch loads every peer's relationship at the first read; each peer's rows wait until it is
read, and are handed over only if nothing written since changes them. These cases write in
between, in the ways the write tracking has to tell apart: two relationships on one table,
rows the database deletes itself, keys set as text, many-to-one targets the re-select loaded,
and writes that must *not* make the batch stale (statements on columns the relationship does
not read, textual SELECTs, released savepoints), with exact query counts for those. Control
(plain lazy loading) against treatment, whole results compared, on every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import (
    Engine,
    ForeignKey,
    String,
    create_engine,
    delete,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    with_loader_criteria,
)

import ormtune
from ormtune.batchload import autoload
from tests.conftest import BACKENDS, Backend

PEOPLE = 6


class Base(DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "aw_people"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    owned: Mapped[list[Ticket]] = relationship(
        foreign_keys="Ticket.owner_id", order_by="Ticket.id", viewonly=True
    )
    edited: Mapped[list[Ticket]] = relationship(
        foreign_keys="Ticket.editor_id", order_by="Ticket.id", viewonly=True
    )


class Ticket(Base):
    __tablename__ = "aw_tickets"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(50))
    owner_id: Mapped[int] = mapped_column(ForeignKey("aw_people.id"))
    editor_id: Mapped[int | None] = mapped_column(ForeignKey("aw_people.id"))
    owner: Mapped[Person] = relationship(foreign_keys=[owner_id])


class Folder(Base):
    __tablename__ = "aw_folders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("aw_folders.id", ondelete="CASCADE"))
    children: Mapped[list[Folder]] = relationship(
        order_by="Folder.id", passive_deletes=True, back_populates="parent"
    )
    parent: Mapped[Folder | None] = relationship(remote_side=[id], back_populates="children")


class Shelf(Base):  # deleting one deletes its boxes' items too, in the database only
    __tablename__ = "aw_shelves"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


class Box(Base):
    __tablename__ = "aw_boxes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    shelf_id: Mapped[int] = mapped_column(ForeignKey("aw_shelves.id", ondelete="CASCADE"))
    items: Mapped[list[Item]] = relationship(order_by="Item.id", passive_deletes=True)


class Item(Base):
    __tablename__ = "aw_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    box_id: Mapped[int] = mapped_column(ForeignKey("aw_boxes.id", ondelete="CASCADE"))


def _seed(connection: Any) -> None:
    connection.execute(insert(Person), [{"id": i, "name": f"p{i}"} for i in range(1, PEOPLE + 1)])
    connection.execute(
        insert(Ticket),
        [
            {"id": 10 * i + j, "title": f"t{i}.{j}", "owner_id": i, "editor_id": i % PEOPLE + 1}
            for i in range(1, PEOPLE + 1)
            for j in range(3)
        ],
    )
    roots = [{"id": i, "parent_id": None} for i in (1, 2, 3)]
    children = [{"id": 10 * i + j, "parent_id": i} for i in (1, 2, 3) for j in range(2)]
    grandchildren = [
        {"id": 10 * c["id"] + j, "parent_id": c["id"]} for c in children for j in range(2)
    ]
    for rows in (roots, children, grandchildren):
        connection.execute(insert(Folder), rows)
    connection.execute(insert(Shelf), [{"id": i} for i in (1, 2, 3)])
    connection.execute(
        insert(Box), [{"id": 10 * i + j, "shelf_id": i} for i in (1, 2, 3) for j in range(2)]
    )
    connection.execute(
        insert(Item),
        [{"id": 10 * b + j, "box_id": b} for b in (10, 11, 20, 21, 30, 31) for j in range(2)],
    )


def _foreign_keys_on(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    backend: Backend = request.getfixturevalue(f"{request.param}_backend")
    engine = create_engine(backend.sync_url)
    if engine.dialect.name == "sqlite":  # ON DELETE CASCADE needs the pragma on SQLite
        event.listen(engine, "connect", _foreign_keys_on)

    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        _seed(connection)
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


Walk = Callable[[Session], Any]


def run(engine: Engine, walk: Walk, *, autoloaded: bool) -> tuple[Any, int]:
    with ormtune.capture(engine) as log, Session(engine) as session:
        try:
            if autoloaded:
                with autoload():
                    data = walk(session)
            else:
                data = walk(session)
        finally:
            session.rollback()
    return data, log.count


def compare(engine: Engine, walk: Walk) -> tuple[int, int]:
    """Run control and treatment; assert the results are equal; return both query counts."""
    control, control_count = run(engine, walk, autoloaded=False)
    treated, treated_count = run(engine, walk, autoloaded=True)
    assert treated == control
    return control_count, treated_count


def ids(objects: list[Any]) -> list[int]:
    return [obj.id for obj in objects]


def people(session: Session) -> list[Person]:
    return list(session.scalars(select(Person).where(Person.id <= PEOPLE).order_by(Person.id)))


def test_two_relationships_on_one_table_name_their_own_peers(engine: Engine) -> None:
    # A written ticket names the people of its owner_id for Person.owned, and of its editor_id
    # for Person.edited: never the other relationship's columns.
    def walk(session: Session) -> Any:
        everyone = people(session)
        data = [ids(everyone[0].owned)]
        ticket = session.get(Ticket, 50)
        assert ticket is not None
        ticket.owner_id = 2
        session.flush()
        data += [ids(everyone[1].owned), ids(everyone[0].edited)]
        other = session.get(Ticket, 20)
        assert other is not None
        other.editor_id = 4  # edited by person 3 until now: 3's and 4's edited rows change
        data += [ids(p.edited) for p in everyone[1:]]
        data += [ids(p.owned) for p in everyone[2:]]
        return data

    compare(engine, walk)


def test_rows_the_database_deletes_itself(engine: Engine) -> None:
    # passive_deletes leaves the children to ON DELETE CASCADE: the flush deletes only the
    # root, the database its whole subtree.
    def walk(session: Session) -> Any:
        level = list(session.scalars(select(Folder).where(Folder.parent_id.is_not(None))))
        level.sort(key=lambda folder: folder.id)
        data = [(level[0].id, ids(level[0].children))]
        root = session.get(Folder, 2)
        session.delete(root)
        session.flush()
        data += [(folder.id, ids(folder.children)) for folder in level[1:]]
        return data

    compare(engine, walk)


def test_a_foreign_key_set_as_text(engine: Engine) -> None:
    def walk(session: Session) -> Any:
        everyone = people(session)
        data = [ids(everyone[0].owned)]
        ticket = session.get(Ticket, 10)
        assert ticket is not None
        ticket.owner_id = "3"  # type: ignore[assignment]  # as a form would send it
        session.flush()
        data += [ids(p.owned) for p in everyone[1:]]
        return data

    compare(engine, walk)


def test_a_many_to_one_the_re_select_loaded_autoflushes_at_its_first_read(
    engine: Engine,
) -> None:
    # Expired by the commit, the tickets take the re-select path; each owner it selected is
    # one a plain lazy load would have selected, autoflushing first, at its first reader.
    def walk(session: Session) -> Any:
        tickets = list(session.scalars(select(Ticket).order_by(Ticket.id)))
        session.commit()
        data: list[Any] = [tickets[0].owner.id]
        session.add(Person(id=999, name=None))  # NOT NULL: the next autoflush fails
        try:
            data += [ticket.owner.id for ticket in tickets[1:]]
        except IntegrityError:
            data.append(("failed at", len(data)))
        return data

    compare(engine, walk)


def loop_counts(engine: Engine, write: Callable[[Session, int], None]) -> tuple[int, int]:
    """Each person's tickets read in a loop that runs ``write`` after each read."""

    def walk(session: Session) -> Any:
        data = []
        for i, person in enumerate(people(session)):
            data.append(ids(person.owned))
            write(session, i)
        return data

    return compare(engine, walk)


def test_statements_on_columns_the_relationship_does_not_read(engine: Engine) -> None:
    def write(session: Session, i: int) -> None:
        session.execute(update(Person).where(Person.id == i + 1).values(name="renamed"))
        session.execute(update(Ticket).where(Ticket.owner_id == i + 1).values(title="retitled"))

    # Plain: the people, a lazy load and two statements per person. Autoload: one batch.
    assert loop_counts(engine, write) == (1 + 3 * PEOPLE, 1 + 1 + 2 * PEOPLE)


def test_a_statement_on_a_column_it_reads_batches_the_rest_again(engine: Engine) -> None:
    def write(session: Session, i: int) -> None:
        if i == 0:  # one person's tickets given to the last person, who is not read yet
            session.execute(update(Ticket).where(Ticket.owner_id == 1).values(owner_id=PEOPLE))

    # Autoload: the batch went stale before it handed anything over; the first stale read
    # batches the rest again, once.
    assert loop_counts(engine, write) == (1 + PEOPLE + 1, 1 + 1 + 1 + 1)


def test_textual_selects_and_released_savepoints_keep_the_batch(engine: Engine) -> None:
    new_ids = iter(range(100, 200))

    def write(session: Session, i: int) -> None:
        session.execute(text("SELECT COUNT(*) FROM aw_people"))
        with session.begin_nested():
            session.add(Person(id=next(new_ids), name="new"))

    try:
        control, treated = loop_counts(engine, write)
    finally:  # pysqlite's savepoints may have let the rows through its rollback
        with engine.begin() as connection:
            connection.execute(delete(Person).where(Person.id >= 100))
    # Per person: the count, SAVEPOINT, the insert, RELEASE; plain adds a lazy load each.
    assert control - treated == PEOPLE - 1


def test_a_rolled_back_savepoint_ends_the_batches_made_in_it(engine: Engine) -> None:
    def walk(session: Session) -> Any:
        everyone = people(session)
        nested = session.begin_nested()
        session.add(Ticket(id=999, title="gone", owner_id=PEOPLE))
        session.flush()
        data = [ids(everyone[0].owned)]  # the batch reads the new ticket with the rest
        nested.rollback()  # the ticket is gone again; the people stay as they were
        data += [ids(p.owned) for p in everyone[1:]]
        return data

    try:
        compare(engine, walk)
    finally:  # pysqlite's savepoints may have let the row through its rollback
        with engine.begin() as connection:
            connection.execute(delete(Ticket).where(Ticket.id == 999))


def test_a_self_referential_many_to_one_moved_by_its_own_foreign_key(engine: Engine) -> None:
    # Folder.parent reads the folder's own parent_id, on the same table as its targets.
    def walk(session: Session) -> Any:
        level = list(session.scalars(select(Folder).where(Folder.id >= 10).order_by(Folder.id)))
        data: list[Any] = [level[0].parent.id if level[0].parent else None]
        level[3].parent_id = 3  # not flushed: the many-to-one reads the new key
        level[4].parent_id = 1
        session.flush()  # flushed
        data += [folder.parent.id if folder.parent else None for folder in level[1:]]
        return data

    compare(engine, walk)


def test_loader_criteria_columns_count(engine: Engine) -> None:
    # with_loader_criteria on the tickets: a title written in the loop moves a ticket out of
    # what the criteria let through, for a person not read yet.
    def walk(session: Session) -> Any:
        everyone = list(
            session.scalars(
                select(Person)
                .where(Person.id <= PEOPLE)
                .order_by(Person.id)
                .options(with_loader_criteria(Ticket, Ticket.title != "hidden"))
            )
        )
        data = [ids(everyone[0].owned)]
        ticket = session.get(Ticket, 31)
        assert ticket is not None
        ticket.title = "hidden"
        data += [ids(p.owned) for p in everyone[1:]]
        return data

    compare(engine, walk)


def test_cascades_reach_through_tables(engine: Engine) -> None:
    # Deleting a shelf (by statement, and by flush) deletes its boxes and their items in the
    # database: a batch of Box.items reads rows two foreign keys away from the shelf.
    def walk(session: Session) -> Any:
        boxes = list(session.scalars(select(Box).order_by(Box.id)))
        data = [ids(boxes[0].items)]
        session.execute(delete(Shelf).where(Shelf.id == 2))
        data += [ids(box.items) for box in boxes[1:4]]
        shelf = session.get(Shelf, 3)
        session.delete(shelf)
        session.flush()
        data += [ids(box.items) for box in boxes[4:]]
        return data

    compare(engine, walk)


def test_a_loop_that_commits_at_every_step(engine: Engine) -> None:
    # Each commit ends the batch before it hands anything over; batching again at every step
    # would cost a query more per step than plain lazy loading. Autoload backs off instead.
    def walk(session: Session) -> Any:
        data = []
        for person in people(session):
            data.append(ids(person.owned))
            session.commit()
        return data

    control, treated = compare(engine, walk)
    assert treated <= control + 2
