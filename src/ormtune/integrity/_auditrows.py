"""What the audit log records of a mapped class, and how it reads rows: shared by the unit-of-work
hook (old values of expired columns) and the bulk-statement hook (rows before and after).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select as sql_select
from sqlalchemy import tuple_ as sql_tuple
from sqlalchemy.sql.selectable import TableClause

from ormtune.integrity._softdelete import include_deleted

if TYPE_CHECKING:
    from sqlalchemy.orm import Mapper, Session

__all__ = [
    "AUDIT_KEYS_OPTION",
    "CHUNK",
    "AuditAction",
    "AuditedColumns",
    "Key",
    "Values",
    "jsonable",
    "read_rows",
    "row_key",
]

AUDIT_KEYS_OPTION = "ormtune_audit_keys"
"""Execution option naming the unique columns that identify an INSERT's rows when its
parameters lack the primary key (repositories set it for upserts)."""

CHUNK = 500
Key = tuple[Any, ...]
Values = dict[str, Any]


class AuditAction(enum.StrEnum):
    """What happened to a row, as stored in ``AuditLog.action``."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    SOFT_DELETE = "soft_delete"
    RESTORE = "restore"
    UPSERT = "upsert"  # an upsert whose rows could not be told apart (no key known)


def jsonable(value: object) -> object:
    """``value`` as something ``json.dumps`` accepts, losslessly where it can."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return (
            value if value == value and value not in (float("inf"), float("-inf")) else str(value)
        )
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID | datetime.timedelta):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "base64:" + base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


def row_key(key: Key) -> str:
    """The primary key as ``AuditLog.row_key`` stores it (a JSON array when composite)."""
    if len(key) == 1:
        return str(jsonable(key[0]))
    return json.dumps([jsonable(v) for v in key])


class AuditedColumns:
    """What the log records of one mapper: (attribute key, column name, masked) triples.

    ``table`` is the mapper's own table: for joined-table inheritance the subclass's table
    (``managers``, not ``employees``), for single-table inheritance the shared one. ``tables``
    holds every table the mapper spans, which ``tables=`` / ``exclude_tables=`` match against;
    a ``"table.column"`` exclusion or mask matches the column's own table or ``table``.
    """

    __slots__ = ("columns", "deleted_key", "pk_keys", "table", "tables")

    def __init__(self, mapper: Mapper[Any], excluded: set[str], masked: set[str]) -> None:
        self.table: str = mapper.local_table.name  # type: ignore[attr-defined]
        self.tables = frozenset(t.name for t in mapper.tables if isinstance(t, TableClause))
        self.pk_keys = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
        self.columns: list[tuple[str, str, bool]] = []
        for prop in mapper.column_attrs:
            column = prop.columns[0]
            name: str | None = column.name
            if not name:
                continue
            names = {name, f"{self.table}.{name}"}
            owner = getattr(column, "table", None)
            if isinstance(owner, TableClause):
                names.add(f"{owner.name}.{name}")
            if names & excluded:
                continue
            self.columns.append((prop.key, name, bool(names & masked)))
        self.deleted_key = "deleted_at" if "deleted_at" in mapper.column_attrs else None


def read_rows(
    session: Session,
    mapper: Mapper[Any],
    value_keys: Sequence[str],
    *,
    where: Any = None,
    key_attrs: Sequence[str] = (),
    keys: Sequence[Key] = (),
    lock: bool = False,
    include: bool = True,
) -> dict[Key, Values]:
    """Rows of ``mapper`` as ``{primary key: {attribute: value}}`` (``value_keys`` starts with
    the primary key's attributes): those matching ``where``, or those whose ``key_attrs`` are
    among ``keys`` (one SELECT per 500 keys).

    Soft-deleted rows are included unless ``include=False``; ``lock`` reads ``FOR UPDATE``
    (not on SQLite, which locks the whole database on write anyway). It reads columns, never
    instances, so the identity map and loaded objects are untouched.
    """
    entity = mapper.class_
    nkey = len(mapper.primary_key)
    lock = lock and session.get_bind(mapper=mapper).dialect.name != "sqlite"

    def run(condition: Any) -> dict[Key, Values]:
        statement = sql_select(*(getattr(entity, key) for key in value_keys))
        if condition is not None:
            statement = statement.where(condition)
        if include:
            statement = statement.options(include_deleted())
        if lock:
            statement = statement.with_for_update()
        return {
            tuple(row[:nkey]): dict(zip(value_keys, row, strict=True))
            for row in session.execute(statement)
        }

    if not key_attrs:
        return run(where)
    rows: dict[Key, Values] = {}
    attrs = [getattr(entity, key) for key in key_attrs]
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        if len(attrs) == 1:
            condition = attrs[0].in_([k[0] for k in chunk])
        else:
            condition = sql_tuple(*attrs).in_(chunk)
        rows.update(run(condition))
    return rows
