"""Shared fixtures: one throw-away database per service per test session, and engines on it.

Services are reached at the URLs below (override with environment variables). A service that
cannot be reached skips the tests that need it, with a message naming it, unless
``ORMTUNE_REQUIRE_SERVICES=1`` is set (as CI does), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from tests.integrity_harness import Harness, sqlite_foreign_keys
from tests.integrity_models import Base as IntegrityBase
from tests.models import Base

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from ormtune.caching import QueryCache

POSTGRES_URL = os.environ.get(
    "ORMTUNE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MARIADB_URL = os.environ.get(
    "ORMTUNE_TEST_MARIADB_URL", "mariadb+pymysql://root@127.0.0.1:3306/test"
)
REDIS_URL = os.environ.get("ORMTUNE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("ORMTUNE_REQUIRE_SERVICES", "") not in ("", "0")


@dataclass(frozen=True)
class Backend:
    """A database reachable for this test session: sync and async URLs of its scratch db."""

    name: str
    sync_url: str
    async_url: str


def _unavailable(service: str, url: str, exc: BaseException) -> None:
    message = f"{service} is not reachable at {make_url(url).render_as_string()}: {exc}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (ORMTUNE_REQUIRE_SERVICES is set, so this fails)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgresql_backend() -> Iterator[Backend]:
    name = f"ormtune_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        _unavailable("PostgreSQL", POSTGRES_URL, exc)
    url = make_url(POSTGRES_URL).set(database=name)
    yield Backend(
        "postgresql",
        url.render_as_string(hide_password=False),
        url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False),
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def mariadb_backend() -> Iterator[Backend]:
    name = f"ormtune_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(MARIADB_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE DATABASE `{name}`"))
    except Exception as exc:
        admin.dispose()
        _unavailable("MariaDB", MARIADB_URL, exc)
    url = make_url(MARIADB_URL).set(database=name)
    yield Backend(
        "mariadb",
        url.render_as_string(hide_password=False),
        url.set(drivername="mariadb+aiomysql").render_as_string(hide_password=False),
    )
    with admin.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    path = tmp_path_factory.mktemp("sqlite") / "ormtune.db"
    return Backend("sqlite", f"sqlite:///{path}", f"sqlite+aiosqlite:///{path}")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of the Redis service, checked once per session (skip or fail if it is down)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", REDIS_URL, exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key under it, or under a prefix made from it (a
    second backend's ``prefix + "-other"``, glob characters appended), is deleted afterwards."""
    import redis

    prefix = f"ormtune-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{{{prefix}*", count=1000):
            client.unlink(key)
    finally:
        client.close()


BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each database in turn: SQLite, PostgreSQL, MariaDB."""
    result: Backend = request.getfixturevalue(f"{request.param}_backend")
    return result


@pytest.fixture
def engine(backend: Backend) -> Iterator[Engine]:
    """A sync engine (sqlite / psycopg / pymysql) with the test models' tables, fresh per test."""
    sync_engine = create_engine(backend.sync_url)
    Base.metadata.drop_all(sync_engine)
    Base.metadata.create_all(sync_engine)
    yield sync_engine
    Base.metadata.drop_all(sync_engine)
    sync_engine.dispose()


@pytest_asyncio.fixture
async def async_engine(backend: Backend) -> AsyncIterator[AsyncEngine]:
    """An asyncio engine (aiosqlite / asyncpg / aiomysql) with the test models' tables."""
    engine = create_async_engine(backend.async_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
    await engine.dispose()


@pytest_asyncio.fixture(params=["sync", "async"])
async def integrity_db(backend: Backend, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """The marketplace schema of tests/integrity_models.py on ``backend``, fresh per test, and
    a session on it: a sync ``Session`` or an ``AsyncSession`` on the async driver."""
    if request.param == "sync":
        engine = create_engine(backend.sync_url)
        if backend.name == "sqlite":
            sqlite_foreign_keys(engine)
        IntegrityBase.metadata.drop_all(engine)
        IntegrityBase.metadata.create_all(engine)
        with Session(engine) as session:
            yield Harness("sync", backend.name, session=session, engine=engine)
        IntegrityBase.metadata.drop_all(engine)
        engine.dispose()
        return
    async_engine = create_async_engine(backend.async_url)
    if backend.name == "sqlite":
        sqlite_foreign_keys(async_engine.sync_engine)
    async with async_engine.begin() as conn:
        await conn.run_sync(IntegrityBase.metadata.drop_all)
        await conn.run_sync(IntegrityBase.metadata.create_all)
    async with AsyncSession(async_engine) as async_session:
        yield Harness("async", backend.name, async_session=async_session, engine=async_engine)
    async with async_engine.begin() as conn:
        await conn.run_sync(IntegrityBase.metadata.drop_all)
    await async_engine.dispose()


@pytest.fixture
def cache_db(backend: Backend) -> Iterator[Engine]:
    """A sync engine with the cache tests' schema (tests/cache_models.py) and its sample rows;
    SQLite enforces foreign keys, so ON DELETE CASCADE behaves as on the servers."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from tests.cache_models import CacheBase, sample

    engine = create_engine(backend.sync_url)
    if backend.name == "sqlite":
        event.listen(engine, "connect", lambda c, _: c.execute("PRAGMA foreign_keys=ON"))
    CacheBase.metadata.drop_all(engine)
    CacheBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(sample())
        session.commit()
    yield engine
    CacheBase.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def qc() -> Iterator[QueryCache]:
    """A fresh query cache over a memory backend, installed for the test."""
    from ormtune.backends import MemoryBackend
    from ormtune.caching import QueryCache

    with QueryCache(MemoryBackend()) as query_cache:
        yield query_cache
