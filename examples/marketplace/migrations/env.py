"""Alembic environment for the marketplace.

``marketplace.db.upgrade()`` hands over an open connection (``config.attributes
["connection"]``). From the command line (``alembic -c examples/marketplace/alembic.ini
upgrade head``) the URL comes from ``MARKETPLACE_DATABASE_URL`` or ``sqlalchemy.url``; asyncio
URLs (``sqlite+aiosqlite``, ``postgresql+asyncpg``, ``mariadb+aiomysql``) run through
``AsyncConnection.run_sync``, sync URLs directly.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from marketplace.db import is_async_url
from marketplace.models import Base

config = context.config
target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_with)
            await connection.commit()
    finally:
        await engine.dispose()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        run_with(given)
        return
    url = os.environ.get("MARKETPLACE_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set MARKETPLACE_DATABASE_URL or sqlalchemy.url to migrate")
    if is_async_url(url):
        asyncio.run(run_async(url))
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            run_with(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=os.environ.get("MARKETPLACE_DATABASE_URL") or config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_online()
