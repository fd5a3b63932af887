"""The audit log: a test per action kind, bulk statements included, and rollback. SQLite,
PostgreSQL and MariaDB; sync and asyncio drivers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import ResourceClosedError

import ormtune
from ormtune.exceptions import ConfigurationError
from ormtune.integrity import audit_context, record_audit_log
from tests.integrity_models import Account, AuditLog, Employee, Manager, Payment, User

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.orm import Session

    from ormtune.querylog import Registration
    from tests.integrity_harness import Harness


@pytest.fixture
def db(integrity_db: Harness) -> Harness:
    return integrity_db


@pytest.fixture
def audit() -> Iterator[Registration]:
    registration = record_audit_log(
        AuditLog,
        mask_columns=["password", "accounts.token"],
        exclude_columns=["created_at", "updated_at", "users.updated_by"],
    )
    try:
        yield registration
    finally:
        registration.close()


async def entries(db: Harness) -> list[tuple[str, str | None, str, dict[str, Any]]]:
    def read(session: Session) -> list[tuple[str, str | None, str, dict[str, Any]]]:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id))
        return [(r.table_name, r.row_key, r.action, r.changes) for r in rows]

    return await db.run(read)


async def make_user(db: Harness, user_id: int = 1, **extra: Any) -> User:
    return await db.repo(User).create(
        id=user_id, email=f"u{user_id}@example.com", name=f"user {user_id}", **extra
    )


async def clear(db: Harness) -> None:
    table: Any = AuditLog.__table__
    await db.run(lambda s: s.execute(table.delete()))


@pytest.mark.usefixtures("audit")
async def test_insert_records_actor_request_and_values_masking_secrets(db: Harness) -> None:
    with audit_context(actor="alice", request_id="req-1"):
        await make_user(db, password="hunter2")
        await db.commit()

    def read(session: Session) -> AuditLog:
        return session.scalars(select(AuditLog)).one()

    log = await db.run(read)
    assert (log.table_name, log.row_key, log.action) == ("users", "1", "insert")
    assert (log.actor, log.request_id) == ("alice", "req-1")
    assert log.occurred_at is not None
    assert log.changes["email"] == {"old": None, "new": "u1@example.com"}
    assert log.changes["password"] == {"old": None, "new": "***"}
    assert log.changes["created_by"] == {"old": None, "new": "alice"}
    assert "created_at" not in log.changes  # excluded everywhere
    assert "updated_by" not in log.changes  # excluded in users


@pytest.mark.usefixtures("audit")
async def test_update_records_only_the_changed_columns(db: Harness) -> None:
    await make_user(db)
    await db.commit()
    await clear(db)
    await db.repo(User).update(1, name="renamed", password="new")
    await db.commit()
    assert await entries(db) == [
        (
            "users",
            "1",
            "update",
            {
                "name": {"old": "user 1", "new": "renamed"},
                "password": {"old": "***", "new": "***"},
            },
        )
    ]


@pytest.mark.usefixtures("audit")
async def test_delete_soft_delete_and_restore(db: Harness) -> None:
    await make_user(db)
    await db.repo(Account).create(id=1, iban="DE1", token="t0ken", user_id=1)
    await db.commit()
    await clear(db)
    with audit_context(actor="admin"):
        await db.repo(Account).delete(1)
        await db.repo(User).delete(1)
        await db.repo(User).restore(1)
    await db.commit()
    logged = await entries(db)
    assert [(t, k, a) for t, k, a, _ in logged] == [
        ("accounts", "1", "delete"),
        ("users", "1", "soft_delete"),
        ("users", "1", "restore"),
    ]
    assert logged[0][3]["iban"] == {"old": "DE1", "new": None}
    assert logged[0][3]["token"] == {"old": "***", "new": None}
    assert logged[1][3]["deleted_by"] == {"old": None, "new": "admin"}
    assert logged[1][3]["deleted_at"]["old"] is None
    assert logged[1][3]["deleted_at"]["new"] is not None
    assert logged[2][3]["deleted_at"]["new"] is None


@pytest.mark.usefixtures("audit")
async def test_bulk_update_records_each_matched_row(db: Harness) -> None:
    await make_user(db)
    await db.repo(Payment).create_many([{"id": i, "amount": i, "user_id": 1} for i in (1, 2, 3)])
    await db.repo(Payment).delete(3)
    await db.commit()
    await clear(db)
    assert await db.repo(Payment).update_many({"status": "paid"}, filters={"amount__gte": 2}) == 1
    await db.run(
        lambda s: s.execute(
            update(Payment).where(Payment.id == 1).values(amount=Payment.amount + 10)
        )
    )
    await db.commit()
    assert await entries(db) == [
        ("payments", "2", "update", {"status": {"old": "pending", "new": "paid"}}),
        ("payments", "1", "update", {"amount": {"old": 1, "new": 11}}),
    ]


@pytest.mark.usefixtures("audit")
async def test_bulk_update_by_primary_key(db: Harness) -> None:
    await make_user(db)
    await db.repo(Payment).create_many([{"id": i, "amount": i, "user_id": 1} for i in (1, 2)])
    await db.commit()
    await clear(db)
    await db.run(
        lambda s: s.execute(update(Payment), [{"id": 1, "amount": 5}, {"id": 2, "amount": 2}])
    )
    await db.commit()
    assert await entries(db) == [("payments", "1", "update", {"amount": {"old": 1, "new": 5}})]


@pytest.mark.usefixtures("audit")
async def test_bulk_delete_and_bulk_soft_delete(db: Harness) -> None:
    await make_user(db)
    await db.repo(Account).create_many(
        [{"id": 1, "iban": "A", "user_id": 1}, {"id": 2, "iban": "B", "user_id": 1}]
    )
    await db.repo(Payment).create_many([{"id": 7, "amount": 1, "user_id": 1}])
    await db.commit()
    await clear(db)
    assert await db.repo(Account).delete_where() == 2
    assert await db.repo(Payment).delete_where(filters={"user_id": 1}) == 1
    await db.commit()
    logged = await entries(db)
    assert [(t, k, a) for t, k, a, _ in logged] == [
        ("accounts", "1", "delete"),
        ("accounts", "2", "delete"),
        ("payments", "7", "soft_delete"),
    ]
    assert logged[0][3]["iban"] == {"old": "A", "new": None}


@pytest.mark.usefixtures("audit")
async def test_create_many_records_every_row_with_its_key(db: Harness) -> None:
    await make_user(db)
    await db.commit()
    await clear(db)
    created = await db.repo(Account).create_many(
        [{"iban": f"I{i}", "token": "secret", "user_id": 1} for i in range(3)]
    )
    keys = [str(a.id) for a in created]
    await db.commit()
    logged = await entries(db)
    assert [(t, k, a) for t, k, a, _ in logged] == [("accounts", key, "insert") for key in keys]
    assert logged[0][3]["token"] == {"old": None, "new": "***"}
    assert logged[2][3]["iban"] == {"old": None, "new": "I2"}


@pytest.mark.usefixtures("audit")
async def test_upsert_records_inserts_and_updates_apart(db: Harness) -> None:
    await make_user(db, 1)
    await db.commit()
    await clear(db)
    await db.repo(User).upsert(
        [
            {"email": "u1@example.com", "name": "changed"},
            {"email": "u2@example.com", "name": "fresh"},
        ],
        conflict=["email"],
    )
    await db.commit()
    logged = await entries(db)
    assert [(t, a) for t, _, a, _ in logged] == [("users", "update"), ("users", "insert")]
    assert logged[0][1] == "1"
    assert logged[0][3] == {"name": {"old": "user 1", "new": "changed"}}
    assert logged[1][3]["email"] == {"old": None, "new": "u2@example.com"}


@pytest.mark.usefixtures("audit")
async def test_a_bulk_insert_without_keys_learns_them_by_returning(db: Harness) -> None:
    await make_user(db)
    await db.commit()
    await clear(db)

    def bulk(session: Session) -> Any:
        result = session.execute(
            insert(Account), [{"iban": "Y", "user_id": 1}, {"iban": "Z", "user_id": 1}]
        )
        with pytest.raises(ResourceClosedError):
            result.all()  # the caller's result is what it would have been: no rows
        single: Any = session.execute(insert(Account).values(iban="X", user_id=1))
        return single.inserted_primary_key[0]

    single_key = await db.run(bulk)
    await db.commit()
    accounts = await db.run(lambda s: {a.iban: str(a.id) for a in s.scalars(select(Account))})
    logged = await entries(db)
    assert [(t, k, a) for t, k, a, _ in logged] == [
        ("accounts", accounts["Y"], "insert"),
        ("accounts", accounts["Z"], "insert"),
        ("accounts", str(single_key), "insert"),
    ]
    assert logged[1][3]["id"] == {"old": None, "new": int(accounts["Z"])}
    assert logged[1][3]["iban"] == {"old": None, "new": "Z"}
    assert logged[2][3]["iban"] == {"old": None, "new": "X"}


@pytest.mark.usefixtures("audit")
async def test_inserts_whose_keys_cannot_be_known_are_recorded_without_them(db: Harness) -> None:
    await make_user(db)
    await db.commit()
    await clear(db)
    # a multi-row VALUES insert: no driver reports its keys and ormtune adds no RETURNING
    await db.run(
        lambda s: s.execute(
            insert(Account).values([{"iban": "V1", "user_id": 1}, {"iban": "V2", "user_id": 1}])
        )
    )
    # a database without INSERT ... RETURNING (MySQL, MariaDB before 10.5, SQLite before
    # 3.35), as SQLAlchemy's dialect describes it
    dialect = db.sync_session.get_bind().dialect
    saved = dialect.insert_returning, dialect.insert_executemany_returning
    dialect.insert_returning = dialect.insert_executemany_returning = False
    try:
        await db.run(lambda s: s.execute(insert(Account), [{"iban": "Z", "user_id": 1}]))
    finally:
        dialect.insert_returning, dialect.insert_executemany_returning = saved
    await db.commit()
    assert await entries(db) == [
        (
            "accounts",
            None,
            "insert",
            {"iban": {"old": None, "new": iban}, "user_id": {"old": None, "new": 1}},
        )
        for iban in ("V1", "V2", "Z")
    ]


def upsert_of_accounts(backend: str) -> Any:
    """INSERT ... ON CONFLICT (iban) / ON DUPLICATE KEY that sets ``token`` to the iban, in
    the dialect's own words (the repository's ``upsert`` gives the audit log its keys; this
    does not)."""
    if backend == "mariadb":
        statement = mysql.insert(Account)
        return statement.on_duplicate_key_update(token=statement.inserted.iban)
    dialect = postgresql if backend == "postgresql" else sqlite
    upsert = dialect.insert(Account)
    return upsert.on_conflict_do_update(
        index_elements=["iban"], set_={"token": upsert.excluded.iban}
    )


@pytest.mark.usefixtures("audit")
async def test_a_raw_upsert_without_keys_is_recorded_as_an_upsert(db: Harness) -> None:
    await make_user(db)
    await db.repo(Account).create(id=1, iban="A", user_id=1)
    await db.commit()
    await clear(db)
    statement = upsert_of_accounts(db.backend)
    rows = [{"iban": "A", "user_id": 1}, {"iban": "B", "user_id": 1}]
    await db.run(lambda s: s.execute(statement, rows))
    await db.commit()
    # no RETURNING is added: keys alone could not tell the update of A from the insert of B
    assert await entries(db) == [
        (
            "accounts",
            None,
            "upsert",
            {"iban": {"old": None, "new": iban}, "user_id": {"old": None, "new": 1}},
        )
        for iban in ("A", "B")
    ]
    tokens = await db.run(lambda s: dict(s.execute(select(Account.iban, Account.token)).all()))
    assert tokens == {"A": "A", "B": None}


@pytest.mark.usefixtures("audit")
async def test_old_values_of_expired_columns_are_read_once_per_table(db: Harness) -> None:
    await make_user(db, 1)
    await make_user(db, 2)
    await db.repo(Account).create(id=1, iban="DE1", token="t", user_id=1)
    await db.repo(Account).create(id=2, iban="DE2", token="t", user_id=2)
    await db.commit()  # expires every loaded attribute
    await clear(db)

    def change(session: Session) -> None:
        users = session.scalars(select(User).order_by(User.id)).all()
        accounts = session.scalars(select(Account).order_by(Account.id)).all()
        session.expire_all()  # reading an attribute now would load the row: set them blind
        for number, user in enumerate(users, 1):
            user.name = f"renamed {number}"
        accounts[0].iban = "DE9"
        session.delete(accounts[1])
        with ormtune.capture() as log:
            session.flush()
        # ormtune's reads: one per table, by key (SQLAlchemy refreshes each expired instance
        # it writes on its own, one row at a time)
        batched = [e.tables for e in log if e.kind == "select" and " IN (" in e.sql]
        assert sorted(batched) == [("accounts",), ("users",)]

    await db.run(change)
    await db.commit()
    logged = sorted(await entries(db), key=lambda e: (e[0], e[1] or ""))  # a flush's order
    assert [(t, k, a) for t, k, a, _ in logged] == [
        ("accounts", "1", "update"),
        ("accounts", "2", "delete"),
        ("users", "1", "update"),
        ("users", "2", "update"),
    ]
    assert logged[0][3] == {"iban": {"old": "DE1", "new": "DE9"}}
    assert logged[1][3]["iban"] == {"old": "DE2", "new": None}
    assert logged[1][3]["token"] == {"old": "***", "new": None}
    assert logged[2][3] == {"name": {"old": "user 1", "new": "renamed 1"}}
    assert logged[3][3] == {"name": {"old": "user 2", "new": "renamed 2"}}


@pytest.mark.usefixtures("audit")
async def test_no_extra_read_when_old_values_are_known(db: Harness) -> None:
    await make_user(db)
    await db.commit()
    await clear(db)

    def change(session: Session) -> None:
        user = session.get(User, 1)
        assert user is not None
        user.name = "loaded first"
        with ormtune.capture() as log:
            session.flush()
        assert [e.kind for e in log] == ["update"]

    await db.run(change)


@pytest.mark.usefixtures("audit")
async def test_joined_table_inheritance_is_logged_under_the_class_table(db: Harness) -> None:
    def work(session: Session) -> None:
        session.add_all([Employee(id=1, name="emp"), Manager(id=2, name="boss", budget=10)])
        session.flush()
        manager = session.get(Manager, 2)
        assert manager is not None
        manager.budget = 20
        manager.name = "big boss"
        session.flush()
        session.execute(update(Manager).where(Manager.id == 2).values(budget=30))
        session.execute(update(Employee).where(Employee.id == 1).values(name="clerk"))

    await db.run(work)
    await db.commit()
    logged = await entries(db)
    assert [(t, k, a) for t, k, a, _ in logged] == [
        ("employees", "1", "insert"),
        ("managers", "2", "insert"),
        ("managers", "2", "update"),
        ("managers", "2", "update"),
        ("employees", "1", "update"),
    ]
    assert logged[1][3]["name"] == {"old": None, "new": "boss"}  # the base table's column
    assert logged[1][3]["budget"] == {"old": None, "new": 10}
    assert logged[2][3] == {
        "name": {"old": "boss", "new": "big boss"},
        "budget": {"old": 10, "new": 20},
    }
    assert logged[3][3] == {"budget": {"old": 20, "new": 30}}


async def test_tables_and_masks_match_any_table_of_an_inheriting_class(db: Harness) -> None:
    registration = record_audit_log(AuditLog, tables=["employees"], mask_columns=["employees.name"])
    try:
        await db.run(lambda s: s.add(Manager(id=2, name="boss", budget=10)))
        await db.commit()
    finally:
        registration.close()
    logged = await entries(db)
    assert [(t, k, a) for t, k, a, _ in logged] == [("managers", "2", "insert")]
    assert logged[0][3]["name"] == {"old": None, "new": "***"}


@pytest.mark.usefixtures("audit")
async def test_rolled_back_changes_leave_no_rows(db: Harness) -> None:
    await make_user(db)
    await db.repo(Payment).create_many([{"id": 1, "amount": 1, "user_id": 1}])
    await db.repo(Payment).update_many({"amount": 3})
    await db.repo(Payment).delete(1)
    await db.rollback()
    assert await entries(db) == []


async def test_closing_the_registration_stops_recording(db: Harness) -> None:
    registration = record_audit_log(AuditLog)
    await make_user(db, 1)
    registration.close()
    await make_user(db, 2)
    await db.commit()
    assert [k for _, k, _, _ in await entries(db)] == ["1"]


def test_the_log_model_must_use_the_mixin() -> None:
    with pytest.raises(ConfigurationError, match=r"AuditLogMixin"):
        record_audit_log(User)  # type: ignore[arg-type]


async def test_audit_columns_come_from_the_context(db: Harness) -> None:
    with audit_context(actor="creator"):
        user = await make_user(db)
    assert (user.created_by, user.updated_by) == ("creator", "creator")
    created_at = user.created_at
    with audit_context(actor="editor"):
        await db.repo(User).update_many({"name": "bulk"})
    await db.commit()
    await db.fresh()
    again = await db.repo(User).get(1)
    assert (again.created_by, again.updated_by, again.name) == ("creator", "editor", "bulk")
    assert again.updated_at.replace(tzinfo=None) >= created_at.replace(tzinfo=None)


@pytest.mark.usefixtures("audit")
async def test_a_rolled_back_savepoint_drops_only_its_entries(db: Harness) -> None:
    def work(session: Session) -> None:
        session.add(User(id=1, email="a@example.com", name="kept"))
        session.flush()
        savepoint = session.begin_nested()
        session.add(User(id=2, email="b@example.com", name="dropped"))
        session.flush()
        savepoint.rollback()
        with session.begin_nested():
            session.add(User(id=3, email="c@example.com", name="released"))
        session.commit()

    await db.run(work)
    assert [(k, a) for _, k, a, _ in await entries(db)] == [("1", "insert"), ("3", "insert")]
