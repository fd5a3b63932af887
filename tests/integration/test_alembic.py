"""Alembic: autogenerate sees the integrity mixins and the audit log, and the example
migration (examples/migrations/) leaves it nothing to do — no spurious diffs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from tests.conftest import Backend

EXAMPLES = Path(__file__).parents[2] / "examples"


def load(path: Path, name: str) -> Any:
    """A module of examples/ (not a package: the examples run as scripts)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # declarative resolves Mapped[...] through sys.modules
    spec.loader.exec_module(module)
    return module


Base: Any = load(EXAMPLES / "integrity_models.py", "example_integrity_models").Base


def load_migration() -> Any:
    return load(EXAMPLES / "migrations/0001_customers_and_audit_log.py", "migration_0001")


def diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def test_autogenerate_and_the_example_migration(backend: Backend) -> None:
    engine = create_engine(backend.sync_url)
    migration = load_migration()
    try:
        with engine.begin() as connection:
            changes = diff(connection)
            added = {change[1].name for change in changes if change[0] == "add_table"}
            assert {"customers", "audit_log"} <= added
            indexes = {c[1].name for c in changes if c[0] == "add_index"}
            assert {"uq_customers_email_live", "ix_audit_log_table_row"} <= indexes

            context = MigrationContext.configure(connection)
            with Operations.context(context):
                migration.upgrade()
            assert diff(connection) == []
            columns = {c["name"] for c in inspect(connection).get_columns("customers")}
            assert {"deleted_at", "deleted_by", "created_at", "updated_by"} <= columns
            with Operations.context(context):
                migration.downgrade()
            assert not inspect(connection).has_table("audit_log")
    finally:
        with engine.begin() as connection:
            Base.metadata.drop_all(connection)
        engine.dispose()
