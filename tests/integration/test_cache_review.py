"""Regression tests for holes a review found in the query cache: each scenario once served a
stale row or another query's result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import (
    ForeignKey,
    String,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
    with_loader_criteria,
)

from ormtune.caching import QueryCache, cache, cached
from tests.integration.test_cache import SERVER_DATABASES

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine

    from tests.conftest import Backend


class ReviewBase(DeclarativeBase):
    pass


class Person(ReviewBase):
    __tablename__ = "r_people"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    grp: Mapped[int] = mapped_column(default=1)
    balance: Mapped[int] = mapped_column(default=0)


class Node(ReviewBase):
    __tablename__ = "r_nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("r_nodes.id"))
    name: Mapped[str] = mapped_column(String(50))
    children: Mapped[list[Node]] = relationship(order_by="Node.id")


class Badge(ReviewBase):
    __tablename__ = "r_badges"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("r_people.id", ondelete="CASCADE"))


class Credit(ReviewBase):
    __tablename__ = "r_credits"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("r_people.id"))
    amount: Mapped[int]


@event.listens_for(Credit, "after_insert")
def _credit_balance(mapper: Any, conn: Any, target: Credit) -> None:
    # A denormalisation written by an event handler during the flush, not by the flush.
    conn.execute(
        update(Person)
        .where(Person.id == target.person_id)
        .values(balance=Person.balance + target.amount)
    )


@pytest.fixture
def db(backend: Backend) -> Iterator[Engine]:
    engine = create_engine(backend.sync_url)
    ReviewBase.metadata.drop_all(engine)
    ReviewBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Person(id=i, name=f"p{i}", grp=1 + i % 2) for i in range(1, 5)])
        session.add(Node(id=1, name="root"))
        session.flush()
        session.add(Node(id=2, parent_id=1, name="kid"))
        session.commit()
    yield engine
    ReviewBase.metadata.drop_all(engine)
    engine.dispose()


def name_of(engine: Engine, pk: int = 1) -> str:
    with Session(engine) as session:
        return session.scalars(select(Person).where(Person.id == pk).options(cache())).one().name


def warm(engine: Engine) -> None:
    name_of(engine)
    name_of(engine)


def test_released_savepoint_then_outer_rollback_never_leaks(db: Engine, qc: QueryCache) -> None:
    warm(db)
    with Session(db) as session:
        person = session.get(Person, 1)
        assert person is not None
        person.name = "never committed"
        with session.begin_nested():
            session.flush()
        session.expunge_all()
        stmt = select(Person).where(Person.id == 1).options(cache())
        assert session.scalars(stmt).one().name == "never committed"  # its own write
        session.rollback()
    assert name_of(db) == "p1"


def test_rolled_back_savepoint_keeps_the_outer_writes(db: Engine, qc: QueryCache) -> None:
    warm(db)
    with Session(db) as session:
        person = session.get(Person, 1)
        assert person is not None
        person.name = "committed"
        session.flush()
        with session.begin_nested() as savepoint:
            savepoint.rollback()
        session.commit()
    assert name_of(db) == "committed"


@pytest.mark.parametrize("mode", ["conditional_savepoint", "rollback_only", "create_savepoint"])
def test_session_joined_to_an_outer_transaction_bumps_when_it_commits(
    db: Engine, qc: QueryCache, mode: Any
) -> None:
    warm(db)
    with db.connect() as conn:
        conn.begin()
        with Session(bind=conn, join_transaction_mode=mode) as session:
            person = session.get(Person, 1)
            assert person is not None
            person.name = f"new ({mode})"
            session.commit()
        assert name_of(db) == "p1"  # the outer transaction has not committed yet
        conn.commit()
    assert name_of(db) == f"new ({mode})"


@pytest.mark.parametrize(  # data-modifying CTEs: PostgreSQL
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)
def test_data_modifying_ctes_are_writes(db: Engine, qc: QueryCache) -> None:
    warm(db)
    with Session(db) as session:
        gone = delete(Person).where(Person.id == 1).returning(Person.id).cte("gone")
        session.execute(select(gone.c.id)).all()
        session.commit()
    with Session(db) as session:
        stmt = select(Person).where(Person.id == 1).options(cache())
        assert session.scalars(stmt).all() == []
    name_of(db, 2)
    name_of(db, 2)
    with Session(db) as session:
        session.execute(
            text(
                "WITH moved AS (UPDATE r_people SET name = 'x' WHERE id = 2 RETURNING id) "
                "SELECT id FROM moved"
            )
        ).all()
        session.commit()
    assert name_of(db, 2) == "x"


def test_cached_function_learns_tables_of_cached_queries(db: Engine, qc: QueryCache) -> None:
    @cached(name="names")
    def names(session: Session) -> list[str]:
        stmt = select(Person.name).order_by(Person.id).options(cache())
        return list(session.scalars(stmt))

    for _ in range(3):
        with Session(db) as session:
            names(session)
    with Session(db) as session:
        session.execute(update(Person).where(Person.id == 1).values(name="renamed"))
        session.commit()
    with Session(db) as session:
        assert names(session)[0] == "renamed"


def test_cached_function_never_stores_uncommitted_rows(db: Engine, qc: QueryCache) -> None:
    @cached(name="count")
    def count(session: Session) -> int:
        return int(session.scalar(select(func.count()).select_from(Person)) or 0)

    with Session(db) as session:
        count(session)
    with Session(db) as session:
        session.add(Person(id=9, name="pending"))
        session.flush()
        assert count(session) == 5
        session.rollback()
    with Session(db) as session:
        assert count(session) == 4


def test_eager_loads_of_the_same_table_drop_fine_dependencies(db: Engine, qc: QueryCache) -> None:
    def kids() -> list[str]:
        with Session(db) as session:
            stmt = select(Node).where(Node.id == 1).options(selectinload(Node.children), cache())
            return [k.name for k in session.scalars(stmt).one().children]

    kids()
    assert kids() == ["kid"]
    with Session(db) as session:
        session.execute(update(Node).where(Node.id == 2).values(name="renamed kid"))
        session.add(Node(id=3, parent_id=1, name="new kid"))
        session.commit()
    assert kids() == ["renamed kid", "new kid"]


def test_writes_by_flush_event_handlers_are_not_credited_to_the_flush(
    db: Engine, qc: QueryCache
) -> None:
    def balance(pk: int) -> int:
        with Session(db) as session:
            person = session.get(Person, pk, options=[cache()])
            assert person is not None
            return person.balance

    balance(1)
    assert balance(1) == 0
    with Session(db) as session:
        other = session.get(Person, 2)
        assert other is not None
        other.name = "p2 again"  # the flush also writes another row of the same table
        session.add(Credit(id=1, person_id=1, amount=50))
        session.commit()
    assert balance(1) == 50


def test_in_memory_sqlite_databases_never_share_entries(qc: QueryCache) -> None:
    engines = [create_engine("sqlite://") for _ in range(2)]
    for number, engine in enumerate(engines):
        ReviewBase.metadata.create_all(engine)
        with Session(engine) as session:
            session.add(Person(id=1, name=f"in db {number}"))
            session.commit()
    for _ in range(3):
        assert [name_of(e) for e in engines] == ["in db 0", "in db 1"]


def test_hooks_registered_after_the_cache_are_never_skipped(db: Engine, qc: QueryCache) -> None:
    def only_group_two(state: Any) -> None:
        if state.is_select:
            state.statement = state.statement.options(with_loader_criteria(Person, Person.grp == 2))

    def ids() -> list[int]:
        with Session(db) as session:
            stmt = select(Person).order_by(Person.id).options(cache())
            return [p.id for p in session.scalars(stmt)]

    assert ids() == [1, 2, 3, 4]
    ids()
    event.listen(Session, "do_orm_execute", only_group_two)
    try:
        assert ids() == [1, 3]  # the later hook ran: the cache stayed out of the way
        assert qc.stats.overall.bypasses["do_orm_execute hooks run after the cache"] == 1
        qc.install()  # installing again puts the cache last
        ids()
        assert ids() == [1, 3]
    finally:
        event.remove(Session, "do_orm_execute", only_group_two)


def test_values_outside_the_sql_are_part_of_the_key(db: Engine, qc: QueryCache) -> None:
    def group(stmt: Any) -> list[int]:
        with Session(db) as session:
            return [p.id for p in session.scalars(stmt.order_by(Person.id).options(cache()))]

    def by_lambda(value: int) -> Any:
        if value == 1:
            return select(Person).options(with_loader_criteria(Person, lambda c: c.grp == 1))
        return select(Person).options(with_loader_criteria(Person, lambda c: c.grp == 2))

    from sqlalchemy import bindparam

    for _ in range(2):
        assert group(by_lambda(1)) == [2, 4]
        assert group(by_lambda(2)) == [1, 3]
        by_params = select(Person).where(Person.grp == bindparam("g"))
        assert group(by_params.params(g=1)) == [2, 4]
        assert group(by_params.params(g=2)) == [1, 3]


@SERVER_DATABASES
def test_cached_functions_key_by_database(db: Engine, backend: Backend, qc: QueryCache) -> None:
    other = create_engine("sqlite://")
    ReviewBase.metadata.create_all(other)
    with Session(other) as session:
        session.add(Person(id=1, name="sqlite's"))
        session.commit()

    @cached(name="first")
    def first(session: Session) -> str:
        return str(session.scalar(select(Person.name).where(Person.id == 1)))

    for _ in range(2):
        with Session(db) as a, Session(other) as b:
            assert (first(a), first(b)) == ("p1", "sqlite's")
    other.dispose()


@pytest.mark.parametrize(  # schemas: PostgreSQL
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)
def test_schema_translate_maps_never_share_entries(backend: Backend, qc: QueryCache) -> None:
    base = create_engine(backend.sync_url)
    schemas = ("r_tenant_a", "r_tenant_b")
    with base.begin() as conn:
        for schema in schemas:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    tenants = [base.execution_options(schema_translate_map={None: s}) for s in schemas]
    try:
        for schema, tenant in zip(schemas, tenants, strict=True):
            Person.__table__.create(tenant)  # type: ignore[attr-defined]
            with Session(tenant) as session:
                session.add(Person(id=1, name=f"in {schema}"))
                session.commit()
        for _ in range(3):
            assert [name_of(t) for t in tenants] == ["in r_tenant_a", "in r_tenant_b"]
        with Session(base) as session:  # per session, through the connection's options
            conn = session.connection(
                execution_options={"schema_translate_map": {None: schemas[1]}}
            )
            assert conn is not None
            stmt = select(Person).where(Person.id == 1).options(cache())
            assert session.scalars(stmt).one().name == "in r_tenant_b"
    finally:
        with base.begin() as conn:
            for schema in schemas:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        base.dispose()


@pytest.mark.parametrize(  # schemas: PostgreSQL
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)
def test_translate_map_of_schema_none_is_not_the_schema_named_none(
    backend: Backend, qc: QueryCache
) -> None:
    # {None: s} moves the tables without a schema to s; {"None": s} moves only tables in a
    # schema named "None", so Person stays in public. Equal as text, they must not share keys.
    base = create_engine(backend.sync_url)
    with base.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS r_tenant_n CASCADE"))
        conn.execute(text("CREATE SCHEMA r_tenant_n"))
    # Two engines: SQLAlchemy refuses to switch between these maps on one compiled cache.
    moved = create_engine(
        backend.sync_url, execution_options={"schema_translate_map": {None: "r_tenant_n"}}
    )
    named = create_engine(
        backend.sync_url, execution_options={"schema_translate_map": {"None": "r_tenant_n"}}
    )
    try:
        for engine, where in ((moved, "r_tenant_n"), (base, "public")):
            Person.__table__.drop(engine, checkfirst=True)  # type: ignore[attr-defined]
            Person.__table__.create(engine)  # type: ignore[attr-defined]
            with Session(engine) as session:
                session.add(Person(id=1, name=f"in {where}"))
                session.commit()
        for _ in range(3):
            assert (name_of(moved), name_of(named)) == ("in r_tenant_n", "in public")
    finally:
        with base.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS r_tenant_n CASCADE"))
        Person.__table__.drop(base, checkfirst=True)  # type: ignore[attr-defined]
        for engine in (base, moved, named):
            engine.dispose()


POSTGRESQL = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)
MARIADB = pytest.mark.parametrize(
    "backend", [pytest.param("mariadb", marks=pytest.mark.mariadb)], indirect=True
)


@POSTGRESQL
def test_session_bound_to_a_repeatable_read_connection_is_not_served(
    db: Engine, backend: Backend, qc: QueryCache
) -> None:
    warm(db)
    repeatable = create_engine(backend.sync_url, isolation_level="REPEATABLE READ")
    try:
        with repeatable.connect() as conn:
            conn.begin()
            conn.execute(select(Person.id)).all()  # the snapshot is fixed here, before the write
            with Session(db) as writer:
                writer.execute(update(Person).where(Person.id == 1).values(name="v1"))
                writer.commit()
            with Session(bind=conn) as session:
                stmt = select(Person).where(Person.id == 1).options(cache())
                assert session.scalars(stmt).one().name == "p1"  # its snapshot, not stored
        assert name_of(db) == "v1"
    finally:
        repeatable.dispose()


@POSTGRESQL
def test_cached_function_in_an_older_snapshot_is_not_stored(
    db: Engine, backend: Backend, qc: QueryCache
) -> None:
    @cached(name="first-name")
    def first(session: Session) -> str:
        return str(session.scalar(select(Person.name).where(Person.id == 1)))

    repeatable = create_engine(backend.sync_url, isolation_level="REPEATABLE READ")
    try:
        with Session(db) as session:
            first(session)  # learn
        with Session(repeatable) as reader:
            reader.execute(select(Person.id)).all()  # snapshot fixed
            with Session(db) as writer:
                writer.execute(update(Person).where(Person.id == 1).values(name="v1"))
                writer.commit()
            assert first(reader) == "p1"
        with Session(db) as session:
            assert first(session) == "v1"
    finally:
        repeatable.dispose()


@MARIADB
def test_replace_follows_its_delete_cascade(db: Engine, qc: QueryCache) -> None:
    with Session(db) as session:
        session.add(Badge(id=1, person_id=1))
        session.commit()

    def badges() -> list[int]:
        with Session(db) as session:
            stmt = select(Badge).where(Badge.person_id == 1).options(cache())
            return [b.id for b in session.scalars(stmt)]

    badges()
    assert badges() == [1]
    with Session(db) as session:
        session.execute(
            text("REPLACE INTO r_people (id, name, grp, balance) VALUES (1, 'again', 1, 0)")
        )
        session.commit()
    assert badges() == []


@MARIADB
def test_two_phase_commits_invalidate(db: Engine, qc: QueryCache) -> None:
    warm(db)
    with db.connect() as conn:
        transaction = conn.begin_twophase()
        conn.execute(update(Person).where(Person.id == 1).values(name="xa"))
        transaction.prepare()
        transaction.commit()
    assert name_of(db) == "xa"
