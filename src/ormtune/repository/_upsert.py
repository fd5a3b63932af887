"""Upsert statements for each database: PostgreSQL and SQLite ``INSERT ... ON CONFLICT DO
UPDATE``, MariaDB / MySQL ``INSERT ... ON DUPLICATE KEY UPDATE``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Index

from ormtune.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sqlalchemy.engine import Dialect
    from sqlalchemy.orm import Mapper

__all__ = ["upsert_statement"]

_NEVER_OVERWRITTEN = {"created_at", "created_by"}
_STAMPS = ("updated_at", "updated_by")


def _partial_index_where(mapper: Mapper[Any], columns: Sequence[str], dialect: str) -> Any:
    """The WHERE of a partial unique index over exactly ``columns`` (such as one made by
    ``unique_among_live``): ON CONFLICT must name it to use that index as its target."""
    for index in mapper.local_table.indexes:  # type: ignore[attr-defined]
        same = sorted(c.name for c in index.columns) == sorted(columns)
        if isinstance(index, Index) and index.unique and same:
            return index.dialect_options[dialect].get("where")
    return None


def upsert_statement(
    mapper: Mapper[Any],
    dialect: Dialect,
    rows: Sequence[Mapping[str, Any]],
    conflict: Sequence[str],
    update: Sequence[str] | None,
) -> tuple[Any, bool]:
    """(statement, whether it returns the model's instances) for an executemany upsert of
    ``rows`` keyed on the ``conflict`` fields."""
    model = mapper.class_
    given = list(dict.fromkeys(k for row in rows for k in row))
    pk = {mapper.get_property_by_column(c).key for c in mapper.primary_key}
    overwrite = (
        list(update)
        if update is not None
        else [k for k in given if k not in conflict and k not in pk and k not in _NEVER_OVERWRITTEN]
    )
    column_of = {prop.key: prop.columns[0].name for prop in mapper.column_attrs}
    # ON CONFLICT / ON DUPLICATE KEY do not apply onupdate defaults; the proposed row's
    # updated_at / updated_by (filled by their insert defaults: now, the current actor) are
    # what an update would have set. No bound parameters: MySQL drivers batch executemany
    # by rewriting VALUES, which parameters after VALUES would break.
    overwrite += [k for k in _STAMPS if k in column_of and k not in overwrite]
    name = dialect.name
    if name in ("postgresql", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        dml: Any = postgresql if name == "postgresql" else sqlite
        statement: Any = dml.insert(model)
        conflict_columns = [column_of[k] for k in conflict]
        set_ = {column_of[k]: statement.excluded[column_of[k]] for k in overwrite}
        where = _partial_index_where(mapper, conflict_columns, name)
        if set_:
            statement = statement.on_conflict_do_update(
                index_elements=conflict_columns, index_where=where, set_=set_
            )
        else:
            statement = statement.on_conflict_do_nothing(
                index_elements=conflict_columns, index_where=where
            )
        return statement.returning(model, sort_by_parameter_order=True), True
    if name in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        statement = mysql_insert(model)
        values = {column_of[k]: statement.inserted[column_of[k]] for k in overwrite}
        if not values:  # "do nothing": an assignment that changes nothing
            first = column_of[conflict[0]]
            values = {first: statement.inserted[first]}
        return statement.on_duplicate_key_update(values), False
    raise ConfigurationError(f"upsert() supports PostgreSQL, SQLite, MariaDB and MySQL, not {name}")
