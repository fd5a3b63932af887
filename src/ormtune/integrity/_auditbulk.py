"""The audit log's record of one ORM-enabled bulk statement: read the rows it will touch, run
it, read them again and log the difference.

``UPDATE``/``DELETE`` read the affected rows with the statement's own WHERE clause (``FOR
UPDATE`` on PostgreSQL and MariaDB, so the set cannot change underneath). ``INSERT`` needs the
new rows' keys: from the parameters (primary key, or the ``ormtune_audit_keys`` execution
option for upserts), from the statement's own RETURNING, from the driver for a single-row
``.values()`` insert, or else from a RETURNING of the primary key that ormtune adds where the
database has ``INSERT ... RETURNING`` (PostgreSQL, SQLite 3.35+, MariaDB 10.5+); the caller
still gets the result it would have had. Without any of those, rows are logged unkeyed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect
from sqlalchemy.engine import CursorResult
from sqlalchemy.engine.result import null_result
from sqlalchemy.exc import InvalidRequestError, ResourceClosedError
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from ormtune.integrity._auditrows import (
    AUDIT_KEYS_OPTION,
    AuditAction,
    AuditedColumns,
    Key,
    Values,
    read_rows,
)
from ormtune.integrity._softdelete import IncludeDeleted

if TYPE_CHECKING:
    from sqlalchemy import Result
    from sqlalchemy.orm import Mapper, ORMExecuteState

    from ormtune.integrity._auditlog import Recorder

__all__ = ["BulkStatement", "returns_rows"]


def returns_rows(result: Result[Any]) -> bool:
    """Whether ``result`` has rows to read."""
    try:
        result.keys()
    except ResourceClosedError:  # "This result object does not return rows"
        return False
    return True


class BulkStatement:
    """Recording one ORM-enabled bulk statement: read, run, read again, log the difference."""

    def __init__(
        self,
        recorder: Recorder,
        state: ORMExecuteState,
        mapper: Mapper[Any],
        cols: AuditedColumns,
    ) -> None:
        self.recorder = recorder
        self.state = state
        self.mapper = mapper
        self.cols = cols
        self.session = state.session
        self.value_keys = list(dict.fromkeys([*cols.pk_keys, *(a for a, _, _ in cols.columns)]))
        self.opted_out = any(isinstance(o, IncludeDeleted) for o in state.user_defined_options)

    def _params(self) -> list[Mapping[str, Any]]:
        params = self.state.parameters
        if params is None:
            return []
        if isinstance(params, Mapping):
            return [params] if params else []
        return list(params)

    def _read(self, **kwargs: Any) -> dict[Key, Values]:
        return read_rows(self.session, self.mapper, self.value_keys, **kwargs)

    def _log(self, pairs: Sequence[tuple[Key, Values | None, Values | None]]) -> None:
        entries = [
            entry
            for key, old, new in pairs
            if (entry := self.recorder.entry(self.cols, key, old, new)) is not None
        ]
        self.recorder.write(self.session, entries)

    # -- UPDATE / DELETE ---------------------------------------------------------------------

    def update_or_delete(self) -> Result[Any]:
        params = self._params()
        pk_keys = self.cols.pk_keys
        if self.state.is_update and params and all(all(k in p for k in pk_keys) for p in params):
            keys = [tuple(p[k] for k in pk_keys) for p in params]
            before = self._read(key_attrs=pk_keys, keys=keys, include=self.opted_out, lock=True)
        else:
            statement: Any = self.state.statement
            where = statement.whereclause
            before = self._read(where=where, include=self.opted_out, lock=True)
        result = self.state.invoke_statement()
        after = self._read(key_attrs=pk_keys, keys=list(before)) if self.state.is_update else {}
        self._log([(key, old, after.get(key)) for key, old in before.items()])
        return result

    # -- INSERT ------------------------------------------------------------------------------

    def insert(self) -> Result[Any]:
        params = self._params()
        statement: Any = self.state.statement
        key_names = self._key_names(params)
        self.value_keys += [k for k in key_names if k not in self.value_keys]
        keys = [tuple(p[k] for k in key_names) for p in params] if key_names else []
        before: dict[Key, Values] = {}
        if keys:
            before = self._rekey(self._read(key_attrs=key_names, keys=keys, lock=True), key_names)
        pks: list[Key] = []
        after: dict[Key, Values] = {}
        if not key_names and params and self._can_add_returning(statement, params):
            # Nothing identifies the new rows: ask the database for their keys. The caller
            # asked for no rows, and gets the same empty result SQLAlchemy would have given.
            pk_attrs = [getattr(self.mapper.class_, k) for k in self.cols.pk_keys]
            kwargs = {"sort_by_parameter_order": True} if len(self.mapper.tables) > 1 else {}
            returned = self.state.invoke_statement(
                statement=statement.returning(*pk_attrs, **kwargs)
            )
            pks = [tuple(row) for row in returned]
            result: Result[Any] = null_result()
            result.close()  # fetching from it raises ResourceClosedError, as it would have
        else:
            result = self.state.invoke_statement()
            if getattr(statement, "_returning", ()) and returns_rows(result):
                result, after, pks = self._from_returning(result)
            elif not key_names and not params:
                pks = self._driver_keys(result)
        if pks:
            after = self._read(key_attrs=self.cols.pk_keys, keys=pks)
        elif not after and keys:
            after = self._read(key_attrs=key_names, keys=keys)
        elif not after:
            upsert = getattr(statement, "_post_values_clause", None) is not None
            rows = params or _values_of(statement, self.mapper)
            self.recorder.write(self.session, [self._unkeyed(p, upsert) for p in rows])
            return result
        identify = key_names or self.cols.pk_keys
        self._log(
            [
                (
                    tuple(new[k] for k in self.cols.pk_keys),
                    before.get(tuple(new.get(k) for k in identify)),
                    new,
                )
                for new in after.values()
            ]
        )
        return result

    def _can_add_returning(self, statement: Any, params: Sequence[Mapping[str, Any]]) -> bool:
        """Whether RETURNING the primary key can be added without changing the caller's
        result: an ORM bulk INSERT (parameters given, SQLAlchemy's "bulk" strategy returns
        no rows), not an upsert, without RETURNING of its own, on a database with
        INSERT ... RETURNING."""
        if getattr(statement, "_returning", ()) or not self.cols.pk_keys:
            return False
        if getattr(statement, "_post_values_clause", None) is not None:
            return False  # an upsert: keys alone cannot tell its inserts from its updates
        if self.state.execution_options.get("dml_strategy", "auto") not in ("auto", "bulk"):
            return False
        dialect = self.session.get_bind(mapper=self.mapper).dialect
        if len(self.mapper.tables) > 1:
            return bool(dialect.insert_executemany_returning_sort_by_parameter_order)
        if len(params) > 1:
            return bool(dialect.insert_executemany_returning)
        return bool(dialect.insert_returning)

    def _from_returning(
        self, result: Result[Any]
    ) -> tuple[Result[Any], dict[Key, Values], list[Key]]:
        """Read a RETURNING result (instances, or at least the primary key columns), and hand
        the caller a fresh result over the same rows."""
        frozen = result.freeze()
        rows = frozen().all()
        names = list(frozen().keys())
        after: dict[Key, Values] = {}
        pks: list[Key] = []
        for row in rows:
            instance = next((v for v in row if isinstance(v, self.mapper.class_)), None)
            if instance is not None:
                loaded = inspect(instance).dict
                values = {a: loaded.get(a) for a in self.value_keys}
                after[tuple(values[k] for k in self.cols.pk_keys)] = values
            elif all(k in names for k in self.cols.pk_keys):
                mapping = row._mapping
                pks.append(tuple(mapping[k] for k in self.cols.pk_keys))
        return frozen(), after, pks

    @staticmethod
    def _driver_keys(result: Result[Any]) -> list[Key]:
        """The keys a single-row ``.values()`` INSERT reports (``inserted_primary_key``)."""
        if not isinstance(result, CursorResult):
            return []
        try:
            rows = result.inserted_primary_key_rows
        except InvalidRequestError:
            return []
        keys = [tuple(row) for row in rows if row is not None]
        return keys if keys and all(v is not None for k in keys for v in k) else []

    def _key_names(self, params: Sequence[Mapping[str, Any]]) -> list[str]:
        """The columns that identify the inserted rows: the primary key if every row gives
        it, else the statement's ``ormtune_audit_keys``, else none."""
        pk_keys = self.cols.pk_keys
        if params and all(all(p.get(k) is not None for k in pk_keys) for p in params):
            return list(pk_keys)
        named = self.state.execution_options.get(AUDIT_KEYS_OPTION)
        if named and params and all(all(k in p for k in named) for p in params):
            return list(named)
        return []

    def _rekey(self, rows: dict[Key, Values], key_names: Sequence[str]) -> dict[Key, Values]:
        return {tuple(v.get(k) for k in key_names): v for v in rows.values()}

    def _unkeyed(self, values: Mapping[str, Any], upsert: bool) -> dict[str, Any]:
        changes = {
            name: {"old": None, "new": self.recorder.show(values[attr], masked)}
            for attr, name, masked in self.cols.columns
            if attr in values
        }
        action = AuditAction.UPSERT if upsert else AuditAction.INSERT
        return self.recorder.row(self.cols, None, action, changes)


def _values_of(statement: Any, mapper: Mapper[Any]) -> list[dict[str, Any]]:
    """The rows of an ``insert().values(...)`` statement, by attribute key (literal values;
    SQL expressions as their SQL text), for the unkeyed record of a multi-row VALUES insert."""
    by_column = {column.key: prop.key for prop in mapper.column_attrs for column in prop.columns}

    def value(raw: object) -> object:
        if isinstance(raw, BindParameter):
            return raw.effective_value
        if isinstance(raw, ClauseElement):
            return str(raw)
        return raw

    def attr(column: object) -> str:
        name = column if isinstance(column, str) else getattr(column, "key", str(column))
        return by_column.get(name, name)

    table_columns = list(mapper.local_table.columns)
    multi = getattr(statement, "_multi_values", ())
    if multi:
        rows = []
        for row in multi[0]:
            if isinstance(row, Mapping):
                rows.append({attr(c): value(v) for c, v in row.items()})
            else:
                rows.append({attr(c): value(v) for c, v in zip(table_columns, row, strict=False)})
        return rows
    single = getattr(statement, "_values", None)
    return [{attr(c): value(v) for c, v in single.items()}] if single else []
