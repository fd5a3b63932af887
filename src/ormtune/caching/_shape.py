"""What ormtune learns about one cacheable statement from its first execution in a process.

A *shape* is one statement structure (SQLAlchemy's cache key, without parameter values) on
one bind. Its first execution runs uncached while ormtune records every statement it made
(the main query, ``selectinload`` queries, inheritance loads), which gives the tables the
result depends on, the SQL that names it across processes, and a template of the result's
metadata to rebuild results from cached rows. Later executions are cacheable.
"""

from __future__ import annotations

import hashlib
import re
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Table
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList

from ormtune.caching._tokens import table_group, tracked_columns

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import FrozenResult
    from sqlalchemy.orm import Mapper
    from sqlalchemy.sql.cache_key import CacheKey

__all__ = [
    "FineFilter",
    "Shape",
    "fine_filters",
    "nondeterministic_call",
    "option_digest",
    "stable_text",
]

_NONDETERMINISTIC = re.compile(
    r"\b(now|random|rand|uuid|gen_random_uuid|uuid_generate_v[14]|clock_timestamp|"
    r"statement_timestamp|transaction_timestamp|timeofday|sysdate|utc_timestamp|"
    r"unix_timestamp|curdate|curtime|nextval|currval|lastval|setseed|last_insert_id|"
    r"current_timestamp|current_date|current_time|localtimestamp|localtime|"
    r"txid_current|pg_backend_pid|connection_id)\b\s*(\(|(?=\W)|$)",
    re.IGNORECASE,
)


def nondeterministic_call(sql: str) -> str | None:
    """The first function in ``sql`` whose result changes between executions, if any."""
    match = _NONDETERMINISTIC.search(sql)
    return match.group(1).lower() if match else None


@dataclass(frozen=True, slots=True)
class FineFilter:
    """``column == value`` or ``column IN values`` on the statement's one table: where to
    find the value(s) among the statement's bound parameters."""

    column: str
    bind_index: int  # position in the cache key's bindparams
    bind_key: str  # an execution parameter of this name overrides the bound value


@dataclass(slots=True)
class Shape:
    """One statement structure on one bind, as learnt from its first execution."""

    digest: str
    groups: frozenset[str]
    fine_group: str | None
    fine: tuple[FineFilter, ...]
    frozen: FrozenResult[Any]
    entity_positions: tuple[int, ...]
    mappers: dict[str, Mapper[Any]] = field(default_factory=dict)
    uncacheable: str | None = None
    statements: tuple[str, ...] = ()


def option_digest(options: tuple[Any, ...]) -> list[str]:
    """A description of loader options that is the same in every process (no addresses)."""
    described: list[str] = []
    for option in options:
        contexts = getattr(option, "context", None)
        if contexts:
            described.extend(
                f"{type(option).__name__}:{element.path}:{element.strategy}:"
                f"{sorted((str(k), repr(v)) for k, v in (element.local_opts or {}).items())}"
                for element in contexts
            )
        else:
            described.append(type(option).__qualname__)
    return described


def make_digest(parts: list[str]) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def fine_filters(
    statement: Any, cache_key: CacheKey, main_sql: str, other_sql: Sequence[str] = ()
) -> tuple[str | None, tuple[FineFilter, ...]]:
    """Equality/IN filters of the statement's WHERE clause usable as fine dependencies.

    Only for a statement that selects from one plain table, named once in its SQL (no
    self-joins, no subqueries on it, no joined eager load of the same table), and only for
    the table's tracked columns: then every row the result can contain has the filtered value,
    so the result depends only on the rows carrying that value.
    """
    if getattr(statement, "_setup_joins", ()):
        return None, ()  # explicit joins: more than one table's rows
    froms = [f._deannotate() for f in getattr(statement, "columns_clause_froms", ())]
    if len(froms) != 1 or not isinstance(froms[0], Table):
        return None, ()
    table = froms[0]
    if any(f._deannotate() is not table for f in getattr(statement, "_from_obj", ())):
        return None, ()  # an explicit FROM other than the table itself (select_from(table))
    mentions = re.findall(
        r"\b(?:FROM|JOIN)\s+(?:[\w\"`]+\.)?[\"`]?" + re.escape(table.name) + r"[\"`]?(?!\w)",
        main_sql,
        re.IGNORECASE,
    )
    if len(mentions) != 1 or re.search(
        r",\s*(?:[\w\"`]+\.)?[\"`]?" + re.escape(table.name) + r"[\"`]?\s*(?:AS\b|WHERE|$)",
        main_sql,
        re.IGNORECASE,
    ):
        return None, ()
    named = re.compile(r"(?<![\w.])[\"`]?" + re.escape(table.name) + r"[\"`]?(?!\w)", re.IGNORECASE)
    if any(named.search(sql) for sql in other_sql):
        return None, ()  # eager loads read other rows of the same table (a tree's children)
    where = statement.whereclause
    if where is None:
        return None, ()
    tracked = tracked_columns(table)
    positions = {id(bind): index for index, bind in enumerate(cache_key.bindparams)}
    found = []
    for clause in _conjuncts(where):
        if not isinstance(clause, BinaryExpression):
            continue
        if clause.operator not in (operators.eq, operators.in_op):
            continue
        column, value = clause.left, clause.right
        if not isinstance(column, Column) or not isinstance(value, BindParameter):
            continue
        if column.table._deannotate() is not table or column.name not in tracked:
            continue
        if clause.operator is operators.in_op and not value.expanding:
            continue
        index = positions.get(id(value))
        if index is None:
            continue
        found.append(FineFilter(column.name, index, value.key))
    if not found:
        return None, ()
    # One filter is enough (rows matching all of them match each); prefer the primary key.
    found.sort(key=lambda f: 0 if table.c[f.column].primary_key else 1)
    return table_group(table.name), (found[0],)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable_text(value: Any) -> str:
    """A text form of a SQLAlchemy cache key that is the same in every process running the
    same code: memory addresses are dropped, code objects named by file, line and bytecode.

    Two statements that render the same SQL can still differ in values SQLAlchemy keeps in
    the key's structure (a literal inside a ``with_loader_criteria`` lambda, say); keys of
    cached entries include this text, so such statements never share an entry.
    """
    parts: list[str] = []
    _stable(value, parts)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _stable(value: Any, parts: list[str]) -> None:
    if isinstance(value, tuple | list):
        parts.append("(")
        for item in value:
            _stable(item, parts)
        parts.append(")")
    elif isinstance(value, str | int | float | bool) or value is None:
        parts.append(repr(value))
    elif isinstance(value, type):
        parts.append(f"{value.__module__}.{value.__qualname__}")
    elif isinstance(value, types.CodeType):
        digest = hashlib.sha256(value.co_code + repr(value.co_consts).encode()).hexdigest()
        parts.append(f"code:{value.co_filename}:{value.co_firstlineno}:{digest[:16]}")
    else:
        parts.append(_ADDRESS.sub("", f"{type(value).__qualname__}:{value}"))


def _conjuncts(clause: Any) -> list[Any]:
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        parts = []
        for inner in clause.clauses:
            parts += _conjuncts(inner)
        return parts
    return [clause]
