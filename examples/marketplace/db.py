"""Engines and migrations: one place that knows database URLs.

``upgrade(url)`` / ``downgrade(url, "base")`` run the Alembic migrations in
``marketplace/migrations`` on an asyncio URL (``sqlite+aiosqlite``, ``postgresql+asyncpg``,
``mariadb+aiomysql``) or its sync equivalent. They are plain functions, callable from sync
code and from inside a running event loop alike (they then work in a thread of their own).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from sqlalchemy import URL

__all__ = [
    "async_url",
    "create_engine_for",
    "downgrade",
    "is_async_url",
    "run_on_connection",
    "upgrade",
]

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"

# sync driver -> its asyncio twin, per backend
_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mysql": "aiomysql"}
_ASYNC = {"aiosqlite", "asyncpg", "aiomysql", "asyncmy", "psycopg_async"}


def is_async_url(url: str | URL) -> bool:
    """Whether ``url`` names an asyncio driver."""
    parsed = make_url(url)
    return parsed.get_driver_name() in _ASYNC or parsed.drivername.endswith("+psycopg_async")


def async_url(url: str | URL) -> URL:
    """``url`` with its backend's asyncio driver (``sqlite://`` -> ``sqlite+aiosqlite://``,
    ``postgresql+psycopg://`` -> ``postgresql+asyncpg://``, ``mariadb+pymysql://`` ->
    ``mariadb+aiomysql://``); asyncio URLs are returned as they are."""
    parsed = make_url(url)
    if is_async_url(parsed):
        return parsed
    dialect = parsed.get_dialect().name
    driver = _ASYNC_DRIVERS.get("mysql" if dialect in ("mysql", "mariadb") else dialect)
    if driver is None:
        raise ValueError(
            f"no asyncio driver known for {parsed.drivername!r}; use sqlite+aiosqlite, "
            "postgresql+asyncpg or mariadb+aiomysql"
        )
    return parsed.set(drivername=f"{parsed.get_backend_name()}+{driver}")


def _sqlite_foreign_keys(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine_for(url: str | URL, *, pool_size: int = 20, **kwargs: Any) -> AsyncEngine:
    """The application's asyncio engine for ``url`` (a sync URL is mapped to its asyncio
    driver). SQLite gets foreign keys switched on and a busy timeout; server databases a
    pool of ``pool_size`` connections checked before use."""
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed, connect_args={"timeout": 30}, **kwargs)
    else:
        engine = create_async_engine(
            parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, **kwargs
        )
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_foreign_keys)
    return engine


def _in_own_loop(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def run_on_connection(url: str | URL, work: Callable[[Connection], T]) -> T:
    """Run ``work(connection)`` in one transaction on ``url`` (asyncio URLs through
    ``AsyncConnection.run_sync``), with a throw-away engine."""
    if not is_async_url(url):
        engine = create_engine(url, poolclass=NullPool)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_foreign_keys)
        try:
            with engine.begin() as connection:
                return work(connection)
        finally:
            engine.dispose()

    async def run() -> T:
        engine = create_async_engine(url, poolclass=NullPool)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_foreign_keys)
        try:
            async with engine.begin() as connection:
                return await connection.run_sync(work)
        finally:
            await engine.dispose()

    return _in_own_loop(run)


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(database_url: str | URL, revision: str = "head") -> None:
    """Migrate the database at ``database_url`` up to ``revision`` (default: the newest)."""
    run_on_connection(database_url, lambda c: command.upgrade(_config(c), revision))


def downgrade(database_url: str | URL, revision: str = "base") -> None:
    """Migrate the database at ``database_url`` down to ``revision`` (``"base"``: empty)."""
    run_on_connection(database_url, lambda c: command.downgrade(_config(c), revision))
