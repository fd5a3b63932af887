"""Dependency tokens: what a cached entry depends on and what a write invalidates.

Every table is one token group, named by its bare lower-case name (``payments`` for
``public."Payments"``), so readers and writers agree whatever schema or quoting a statement
used; two tables that share a bare name only invalidate each other more often than needed.

Members of a group:

* ``*`` moves on every write to the table. An entry that reads the table as a whole
  (no usable equality filter) depends on it.
* ``?`` moves on writes whose rows ormtune could not identify (Core ``UPDATE ... WHERE``,
  ``text()`` DML, ``TRUNCATE``, cascades). Entries with fine dependencies depend on it.
* ``user_id=i:7`` moves when a row whose ``user_id`` was or becomes 7 is written. Entries
  filtered by ``user_id == 7`` depend on it (and on ``?``), so a write to user 8's rows leaves
  them alone.

Fine members exist only for *tracked* columns: primary-key, foreign-key, unique and indexed
columns of integer or UUID type. Those types compare exactly in every database (no collation,
padding or case folding), and the set is derived from table metadata alone, so every process
agrees on it.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Integer, Table, Uuid

if TYPE_CHECKING:
    from sqlalchemy import Column

    from ormtune.typing import Token

__all__ = [
    "ANY_ROW",
    "EVERYTHING",
    "UNKNOWN_ROWS",
    "commit_counter",
    "name_token",
    "table_group",
    "tracked_columns",
    "value_member",
]

ANY_ROW = "*"
UNKNOWN_ROWS = "?"
EVERYTHING: Token = ("*", "*")
"""Moved by statements whose effect cannot be read (``CALL``, ``DO``) and by
``ormtune.invalidate()`` with no arguments; every entry depends on it."""


def commit_counter() -> Token:
    """Moved by every commit that wrote anything: REPEATABLE READ snapshots are checked by it."""
    return ("*", "commits")


def name_token(name: str) -> Token:
    """The token of a cache name, moved by ``ormtune.invalidate("name")``."""
    return ("@" + name, ANY_ROW)


@lru_cache(maxsize=4096)
def table_group(name: str) -> str:
    """The token group of a table named as in SQL (``public."Payments"`` -> ``payments``)."""
    bare = name.rsplit(".", 1)[-1]
    if len(bare) >= 2 and bare[0] in '"`[' and bare[-1] in '"`]':
        bare = bare[1:-1]
    return bare.lower()


def value_member(column: str, value: Any) -> str | None:
    """The fine member for ``column == value``, or ``None`` when the value's type is not one
    that compares exactly (then the dependency stays table-wide)."""
    kind = type(value)
    if kind is int:
        return f"{column}=i:{value}"
    if kind is uuid.UUID:
        return f"{column}=u:{value.hex}"
    return None


@lru_cache(maxsize=1024)
def tracked_columns(table: Table) -> frozenset[str]:
    """Names of the columns of ``table`` that get fine tokens (see the module docstring)."""
    names = set()
    indexed = {c.name for index in table.indexes for c in index.columns if len(index.columns) == 1}
    for column in table.columns:
        if not _exact_type(column):
            continue
        if (
            column.primary_key
            or column.foreign_keys
            or column.unique
            or column.index
            or column.name in indexed
        ):
            names.add(column.name)
    return frozenset(names)


def _exact_type(column: Column[Any]) -> bool:
    return isinstance(column.type, Integer | Uuid)
