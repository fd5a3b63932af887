"""Repository and AsyncRepository on SQLite, PostgreSQL and MariaDB, sync and asyncio drivers.

Query counts are the oracle for declared loads: the count of a read with its loads declared
must not grow with the number of parents (1, 10, 100), while the same read without them does.
"""

from __future__ import annotations

import base64
import inspect as pyinspect
import json
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import inspect, select

from ormtune.exceptions import (
    ConfigurationError,
    DuplicateKeyError,
    ForeignKeyError,
    InvalidCursorError,
    NotFoundError,
    UnknownFieldError,
)
from ormtune.repository import AsyncRepository, Repository
from ormtune.repository._query import decode_cursor
from ormtune.testing import assert_num_queries
from tests.integrity_models import Account, Job, Payment, Tag, User

if TYPE_CHECKING:
    from tests.integrity_harness import Harness


def seed(session: Any, users: int, payments_each: int = 2) -> None:
    """``users`` users, each with one job (two tags) and ``payments_each`` payments."""
    tags = [Tag(id=1, name="red"), Tag(id=2, name="blue")]
    session.add_all(tags)
    for i in range(1, users + 1):
        user = User(id=i, email=f"u{i}@example.com", name=f"user {i}")
        job = Job(id=i, title=f"job {i}", client=user, tags=tags)
        user.payments = [
            Payment(id=i * 100 + j, amount=(i * 7 + j * 3) % 50, job=job)
            for j in range(payments_each)
        ]
        session.add(user)
    session.flush()


class UserRepository(Repository[User]):
    load = [User.payments, (User.jobs, Job.tags)]


class PaymentRepository(Repository[Payment]):
    load = [Payment.user, (Payment.job, Job.client)]


def test_the_model_comes_from_the_type_argument() -> None:
    assert UserRepository.model is User

    class Payments(AsyncRepository[Payment]):
        pass

    assert Payments.model is Payment


def test_sync_and_async_repositories_have_the_same_methods_and_signatures() -> None:
    public = {
        name
        for name, value in vars(Repository).items()
        if not name.startswith("_") and callable(value)
    }
    assert public <= set(vars(AsyncRepository))
    for name in public:
        sync = pyinspect.signature(getattr(Repository, name))
        async_ = pyinspect.signature(getattr(AsyncRepository, name))
        assert sync == async_, name
        assert pyinspect.iscoroutinefunction(getattr(AsyncRepository, name)), name


async def test_get_get_or_none_and_not_found(integrity_db: Harness) -> None:
    await integrity_db.run(lambda s: seed(s, 2))
    await integrity_db.fresh()
    repo = integrity_db.repo(User)
    user = await repo.get(1)
    assert user.email == "u1@example.com"
    assert await repo.get_or_none(99) is None
    with pytest.raises(NotFoundError, match=r"No User with key 99") as info:
        await repo.get(99)
    assert info.value.model is User
    assert info.value.key == 99
    assert isinstance(info.value, LookupError)


async def test_get_answers_from_the_identity_map_once_its_loads_are_done(
    integrity_db: Harness,
) -> None:
    await integrity_db.run(lambda s: seed(s, 1))
    await integrity_db.fresh()
    repo = integrity_db.repo(User, load=[User.payments])
    with assert_num_queries(2):  # the user, its payments
        user = await repo.get(1)
    with assert_num_queries(0):
        assert await repo.get(1) is user
        assert [p.id for p in user.payments] == [100, 101]


async def test_get_many_keeps_the_order_given_and_skips_missing_keys(integrity_db: Harness) -> None:
    await integrity_db.run(lambda s: seed(s, 5))
    await integrity_db.fresh()
    with assert_num_queries(1):
        users = await integrity_db.repo(User, load=()).get_many([4, 99, 2, 5])
    assert [u.id for u in users] == [4, 2, 5]


async def test_list_filters_orders_and_paginates_by_offset(integrity_db: Harness) -> None:
    await integrity_db.run(lambda s: seed(s, 6))
    await integrity_db.fresh()
    repo = integrity_db.repo(Payment, load=())
    everything = await repo.list(order_by=["-amount"])
    amounts = [p.amount for p in everything]
    assert amounts == sorted(amounts, reverse=True)
    assert len(everything) == 12
    big = await repo.list(filters={"amount__gte": 20, "status": "pending"}, order_by=["amount"])
    assert big
    assert all(p.amount >= 20 for p in big)
    assert [p.amount for p in big] == sorted(p.amount for p in big)
    in_list = await repo.list(filters={"user_id__in": [2, 3]})
    assert {p.user_id for p in in_list} == {2, 3}
    assert [p.id for p in in_list] == sorted(p.id for p in in_list)  # primary key tie-breaker
    assert await repo.list(filters={"job_id": None}) == []
    page2 = await repo.list(order_by=["id"], limit=5, offset=5)
    assert [p.id for p in page2] == [p.id for p in sorted(everything, key=lambda p: p.id)][5:10]
    expression = await repo.list(Payment.amount < 5)
    assert all(p.amount < 5 for p in expression)


async def test_unknown_fields_and_operators_are_named_with_the_valid_ones(
    integrity_db: Harness,
) -> None:
    repo = integrity_db.repo(Payment)
    with pytest.raises(UnknownFieldError, match=r"Payment has no field 'amout'") as info:
        await repo.list(filters={"amout__gt": 3})
    assert info.value.field == "amout"
    assert "amount" in info.value.valid
    assert "valid fields: amount, deleted_at, id, job_id, status, user_id" in str(info.value)
    with pytest.raises(UnknownFieldError, match=r"Unknown filter operator 'bigger'.*valid"):
        await repo.list(filters={"amount__bigger": 3})
    with pytest.raises(UnknownFieldError, match=r"'colour'"):
        await repo.list(order_by=["-colour"])
    with pytest.raises(UnknownFieldError, match=r"'nickname'.*in create\(\)"):
        await integrity_db.repo(User).create(email="x@example.com", name="x", nickname="x")
    with pytest.raises(ValueError, match=r"no field"):  # also a plain ValueError
        await repo.count(filters={"nope": 1})


@pytest.mark.parametrize("parents", [1, 10, 100])
async def test_declared_loads_cost_the_same_queries_for_any_number_of_parents(
    integrity_db: Harness, parents: int
) -> None:
    await integrity_db.run(lambda s: seed(s, parents))
    await integrity_db.fresh()

    def walk(users: list[User]) -> list[tuple[int, list[int], list[list[int]]]]:
        return [
            (u.id, [p.id for p in u.payments], [[t.id for t in j.tags] for j in u.jobs])
            for u in users
        ]

    # users, payments (selectin), jobs (selectin), tags (selectin)
    with assert_num_queries(4):
        users = await integrity_db.repo(User, load=UserRepository.load).list()
        graph = walk(users)  # nothing left to load lazily
    assert len(graph) == parents
    assert graph[0] == (1, [100, 101], [[1, 2]])
    await integrity_db.fresh()

    # control: the same walk with no declared loads lazy-loads per parent
    def control(session: Any) -> list[tuple[int, list[int], list[list[int]]]]:
        return walk(list(session.scalars(select(User).order_by(User.id))))

    with assert_num_queries(1 + 3 * parents):
        assert await integrity_db.run(control) == graph
    await integrity_db.fresh()

    # many-to-one paths are joined: payments with user and job.client in one statement
    with assert_num_queries(1):
        payments = await integrity_db.repo(Payment, load=PaymentRepository.load).list()
        seen = [(p.user.email, p.job.client.id if p.job else None) for p in payments]
    assert len(seen) == 2 * parents


async def test_a_call_can_override_the_declared_loads(integrity_db: Harness) -> None:
    await integrity_db.run(lambda s: seed(s, 3))
    await integrity_db.fresh()
    repo = integrity_db.repo(User, load=UserRepository.load)
    with assert_num_queries(2):  # users + payments only
        users = await repo.list(load=[User.payments])
        assert sum(len(u.payments) for u in users) == 6
    await integrity_db.fresh()
    with assert_num_queries(1):
        await repo.list(load=())


async def test_a_load_must_name_a_relationship(integrity_db: Harness) -> None:
    with pytest.raises(ConfigurationError, match=r"not one"):
        await integrity_db.repo(User, load=[User.email]).list()


async def test_keyset_pages_visit_every_row_once_in_order(integrity_db: Harness) -> None:
    await integrity_db.run(lambda s: seed(s, 13))  # 26 payments
    await integrity_db.fresh()
    repo = integrity_db.repo(Payment, load=())
    expected = [p.id for p in await repo.list(order_by=["-amount", "id"])]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        with assert_num_queries(1):
            page = await repo.page(order_by=["-amount"], limit=10, after=cursor)
        pages += 1
        seen.extend(p.id for p in page.items)
        if not page.has_more:
            break
        cursor = page.next_cursor
    assert seen == expected
    assert pages == 3
    first = await repo.page(order_by=["-amount"], limit=10)
    assert first.next_cursor is not None
    with pytest.raises(InvalidCursorError, match=r"made for ordering"):
        await repo.page(order_by=["amount"], limit=10, after=first.next_cursor)
    with pytest.raises(InvalidCursorError, match=r"Not a valid pagination cursor"):
        await repo.page(order_by=["-amount"], after="%%%garbage")
    with pytest.raises(ConfigurationError, match=r"nullable"):
        await repo.page(order_by=["job_id"])


def _cursor(signature: list[str], values: list[object]) -> str:
    raw = json.dumps([signature, values]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "values",
    [
        [None, 1],  # a null in a non-null keyset
        [True, 1],  # a boolean for a number
        [2**31, 1],  # wider than the INTEGER column (SQLite: 64 bits, so beyond those)
        [2**70, 1],
        [1.5, 1],  # a float for an integer
        ["7", 1],
        [[1], 1],
        [{"a": 1}, 1],
    ],
    ids=repr,
)
async def test_a_tampered_cursor_is_an_invalid_cursor(
    integrity_db: Harness, values: list[object]
) -> None:
    await integrity_db.run(lambda s: seed(s, 2))
    repo = integrity_db.repo(Payment, load=())
    if values[0] == 2**31 and integrity_db.backend == "sqlite":
        values = [2**63, 1]
    with pytest.raises(InvalidCursorError, match=r"Not a valid pagination cursor"):
        await repo.page(order_by=["-amount"], after=_cursor(["-amount", "id"], values))


def test_cursor_values_at_the_edge_of_the_column_are_valid() -> None:
    mapper = inspect(Payment)
    terms = [(Payment.amount, True, "amount"), (Payment.id, False, "id")]
    cursor = _cursor(["-amount", "id"], [2**31 - 1, -(2**31)])
    assert decode_cursor(mapper, terms, cursor, "postgresql") == [2**31 - 1, -(2**31)]
    wide = _cursor(["-amount", "id"], [2**63 - 1, 1])
    assert decode_cursor(mapper, terms, wide, "sqlite") == [2**63 - 1, 1]
    with pytest.raises(InvalidCursorError):
        decode_cursor(mapper, terms, wide, "mariadb")


async def test_count_exists_and_list_and_count(integrity_db: Harness) -> None:
    await integrity_db.run(lambda s: seed(s, 4))
    await integrity_db.fresh()
    repo = integrity_db.repo(Payment, load=())
    with assert_num_queries(1):
        assert await repo.count() == 8
    assert await repo.count(filters={"user_id": 2}) == 2
    with assert_num_queries(1):
        assert await repo.exists(filters={"user_id": 3})
    assert not await repo.exists(filters={"user_id": 30})
    with assert_num_queries(1):
        items, total = await repo.list_and_count(order_by=["id"], limit=3, offset=2)
    assert total == 8
    assert [p.id for p in items] == [200, 201, 300]
    with assert_num_queries(2):  # past the end: a page of nothing, then a count
        assert await repo.list_and_count(limit=3, offset=20) == ([], 8)
    with assert_num_queries(4):  # one query, plus one per declared collection (selectin)
        users, total = await integrity_db.repo(User, load=UserRepository.load).list_and_count(
            limit=2
        )
    assert (len(users), total) == (2, 4)


async def test_create_update_and_translated_errors(integrity_db: Harness) -> None:
    repo = integrity_db.repo(User)
    user = await repo.create(email="a@example.com", name="A")
    assert user.id is not None
    with pytest.raises(DuplicateKeyError) as info:
        await repo.create(email="a@example.com", name="again")
    assert info.value.constraint == "uq_users_email_live"
    assert info.value.columns == ("email",)
    assert info.value.table == "users"
    assert "uq_users_email_live" in str(info.value)
    assert info.value.__cause__ is not None
    await integrity_db.rollback()

    accounts = integrity_db.repo(Account)
    owner = await repo.create(email="b@example.com", name="B")
    await accounts.create(iban="DE00", user_id=owner.id)
    with pytest.raises(DuplicateKeyError) as dup:
        await accounts.create(iban="DE00", user_id=owner.id)
    assert (dup.value.constraint, dup.value.columns) == ("uq_accounts_iban", ("iban",))
    await integrity_db.rollback()
    with pytest.raises(ForeignKeyError) as fk:
        await accounts.create(iban="FR00", user_id=12345)
    assert fk.value.columns == ("user_id",)
    assert fk.value.table == "accounts"
    if integrity_db.backend != "sqlite":  # SQLite does not name the failing constraint
        assert fk.value.constraint == "fk_accounts_user"
    await integrity_db.rollback()

    user = await repo.create(email="c@example.com", name="C")
    updated = await repo.update(user.id, name="Cee")
    assert updated is user
    assert user.name == "Cee"
    with pytest.raises(NotFoundError):
        await repo.update(999, name="x")


async def test_create_many_is_one_statement_per_chunk(integrity_db: Harness) -> None:
    owner = await integrity_db.repo(User).create(email="o@example.com", name="O")
    rows = [{"id": i, "amount": i % 13, "user_id": owner.id} for i in range(1, 251)]
    with assert_num_queries(3):
        created = await integrity_db.repo(Payment).create_many(rows, chunk_size=100)
    assert [p.id for p in created] == list(range(1, 251))
    assert created[5].status == "pending"  # defaults came back with RETURNING
    assert await integrity_db.repo(Payment).count() == 250


async def test_update_many_and_upsert(integrity_db: Harness) -> None:
    await integrity_db.run(lambda s: seed(s, 3))
    await integrity_db.fresh()
    payments = integrity_db.repo(Payment, load=())
    with assert_num_queries(1):
        assert await payments.update_many({"status": "paid"}, filters={"user_id__in": [1, 2]}) == 4
    assert await payments.count(filters={"status": "paid"}) == 4
    users = integrity_db.repo(User, load=())
    result = await users.upsert(
        [
            {"id": 1, "email": "u1@example.com", "name": "renamed"},
            {"id": 50, "email": "new@example.com", "name": "new"},
        ],
        conflict=["id"],
    )
    assert [(u.id, u.name) for u in result] == [(1, "renamed"), (50, "new")]
    await integrity_db.fresh()
    assert (await users.get(1)).name == "renamed"
    assert (await users.get(50)).email == "new@example.com"
    assert await users.count() == 4


async def test_delete_soft_deletes_and_restore_and_hard_delete(integrity_db: Harness) -> None:
    await integrity_db.run(lambda s: seed(s, 3))
    await integrity_db.fresh()
    repo = integrity_db.repo(Payment, load=())
    await repo.delete(100)
    with pytest.raises(NotFoundError):
        await repo.get(100)
    assert (await repo.get(100, include_deleted=True)).deleted_at is not None
    assert await repo.count() == 5
    assert await repo.count(include_deleted=True) == 6
    restored = await repo.restore(100)
    assert restored.deleted_at is None
    assert await repo.count() == 6
    await repo.delete(101)
    await repo.hard_delete(101)
    assert await repo.get_or_none(101, include_deleted=True) is None
    assert await repo.delete_where(filters={"user_id": 2}) == 2
    assert await repo.count() == 3
    assert await repo.count(include_deleted=True) == 5
    with pytest.raises(ConfigurationError, match=r"SoftDeleteMixin"):
        await integrity_db.repo(Account).restore(1)


async def test_accounts_without_soft_delete_are_deleted_for_real(integrity_db: Harness) -> None:
    owner = await integrity_db.repo(User).create(email="o@example.com", name="O")
    accounts = integrity_db.repo(Account)
    account = await accounts.create(iban="X1", user_id=owner.id)
    await accounts.create(iban="X2", user_id=owner.id)
    await accounts.delete(account)
    assert await accounts.count() == 1
    assert await accounts.delete_where(filters={"iban": "X2"}) == 1
    assert await accounts.count() == 0
    with pytest.raises(ForeignKeyError):
        await integrity_db.repo(User).hard_delete(owner.id)  # its jobs... none; accounts none
        await integrity_db.repo(Account).create(iban="X3", user_id=owner.id)


async def test_instances_taken_out_by_a_soft_delete_can_be_restored_or_hard_deleted(
    integrity_db: Harness,
) -> None:
    await integrity_db.run(lambda s: seed(s, 1))
    await integrity_db.fresh()
    repo = integrity_db.repo(Payment, load=())
    payment = await repo.get(100)
    await repo.delete(payment)
    assert await integrity_db.run(lambda s: payment not in s)  # detached by the flush
    assert payment.amount == 7  # loaded attributes stay readable
    restored = await repo.restore(payment)  # loaded again, by its key
    assert restored is not payment
    assert restored.deleted_at is None
    await repo.delete(restored)
    await repo.hard_delete(restored)
    assert await repo.count(include_deleted=True) == 1
