"""The marketplace's Alembic migrations upgrade and downgrade cleanly on SQLite, PostgreSQL and
MariaDB, and the upgraded schema is exactly what the models declare (indexes included)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect
from sqlalchemy.pool import NullPool

from marketplace.db import downgrade, upgrade
from marketplace.models import Base
from tests.e2e.databases import scratch_database

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Backend

TABLES = set(Base.metadata.tables)


def schema_of(url: str) -> dict[str, Any]:
    """Tables, the schema diff against the models, and the Alembic revision at ``url``."""

    def read(connection: Connection) -> dict[str, Any]:
        inspector = inspect(connection)
        names = set(inspector.get_table_names())
        revision = MigrationContext.configure(connection).get_current_revision()
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        indexed: dict[str, list[tuple[str | None, ...]]] = {}
        for table in names & TABLES:
            leading = [tuple(ix["column_names"]) for ix in inspector.get_indexes(table)]
            leading += [tuple(uq["column_names"]) for uq in inspector.get_unique_constraints(table)]
            leading.append(tuple(inspector.get_pk_constraint(table)["constrained_columns"]))
            indexed[table] = leading
        return {"tables": names, "revision": revision, "diff": diff, "indexed": indexed}

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return read(connection)
    finally:
        engine.dispose()


def unindexed_foreign_keys(url: str) -> list[str]:
    """Foreign keys that no index, unique constraint or primary key leads with."""
    schema = schema_of(url)
    missing = []
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_key_constraints:
            columns = tuple(column.name for column in fk.columns)
            covered = any(
                candidate[: len(columns)] == columns for candidate in schema["indexed"][table.name]
            )
            if not covered:
                missing.append(f"{table.name}({', '.join(columns)})")
    return missing


def test_upgrade_downgrade_upgrade(backend: Backend, tmp_path: Path) -> None:
    with scratch_database(backend, tmp_path) as db:
        # a sync URL one way, the asyncio URL the other: both are accepted
        upgrade(db.sync_url)
        upgraded = schema_of(db.sync_url)
        assert upgraded["tables"] >= TABLES
        assert upgraded["revision"] is not None
        assert upgraded["diff"] == [], "the migrations and the models disagree"
        assert unindexed_foreign_keys(db.sync_url) == []

        downgrade(db.async_url, "base")
        empty = schema_of(db.sync_url)
        assert not TABLES & empty["tables"], "tables left behind by the downgrade"
        assert empty["revision"] is None

        upgrade(db.async_url)
        again = schema_of(db.sync_url)
        assert again["tables"] >= TABLES
        assert again["revision"] == upgraded["revision"]
        assert again["diff"] == []
