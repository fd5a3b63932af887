"""Database errors translated in one place: constraint violations become
:class:`~ormtune.exceptions.DuplicateKeyError` / :class:`~ormtune.exceptions.ForeignKeyError`
naming the constraint and its columns, on PostgreSQL (psycopg, asyncpg), MariaDB / MySQL
(PyMySQL, aiomysql) and SQLite alike. The driver's error stays attached as ``__cause__``.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Index, UniqueConstraint
from sqlalchemy.exc import IntegrityError

from ormtune.exceptions import ConstraintError, DuplicateKeyError, ForeignKeyError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from sqlalchemy import MetaData, Table

__all__ = ["translate_integrity_error", "translating"]

_PG_KEY = re.compile(r"Key \((?P<cols>.+?)\)=")
_MY_DUP = re.compile(r"Duplicate entry .* for key '(?:[^']*\.)?(?P<name>[^']+)'")
_MY_FK = re.compile(r"CONSTRAINT `(?P<name>[^`]+)` FOREIGN KEY \((?P<cols>[^)]+)\)", re.IGNORECASE)
_MY_FK_TABLE = re.compile(r"fails \(`[^`]+`\.`(?P<table>[^`]+)`")
_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (?P<cols>.+)$")
_WRITTEN_TABLE = re.compile(
    r"^\s*(?P<verb>INSERT\s+INTO|UPDATE)\s+[`\"]?(?P<table>\w+)", re.IGNORECASE
)


@contextmanager
def translating(metadata: MetaData) -> Iterator[None]:
    """Run the block; an ``IntegrityError`` from it leaves as a ``ConstraintError``."""
    try:
        yield
    except IntegrityError as exc:
        raise translate_integrity_error(exc, metadata) from exc


def _split_cols(text: str) -> list[str]:
    return [c.strip().strip('`"').split(".")[-1] for c in text.split(",") if c.strip()]


def _diagnostics(orig: Any) -> tuple[str | None, str | None, str | None, str]:
    """(kind, constraint, table, detail) from a DBAPI error; kind is "unique", "fk" or None."""
    message = str(orig)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    cause = getattr(orig, "__cause__", None)  # asyncpg's own error, behind SQLAlchemy's adapter
    if sqlstate in ("23505", "23503"):
        diag = getattr(orig, "diag", None)
        constraint = getattr(diag, "constraint_name", None) or getattr(
            cause, "constraint_name", None
        )
        table = getattr(diag, "table_name", None) or getattr(cause, "table_name", None)
        detail = getattr(diag, "message_detail", None) or getattr(cause, "detail", None) or message
        return ("unique" if sqlstate == "23505" else "fk"), constraint, table, str(detail)
    args = getattr(orig, "args", ())
    code = args[0] if args and isinstance(args[0], int) else None
    if code == 1062:
        match = _MY_DUP.search(message)
        return "unique", match["name"] if match else None, None, message
    if code in (1451, 1452):
        match = _MY_FK.search(message)
        table = _MY_FK_TABLE.search(message)
        return "fk", match["name"] if match else None, table["table"] if table else None, message
    if "UNIQUE constraint failed" in message or (
        "PRIMARY KEY" in message.upper() and ("constraint failed" in message)
    ):
        return "unique", None, None, message
    if "FOREIGN KEY constraint failed" in message:
        return "fk", None, None, message
    return None, None, None, message


def _unique_keys(table: Table) -> Iterator[tuple[str | None, list[str]]]:
    pk_name = table.primary_key.name
    yield (pk_name if isinstance(pk_name, str) else None), [c.name for c in table.primary_key]
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            yield (
                constraint.name if isinstance(constraint.name, str) else None,
                [c.name for c in constraint.columns],
            )
    for index in table.indexes:
        if isinstance(index, Index) and index.unique:
            yield (
                index.name if isinstance(index.name, str) else None,
                [c.name for c in index.columns],
            )
    for column in table.columns:
        if column.unique:
            yield None, [column.name]


def _find(
    metadata: MetaData, kind: str, name: str | None, table: str | None, columns: Sequence[str]
) -> tuple[str | None, str | None, list[str]]:
    """Complete (table, constraint, columns) from the metadata, by name or by columns."""
    tables = (
        [metadata.tables[table]]
        if table is not None and table in metadata.tables
        else list(metadata.tables.values())
    )
    for candidate in tables:
        if kind == "unique":
            keys = list(_unique_keys(candidate))
        else:
            keys = [
                (fk.name if isinstance(fk.name, str) else None, [c.name for c in fk.columns])
                for fk in candidate.foreign_key_constraints
            ]
        for key_name, key_columns in keys:
            by_name = name is not None and key_name == name
            # MariaDB names an unnamed unique index after its first column.
            by_first = name is not None and key_name is None and key_columns[:1] == [name]
            by_columns = not name and columns and sorted(key_columns) == sorted(columns)
            if by_name or by_first or by_columns:
                return candidate.name, key_name or name, key_columns
    return table, name, list(columns)


def translate_integrity_error(exc: IntegrityError, metadata: MetaData) -> ConstraintError:
    """The :class:`~ormtune.exceptions.ConstraintError` that says what ``exc`` means."""
    kind, name, table, detail = _diagnostics(exc.orig)
    columns: list[str] = []
    if kind == "unique":
        if name == "PRIMARY":
            name = None
            match = None
        else:
            match = _PG_KEY.search(detail) or _SQLITE_UNIQUE.search(detail)
        if match:
            columns = _split_cols(match["cols"])
            if table is None and "." in match["cols"]:
                table = match["cols"].split(",")[0].strip().split(".")[0]
    elif kind == "fk":
        match = _PG_KEY.search(detail) or _MY_FK.search(detail)
        if match:
            columns = _split_cols(match["cols"])
    if kind is None:
        return ConstraintError(
            f"The database refused the write: {detail.strip()}. Check the values against the "
            "table's NOT NULL and CHECK constraints."
        )
    if kind == "fk" and name is None and table is None:
        # SQLite names neither constraint nor columns; an INSERT or UPDATE of a table with
        # a single foreign key can only have broken that one.
        written = _WRITTEN_TABLE.match(exc.statement or "")
        if written and written["table"] in metadata.tables:
            keys = list(metadata.tables[written["table"]].foreign_key_constraints)
            table = written["table"]
            if len(keys) == 1:
                columns = [c.name for c in keys[0].columns]
    table, name, columns = _find(metadata, kind, name, table, columns)
    where = f"{table}({', '.join(columns)})" if table else f"({', '.join(columns)})"
    named = f" {name!r}" if name else ""
    if kind == "unique":
        return DuplicateKeyError(
            f"Duplicate key: unique constraint{named} on {where} already holds these values. "
            "Use another value, update the existing row, or upsert.",
            table=table,
            constraint=name,
            columns=columns,
        )
    return ForeignKeyError(
        f"Foreign key{named} on {where} failed: the row refers to a row that does not exist, "
        "or a row still referred to was deleted. Create the referenced row first, or remove "
        "the references.",
        table=table,
        constraint=name,
        columns=columns,
    )
