"""``ResponseCache``: whole responses served without the application, never staler than the
last commit of what they were built from; on SQLite, PostgreSQL and MariaDB, with the query
cache on memory and on Redis."""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session, selectinload
from starlette.routing import Route

import ormtune
from ormtune import CachedRoute, ConfigurationError, Identity, ResponseCache
from ormtune.backends import MemoryBackend, RedisBackend
from ormtune.caching import QueryCache
from ormtune.caching._snapshots import Snapshots, collecting
from tests.cache_models import Account, CacheBase, Employee, Payment, sample

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.conftest import Backend

HIT = "x-ormtune-cache"


@dataclass
class Harness:
    app: FastAPI
    engine: AsyncEngine
    cache: QueryCache
    client: httpx.AsyncClient
    statements: list[str]

    async def get(self, path: str, principal: str | None = None) -> httpx.Response:
        headers = {"authorization": principal} if principal is not None else {}
        return await self.client.get(path, headers=headers)

    async def commit(self, *statements: Any) -> None:
        async with AsyncSession(self.engine) as session:
            for statement in statements:
                await session.execute(statement)
            await session.commit()


def _account_json(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "payments": [str(p.amount) for p in account.payments],
    }


def make_app(engine: AsyncEngine, *, expires_in: float | None = None) -> ResponseCache:
    app = FastAPI()
    cached = ormtune.cache(ttl=60)
    writes_during_fill: list[Callable[[], Any]] = []
    app.state.writes_during_fill = writes_during_fill
    identify_calls = [0]
    app.state.identify_calls = identify_calls
    # credentials -> account id, outside the database (a session store, say); by default a
    # credential is the account id itself
    aliases: dict[str, str] = {}
    app.state.aliases = aliases

    async def account(session: AsyncSession, account_id: int) -> Account | None:
        statement = (
            select(Account)
            .where(Account.id == account_id)
            .options(selectinload(Account.payments), cached)
        )
        return (await session.scalars(statement)).one_or_none()

    async def identify(scope: Any) -> Identity | None:
        identify_calls[0] += 1
        raw = dict(scope["headers"]).get(b"authorization", b"").decode()
        raw = aliases.get(raw, raw)
        if not raw.isdigit():
            return None
        async with AsyncSession(engine) as session:
            found = await account(session, int(raw))
        if found is None or found.name == "revoked":
            return None
        expires = time.time() + expires_in if expires_in is not None else None
        return Identity(str(found.id), expires)

    def principal(request: Request) -> int:
        raw = request.headers.get("authorization", "")
        raw = aliases.get(raw, raw)
        if not raw.isdigit():
            raise HTTPException(401, "who are you?")
        return int(raw)

    @app.get("/accounts/{account_id}")
    async def get_account(account_id: int, request: Request) -> dict[str, Any]:
        principal(request)
        async with AsyncSession(engine) as session:
            found = await account(session, account_id)
            if found is None:
                raise HTTPException(404, "no such account")
            body = _account_json(found)
        for write in writes_during_fill:
            await write()
        writes_during_fill.clear()
        return body

    @app.get("/then-all/{account_id}")
    async def then_all(account_id: int) -> dict[str, Any]:
        """One account by key (row tokens), then, after the test's hooks, every account (the
        table-wide token)."""
        by_key = select(Account).where(Account.id == account_id).options(cached)
        async with AsyncSession(engine) as session:
            name = (await session.scalars(by_key)).one().name
        for write in writes_during_fill:
            await write()
        writes_during_fill.clear()
        async with AsyncSession(engine) as session:
            every = await session.scalars(select(Account).order_by(Account.id).options(cached))
            return {"one": name, "all": [a.name for a in every]}

    @app.get("/plain/{account_id}")
    async def plain(account_id: int) -> dict[str, Any]:
        async with AsyncSession(engine) as session:
            found = await session.get(Account, account_id)
            return {"name": found.name if found else None}

    @app.get("/mine")
    async def mine(request: Request) -> dict[str, Any]:
        me = principal(request)
        async with AsyncSession(engine) as session:
            found = await account(session, me)
            assert found is not None
            return _account_json(found)

    @app.get("/no-store/{account_id}")
    async def no_store(account_id: int) -> JSONResponse:
        async with AsyncSession(engine) as session:
            found = await account(session, account_id)
            assert found is not None
            return JSONResponse({"name": found.name}, headers={"cache-control": "no-store"})

    class CutShort:
        """Sends the start of its body and stops, as a stream does when the client leaves."""

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async with AsyncSession(engine) as session:
                found = await account(session, 1)
                assert found is not None
            await send({"type": "http.response.start", "status": 200, "headers": []})
            body = found.name.encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})

    app.router.routes.append(Route("/cut-short", CutShort()))

    return ResponseCache(
        app,
        routes=[
            CachedRoute("/accounts/{account_id}", ttl=60),
            CachedRoute("/plain/{account_id}"),
            CachedRoute("/then-all/{account_id}"),
            CachedRoute("/mine", private=True),
            CachedRoute("/no-store/{account_id}"),
            CachedRoute("/cut-short"),
        ],
        identify=identify,
    )


async def seeded_engine(backend: Backend) -> AsyncEngine:
    """An asyncio engine on ``backend`` with the cache tests' tables and sample rows."""
    engine = create_async_engine(backend.async_url)
    async with engine.begin() as conn:
        await conn.run_sync(CacheBase.metadata.drop_all)
        await conn.run_sync(CacheBase.metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add_all(sample())
        await session.commit()
    return engine


@pytest_asyncio.fixture(params=["memory", "redis"])
async def harness(backend: Backend, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        cache_backend: Any = RedisBackend(redis_url, prefix=prefix)
    else:
        cache_backend = MemoryBackend()
    engine = await seeded_engine(backend)
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    cache = QueryCache(cache_backend, namespace="response-test").install()
    app = make_app(engine)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Harness(app.app, engine, cache, client, statements)  # type: ignore[arg-type]
    finally:
        cache.uninstall()
        async with engine.begin() as conn:
            await conn.run_sync(CacheBase.metadata.drop_all)
        await engine.dispose()
        if isinstance(cache_backend, RedisBackend):
            await cache_backend.aclose()
            cache_backend.close()


async def test_second_request_is_served_without_the_application(harness: Harness) -> None:
    # the query cache learns a statement's shape on its first run (no snapshot then): after
    # one request, the identity and the route's queries go through it
    await harness.get("/accounts/3", "2")
    first = await harness.get("/accounts/1", "2")
    assert first.status_code == 200
    assert HIT not in first.headers
    harness.statements.clear()
    second = await harness.get("/accounts/1", "2")
    assert second.headers[HIT] == "hit"
    assert (
        second.json()
        == first.json()
        == {
            "id": 1,
            "name": "account 1",
            "payments": ["10.50", "11.50", "12.50"],
        }
    )
    assert harness.statements == []
    assert harness.cache.stats["GET /accounts/{account_id}"].hits == 1
    # shared route: another identified caller gets the same entry
    third = await harness.get("/accounts/1", "3")
    assert third.headers[HIT] == "hit"


async def test_a_commit_to_a_row_it_read_makes_the_next_request_fresh(harness: Harness) -> None:
    await harness.get("/accounts/1", "2")
    assert (await harness.get("/accounts/1", "2")).headers[HIT] == "hit"
    await harness.commit(update(Account).where(Account.id == 1).values(name="renamed"))
    fresh = await harness.get("/accounts/1", "2")
    assert HIT not in fresh.headers
    assert fresh.json()["name"] == "renamed"
    # a child row counts too: the payments were read by the selectinload
    await harness.commit(update(Payment).where(Payment.account_id == 1).values(amount=5))
    assert (await harness.get("/accounts/1", "2")).json()["payments"] == ["5.00"] * 3


async def test_a_commit_to_what_it_did_not_read_leaves_the_entry(harness: Harness) -> None:
    await harness.get("/accounts/1", "2")
    assert (await harness.get("/accounts/1", "2")).headers[HIT] == "hit"
    async with AsyncSession(harness.engine) as session:
        other = await session.get(Employee, 1)
        assert other is not None
        other.name = "elsewhere"
        await session.commit()
    assert (await harness.get("/accounts/1", "2")).headers[HIT] == "hit"


async def test_a_commit_while_the_response_is_built_is_not_stored_as_current(
    harness: Harness,
) -> None:
    async def rename() -> None:
        # another request's write, outside this response's context
        statement = update(Account).where(Account.id == 1).values(name="during")
        await asyncio.create_task(harness.commit(statement), context=contextvars.Context())

    harness.app.state.writes_during_fill.append(rename)
    stale = await harness.get("/accounts/1", "2")
    assert stale.json()["name"] == "account 1"  # read before the write committed
    assert harness.cache.stats["GET /accounts/{account_id}"].rejected["outdated snapshot"] == 1
    after = await harness.get("/accounts/1", "2")
    assert HIT not in after.headers
    assert after.json()["name"] == "during"


async def test_responses_built_from_uncached_statements_are_not_stored(harness: Harness) -> None:
    for _ in range(2):
        response = await harness.get("/plain/1", "2")
        assert response.json() == {"name": "account 1"}
        assert HIT not in response.headers
    stats = harness.cache.stats["GET /plain/{account_id}"]
    assert stats.hits == 0
    assert stats.rejected["a statement ran that the query cache did not answer"] == 2


async def test_only_200_responses_are_stored(harness: Harness) -> None:
    for _ in range(2):
        missing = await harness.get("/accounts/99", "2")
        assert missing.status_code == 404
        assert HIT not in missing.headers
    assert harness.cache.stats["GET /accounts/{account_id}"].rejected["status 404"] == 2


async def test_requests_without_an_identity_reach_the_application(harness: Harness) -> None:
    await harness.get("/accounts/1", "2")
    for credentials in (None, "nobody", "99"):
        response = await harness.get("/accounts/1", credentials)
        assert HIT not in response.headers
        assert response.status_code == (401 if credentials in (None, "nobody") else 200)


async def test_private_routes_keep_one_entry_per_principal(harness: Harness) -> None:
    mine = await harness.get("/mine", "1")
    theirs = await harness.get("/mine", "2")
    assert mine.json()["id"] == 1
    assert theirs.json()["id"] == 2
    again_mine, again_theirs = await harness.get("/mine", "1"), await harness.get("/mine", "2")
    assert again_mine.headers[HIT] == again_theirs.headers[HIT] == "hit"
    assert again_mine.json()["id"] == 1
    assert again_theirs.json()["id"] == 2


async def test_a_revoked_identity_stops_matching_when_its_row_changes(harness: Harness) -> None:
    assert (await harness.get("/mine", "2")).status_code == 200
    assert (await harness.get("/mine", "2")).headers[HIT] == "hit"
    await harness.commit(update(Account).where(Account.id == 2).values(name="revoked"))
    response = await harness.get("/mine", "2")
    assert HIT not in response.headers  # identify ran again and refused: the app answered


async def test_the_query_string_is_part_of_the_key(harness: Harness) -> None:
    await harness.get("/accounts/1?x=1", "2")
    assert HIT not in (await harness.get("/accounts/1?x=2", "2")).headers
    assert (await harness.get("/accounts/1?x=1", "2")).headers[HIT] == "hit"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_an_expired_identity_is_not_served(backend: Backend) -> None:
    engine = await seeded_engine(backend)
    app = make_app(engine, expires_in=0.3)
    with QueryCache(MemoryBackend(), namespace="expiry"):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await client.get("/mine", headers={"authorization": "1"})
            hit = await client.get("/mine", headers={"authorization": "1"})
            assert hit.headers[HIT] == "hit"
            calls = app.app.state.identify_calls[0]  # type: ignore[attr-defined]
            time.sleep(0.4)
            after = await client.get("/mine", headers={"authorization": "1"})
            assert after.status_code == 200
            # the stored identity was not trusted past its expires_at: identify ran again
            assert app.app.state.identify_calls[0] == calls + 1  # type: ignore[attr-defined]
    async with engine.begin() as conn:
        await conn.run_sync(CacheBase.metadata.drop_all)
    await engine.dispose()


def test_bad_configuration_is_refused() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError

    with pytest.raises(ConfigurationError, match="private routes need identify"):
        ResponseCache(app, routes=[CachedRoute("/mine", private=True)])
    with pytest.raises(ConfigurationError, match="must start with '/'"):
        ResponseCache(app, routes=[CachedRoute("mine")])
    with pytest.raises(ConfigurationError, match="malformed parameter"):
        ResponseCache(app, routes=[CachedRoute("/users/{id")])
    with pytest.raises(TypeError, match="CachedRoute"):
        ResponseCache(app, routes=["/users"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="ttl"):
        ResponseCache(app, routes=[CachedRoute("/users", ttl=0)])


async def test_a_response_that_says_no_store_is_not_stored(harness: Harness) -> None:
    for _ in range(3):
        response = await harness.get("/no-store/1", "2")
        assert response.json() == {"name": "account 1"}
        assert HIT not in response.headers
    assert harness.cache.stats["GET /no-store/{account_id}"].rejected["response says no-store"] == 3


async def test_a_body_cut_short_is_not_stored(harness: Harness) -> None:
    app = harness.client._transport.app  # type: ignore[attr-defined]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/cut-short",
        "raw_path": b"/cut-short",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", b"2")],
        "scheme": "http",
        "server": ("test", 80),
        "http_version": "1.1",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    for _ in range(3):
        sent: list[dict[str, Any]] = []

        async def send(message: Any, sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        await app(dict(scope), receive, send)
        assert sent[0]["type"] == "http.response.start"
        assert (HIT.encode(), b"hit") not in sent[0]["headers"]
        assert sent[-1]["more_body"] is True
    rejected = harness.cache.stats["GET /cut-short"].rejected
    assert rejected["response body not finished (client gone?)"] == 3


async def test_repeated_credentials_reach_the_application(harness: Harness) -> None:
    await harness.get("/mine", "1")
    assert (await harness.get("/mine", "1")).headers[HIT] == "hit"
    twice = await harness.client.get(
        "/mine", headers=[("authorization", "2"), ("authorization", "1")]
    )
    assert HIT not in twice.headers
    assert twice.json()["id"] == 2  # what the application read, not user 1's entry


async def test_headers_outer_layers_add_are_not_stored(backend: Backend, harness: Harness) -> None:
    calls = [0]
    inner = harness.client._transport.app  # type: ignore[attr-defined]

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        calls[0] += 1

        async def add_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"].append((b"x-outer", str(calls[0]).encode()))
            await send(message)

        await inner(scope, receive, add_header)

    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(3):
            response = await client.get("/accounts/1", headers={"authorization": "2"})
        assert response.headers[HIT] == "hit"
        assert response.headers.get_list("x-outer") == [str(calls[0])]


def refusal(snapshots: Snapshots) -> str | None:
    return snapshots.uncovered


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_snapshots_refuse_a_dependency_seen_at_two_versions(backend: Backend) -> None:
    snapshots = Snapshots()
    snapshots.note([("t", "*"), ("u", "*")], [5, 7])
    snapshots.note([("t", "*")], [5])
    assert refusal(snapshots) is None
    snapshots.note([("u", "*")], [6])  # an older version, noted later: still two states
    assert refusal(snapshots) == "a dependency changed while the response was built"
    assert snapshots.versions == {("t", "*"): 5, ("u", "*"): 7}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_cached_statement_that_fails_makes_the_block_uncovered(backend: Backend) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(backend.sync_url)
    CacheBase.metadata.drop_all(engine)
    CacheBase.metadata.create_all(engine)
    try:
        with QueryCache(MemoryBackend()), Session(engine) as session:
            session.add_all(sample())
            session.commit()
            by_id = select(Account).where(Account.id == 1).options(ormtune.cache())
            for _ in range(2):  # learn, then fill
                session.scalars(by_id).all()
                session.expunge_all()
            with collecting() as fine:
                session.scalars(by_id).all()
            assert fine.uncovered is None
            CacheBase.metadata.drop_all(engine)
            session.commit()  # a new transaction: SQLite's snapshot predates the DROP
            other = select(Account).where(Account.id == 2).options(ormtune.cache())
            with collecting() as failed, pytest.raises(Exception, match="c_accounts"):
                session.scalars(other).all()
            session.rollback()
            assert failed.uncovered == "a cached statement failed"
    finally:
        CacheBase.metadata.drop_all(engine)
        engine.dispose()


async def test_a_row_read_before_a_commit_and_its_table_read_after_is_not_stored(
    harness: Harness,
) -> None:
    await harness.get("/then-all/1", "2")  # the cache learns both statements

    async def rename() -> None:
        statement = update(Account).where(Account.id == 1).values(name="between")
        await asyncio.create_task(harness.commit(statement), context=contextvars.Context())

    harness.app.state.writes_during_fill.append(rename)
    mixed = (await harness.get("/then-all/1", "2")).json()
    assert mixed["one"] == "account 1"  # read before the commit
    assert mixed["all"][0] == "between"  # read after it
    assert harness.cache.stats["GET /then-all/{account_id}"].rejected["outdated snapshot"] == 1
    after = await harness.get("/then-all/1", "2")
    assert HIT not in after.headers
    assert after.json()["one"] == "between"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_credentials_that_now_stand_for_someone_else_get_their_own_response(
    backend: Backend,
) -> None:
    engine = await seeded_engine(backend)
    app = make_app(engine, expires_in=0.3)
    aliases = app.app.state.aliases  # type: ignore[attr-defined]
    aliases["session-x"] = "1"
    with QueryCache(MemoryBackend(), namespace="repoint"):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(3):
                mine = await client.get("/mine", headers={"authorization": "session-x"})
            assert mine.headers[HIT] == "hit"
            assert mine.json()["id"] == 1
            aliases["session-x"] = "2"  # the session now stands for account 2
            time.sleep(0.4)  # the cached identity expires; identify resolves it again
            theirs = await client.get("/mine", headers={"authorization": "session-x"})
            assert HIT not in theirs.headers
            assert theirs.json()["id"] == 2
    async with engine.begin() as conn:
        await conn.run_sync(CacheBase.metadata.drop_all)
    await engine.dispose()
