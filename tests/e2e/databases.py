"""Scratch databases of the end-to-end tests' own, on the session's database servers."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, make_url, text

from tests.conftest import Backend

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["scratch_database"]


@contextlib.contextmanager
def scratch_database(
    server: Backend, directory: Path, *, template: str | None = None
) -> Iterator[Backend]:
    """A new empty database (or a copy of ``template``, PostgreSQL only) on ``server``'s
    database server, dropped on leaving; for SQLite a new file in ``directory``."""
    name = f"ormtune_e2e_{uuid.uuid4().hex[:10]}"
    if server.name == "sqlite":
        path = directory / f"{name}.db"
        yield Backend("sqlite", f"sqlite:///{path}", f"sqlite+aiosqlite:///{path}")
        return
    url = make_url(server.sync_url)
    if server.name == "postgresql":
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        suffix = f' TEMPLATE "{template}"' if template else ""
        create, drop = f'CREATE DATABASE "{name}"{suffix}', f'DROP DATABASE "{name}" WITH (FORCE)'
        async_driver = "postgresql+asyncpg"
    else:
        assert template is None, "database templates are a PostgreSQL feature"
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        create, drop = f"CREATE DATABASE `{name}`", f"DROP DATABASE `{name}`"
        async_driver = "mariadb+aiomysql"
    try:
        with admin.connect() as conn:
            conn.execute(text(create))
    except BaseException:
        admin.dispose()
        raise
    own = url.set(database=name)
    try:
        yield Backend(
            server.name,
            own.render_as_string(hide_password=False),
            own.set(drivername=async_driver).render_as_string(hide_password=False),
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(drop))
        admin.dispose()
