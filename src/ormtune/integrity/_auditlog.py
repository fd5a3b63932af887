"""The audit log: one row per inserted, updated, deleted, soft-deleted or restored row, written
in the same transaction as the change (so a rollback leaves none).

Two hooks feed it, both SQLAlchemy session events:

* ``after_flush`` records the unit of work from each instance's attribute history (old and
  new values of the columns that changed);
* ``do_orm_execute`` records ORM-enabled bulk ``insert()`` / ``update()`` / ``delete()``
  statements, which never pass through the unit of work and which audit libraries built on
  flush events miss: it reads the rows a statement will touch (``SELECT ... FOR UPDATE`` with
  the statement's own WHERE clause, so the set cannot change underneath), runs the statement,
  reads the rows again and records the difference.

Entries are queued on the session and written when it commits (one executemany INSERT on the
session's own connection, inside the transaction being committed); entries made inside a
transaction or savepoint that rolls back are dropped with it.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, event, insert, inspect
from sqlalchemy import select as sql_select
from sqlalchemy import tuple_ as sql_tuple
from sqlalchemy.exc import ResourceClosedError
from sqlalchemy.orm import Mapped, Mapper, Session, declared_attr, mapped_column

from ormtune.exceptions import ConfigurationError
from ormtune.integrity._context import current_audit_context
from ormtune.integrity._softdelete import TIMESTAMP, IncludeDeleted, include_deleted, utcnow
from ormtune.querylog import Registration

if TYPE_CHECKING:
    from sqlalchemy import Result
    from sqlalchemy.orm import ORMExecuteState, SessionTransaction, UOWTransaction
    from sqlalchemy.orm.state import InstanceState

__all__ = ["AUDIT_KEYS_OPTION", "AuditAction", "AuditLogMixin", "record_audit_log"]

AUDIT_KEYS_OPTION = "ormtune_audit_keys"
"""Execution option naming the unique columns that identify an INSERT's rows when its
parameters lack the primary key (repositories set it for upserts)."""

_CHUNK = 500
_Key = tuple[Any, ...]
_Values = dict[str, Any]


class AuditAction(enum.StrEnum):
    """What happened to a row, as stored in ``AuditLog.action``."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    SOFT_DELETE = "soft_delete"
    RESTORE = "restore"
    UPSERT = "upsert"  # an upsert whose rows could not be told apart (no key known)


class AuditLogMixin:
    """Columns of the audit log table; map it in the application's own declarative base so
    Alembic's autogenerate sees it::

        class AuditLog(AuditLogMixin, Base):
            __tablename__ = "audit_log"

    ``changes`` maps each recorded column to ``{"old": ..., "new": ...}`` (JSON-safe: times
    as ISO 8601, decimals and UUIDs as strings); ``row_key`` is the primary key, as text (a
    JSON array for composite keys).
    """

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    occurred_at: Mapped[datetime.datetime] = mapped_column(
        TIMESTAMP, default=utcnow, nullable=False
    )
    table_name: Mapped[str] = mapped_column(String(255), nullable=False)
    row_key: Mapped[str | None] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    actor: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(255))
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Index]:
        name: str = getattr(cls, "__tablename__", "audit_log")
        return (Index(f"ix_{name}_table_row", "table_name", "row_key"),)


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


def _row_key(key: _Key) -> str:
    if len(key) == 1:
        return str(jsonable(key[0]))
    return json.dumps([jsonable(v) for v in key])


class _Columns:
    """What the log records of one mapper: (attribute key, column name, masked) triples."""

    __slots__ = ("columns", "deleted_key", "pk_keys", "table")

    def __init__(self, mapper: Mapper[Any], excluded: set[str], masked: set[str]) -> None:
        self.table = mapper.base_mapper.local_table.name  # type: ignore[attr-defined]
        self.pk_keys = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
        self.columns: list[tuple[str, str, bool]] = []
        for prop in mapper.column_attrs:
            name = prop.columns[0].name
            if name is None or {name, f"{self.table}.{name}"} & excluded:
                continue
            self.columns.append((prop.key, name, bool({name, f"{self.table}.{name}"} & masked)))
        self.deleted_key = "deleted_at" if "deleted_at" in mapper.column_attrs else None


class _Recorder:
    """The listeners of one :func:`record_audit_log` registration."""

    def __init__(
        self,
        model: type[AuditLogMixin],
        *,
        tables: Iterable[str] | None,
        exclude_tables: Iterable[str],
        exclude_columns: Iterable[str],
        mask_columns: Iterable[str],
        mask: str,
    ) -> None:
        self.log_mapper: Mapper[Any] = inspect(model)
        self.log_table = self.log_mapper.local_table
        self.tables = None if tables is None else frozenset(tables)
        self.exclude_tables = frozenset(exclude_tables) | {self.log_table.name}
        self.excluded = set(exclude_columns)
        self.masked = set(mask_columns)
        self.mask = mask
        self._columns: dict[Mapper[Any], _Columns | None] = {}

    # -- configuration -----------------------------------------------------------------------

    def columns_of(self, mapper: Mapper[Any]) -> _Columns | None:
        """The recorded columns of ``mapper``, or ``None`` if it is not audited."""
        try:
            return self._columns[mapper]
        except KeyError:
            pass
        columns: _Columns | None = None
        if mapper.registry is self.log_mapper.registry:
            candidate = _Columns(mapper, self.excluded, self.masked)
            if candidate.table not in self.exclude_tables and (
                self.tables is None or candidate.table in self.tables
            ):
                columns = candidate
        self._columns[mapper] = columns
        return columns

    # -- entries -----------------------------------------------------------------------------

    def _show(self, value: object, masked: bool) -> object:
        return self.mask if masked and value is not None else jsonable(value)

    def entry(
        self, cols: _Columns, key: _Key | None, old: _Values | None, new: _Values | None
    ) -> dict[str, Any] | None:
        """One log row for a row that went from ``old`` to ``new`` (``None``: absent)."""
        changes: dict[str, dict[str, object]] = {}
        for attr, name, masked in cols.columns:
            before = None if old is None else old.get(attr)
            after = None if new is None else new.get(attr)
            present = (old is not None and attr in old) or (new is not None and attr in new)
            if not present or (old is not None and new is not None and before == after):
                continue
            changes[name] = {"old": self._show(before, masked), "new": self._show(after, masked)}
        if old is None:
            action = AuditAction.INSERT
        elif new is None:
            action = AuditAction.DELETE
        else:
            if not changes:
                return None
            action = AuditAction.UPDATE
            if cols.deleted_key is not None and cols.deleted_key in changes:
                was, now = old.get(cols.deleted_key), new.get(cols.deleted_key)
                if was is None and now is not None:
                    action = AuditAction.SOFT_DELETE
                elif was is not None and now is None:
                    action = AuditAction.RESTORE
        return self._row(cols, key, action, changes)

    def _row(
        self, cols: _Columns, key: _Key | None, action: AuditAction, changes: dict[str, Any]
    ) -> dict[str, Any]:
        context = current_audit_context()
        return {
            "occurred_at": utcnow(),
            "table_name": cols.table,
            "row_key": None if key is None else _row_key(key),
            "action": str(action),
            "actor": context.actor,
            "request_id": context.request_id,
            "changes": changes,
        }

    def write(self, session: Session, entries: Sequence[dict[str, Any]]) -> None:
        """Queue ``entries`` on the session, tagged with the (nested) transaction they
        belong to; :func:`_write_pending` writes them when it commits."""
        if entries:
            transaction = session.get_nested_transaction() or session.get_transaction()
            pending = session.info.setdefault(_PENDING, [])
            pending.extend((transaction, self.log_mapper, entry) for entry in entries)

    # -- the unit of work --------------------------------------------------------------------

    def after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        entries: list[dict[str, Any]] = []
        for instance, kind in _flushed(session):
            state: InstanceState[Any] = inspect(instance)
            cols = self.columns_of(state.mapper)
            if cols is None:
                continue
            key = tuple(state.mapper.primary_key_from_instance(instance))
            loaded = {attr: state.dict[attr] for attr, _, _ in cols.columns if attr in state.dict}
            if kind == "new":
                entry = self.entry(cols, key, None, loaded)
            elif kind == "deleted":
                entry = self.entry(cols, key, loaded, None)
            else:
                old: _Values = {}
                new: _Values = {}
                for attr, _, _ in cols.columns:
                    history = state.attrs[attr].history
                    if history.added or history.deleted:
                        old[attr] = history.deleted[0] if history.deleted else None
                        new[attr] = history.added[0] if history.added else None
                entry = self.entry(cols, key, old, new) if new else None
            if entry is not None:
                entries.append(entry)
        self.write(session, entries)

    # -- bulk statements ---------------------------------------------------------------------

    def on_execute(self, state: ORMExecuteState) -> Result[Any] | None:
        if not (state.is_insert or state.is_update or state.is_delete):
            return None
        statement: Any = state.statement
        entity = statement.entity_description.get("entity")
        mapper = inspect(entity, raiseerr=False) if entity is not None else None
        if not isinstance(mapper, Mapper):
            return None
        cols = self.columns_of(mapper)
        if cols is None:
            return None
        bulk = _BulkStatement(self, state, mapper, cols)
        return bulk.insert() if state.is_insert else bulk.update_or_delete()


_PENDING = "ormtune_audit_pending"
_recording = 0  # open registrations; the shared writer flushes early only while there are any
_recording_lock = threading.Lock()


def _write_pending(session: Session) -> None:
    """``before_commit``: write the queued entries in the transaction that is committing.

    Shared by every registration (and left installed when they close), so entries queued
    before a registration closed are still written when their transaction commits.
    """
    if not session.info.get(_PENDING) and not (
        _recording and (session.new or session.dirty or session.deleted)
    ):
        return
    session.flush()  # the commit's own flush comes after this event: make it now
    pending = session.info.pop(_PENDING, [])
    by_log: dict[Mapper[Any], list[dict[str, Any]]] = {}
    for _, log_mapper, entry in pending:
        by_log.setdefault(log_mapper, []).append(entry)
    for log_mapper, entries in by_log.items():
        connection = session.connection(bind_arguments={"mapper": log_mapper})
        table: Any = log_mapper.local_table
        connection.execute(insert(table), entries)


def _drop_rolled_back(session: Session, previous: SessionTransaction) -> None:
    """``after_soft_rollback``: drop the entries of a transaction (or savepoint) that rolled
    back."""
    pending = session.info.get(_PENDING)
    if pending:
        session.info[_PENDING] = [item for item in pending if not _within(item[0], previous)]


def _within(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


def _returns_rows(result: Result[Any]) -> bool:
    try:
        result.keys()
    except ResourceClosedError:  # "This result object does not return rows"
        return False
    return True


def _flushed(session: Session) -> Iterable[tuple[object, str]]:
    for instance in session.new:
        yield instance, "new"
    for instance in session.dirty:
        if session.is_modified(instance, include_collections=False):
            yield instance, "dirty"
    for instance in session.deleted:
        yield instance, "deleted"


class _BulkStatement:
    """Recording one ORM-enabled bulk statement: read, run, read again, log the difference."""

    def __init__(
        self, recorder: _Recorder, state: ORMExecuteState, mapper: Mapper[Any], cols: _Columns
    ) -> None:
        self.recorder = recorder
        self.state = state
        self.mapper = mapper
        self.cols = cols
        self.session = state.session
        entity = mapper.class_
        self.pk_attrs = [getattr(entity, key) for key in cols.pk_keys]
        self.value_keys = list(dict.fromkeys([*cols.pk_keys, *(a for a, _, _ in cols.columns)]))
        self.opted_out = any(isinstance(o, IncludeDeleted) for o in state.user_defined_options)
        self.lock = self.session.get_bind(mapper=mapper).dialect.name != "sqlite"

    def _params(self) -> list[Mapping[str, Any]]:
        params = self.state.parameters
        if params is None:
            return []
        if isinstance(params, Mapping):
            return [params]
        return list(params)

    def _select(self, where: Any, *, include: bool, lock: bool = False) -> dict[_Key, _Values]:
        entity = self.mapper.class_
        statement = sql_select(*(getattr(entity, key) for key in self.value_keys))
        if where is not None:
            statement = statement.where(where)
        if include:
            statement = statement.options(include_deleted())
        if lock and self.lock:
            statement = statement.with_for_update()
        rows: dict[_Key, _Values] = {}
        npk = len(self.cols.pk_keys)
        for row in self.session.execute(statement):
            values = dict(zip(self.value_keys, row, strict=True))
            rows[tuple(row[:npk])] = values
        return rows

    def _by_keys(
        self, attrs: Sequence[Any], keys: Sequence[_Key], *, include: bool, lock: bool = False
    ) -> dict[_Key, _Values]:
        rows: dict[_Key, _Values] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            if len(attrs) == 1:
                where = attrs[0].in_([k[0] for k in chunk])
            else:
                where = sql_tuple(*attrs).in_(chunk)
            rows.update(self._select(where, include=include, lock=lock))
        return rows

    def update_or_delete(self) -> Result[Any]:
        params = self._params()
        statement: Any = self.state.statement
        if (
            self.state.is_update
            and params
            and all(all(k in p for k in self.cols.pk_keys) for p in params)
        ):
            keys = [tuple(p[k] for k in self.cols.pk_keys) for p in params]
            before = self._by_keys(self.pk_attrs, keys, include=self.opted_out, lock=True)
        else:
            before = self._select(statement.whereclause, include=self.opted_out, lock=True)
        result = self.state.invoke_statement()
        if self.state.is_update:
            after = self._by_keys(self.pk_attrs, list(before), include=True)
        else:
            after = {}
        entries = [
            entry
            for key, old in before.items()
            if (entry := self.recorder.entry(self.cols, key, old, after.get(key))) is not None
        ]
        self.recorder.write(self.session, entries)
        return result

    def insert(self) -> Result[Any]:
        params = self._params()
        statement: Any = self.state.statement
        key_names = self._key_names(params)
        key_attrs = [getattr(self.mapper.class_, name) for name in key_names]
        keys = [tuple(p[k] for k in key_names) for p in params] if key_names else []
        before: dict[_Key, _Values] = {}
        if keys:
            before = self._rekey(self._by_keys(key_attrs, keys, include=True, lock=True), key_names)
        result = self.state.invoke_statement()
        after: dict[_Key, _Values] = {}
        if _returns_rows(result):
            # RETURNING (a repository's create_many and upsert return the model): read the
            # rows, and hand the caller a fresh result over the same rows.
            frozen = result.freeze()
            for row in frozen().all():
                instance = next((v for v in row if isinstance(v, self.mapper.class_)), None)
                if instance is None:
                    break
                loaded = inspect(instance).dict
                values = {a: loaded.get(a) for a in self.value_keys}
                after[tuple(values[k] for k in key_names or self.cols.pk_keys)] = values
            result = frozen()
        if not after and keys:
            after = self._rekey(self._by_keys(key_attrs, keys, include=True), key_names)
        elif not after:
            upsert = getattr(statement, "_post_values_clause", None) is not None
            self.recorder.write(self.session, [self._unkeyed(p, upsert) for p in params])
            return result
        entries = []
        for key, new in after.items():
            pk = tuple(new[k] for k in self.cols.pk_keys)
            entry = self.recorder.entry(self.cols, pk, before.get(key), new)
            if entry is not None:
                entries.append(entry)
        self.recorder.write(self.session, entries)
        return result

    def _key_names(self, params: Sequence[Mapping[str, Any]]) -> list[str]:
        """The columns that identify the inserted rows: the primary key if every row gives
        it, else the statement's ``ormtune_audit_keys``, else none."""
        if params and all(all(p.get(k) is not None for k in self.cols.pk_keys) for p in params):
            return list(self.cols.pk_keys)
        named = self.state.execution_options.get(AUDIT_KEYS_OPTION)
        if named and params and all(all(k in p for k in named) for p in params):
            return list(named)
        return []

    def _rekey(self, rows: dict[_Key, _Values], key_names: Sequence[str]) -> dict[_Key, _Values]:
        return {tuple(v[k] for k in key_names): v for v in rows.values()}

    def _unkeyed(self, values: Mapping[str, Any], upsert: bool) -> dict[str, Any]:
        changes = {
            name: {"old": None, "new": self.recorder._show(values[attr], masked)}
            for attr, name, masked in self.cols.columns
            if attr in values
        }
        action = AuditAction.UPSERT if upsert else AuditAction.INSERT
        return self.recorder._row(self.cols, None, action, changes)


_Target = type[Session] | Session | Callable[..., Session]


def record_audit_log(
    model: type[AuditLogMixin],
    *,
    target: _Target = Session,
    tables: Iterable[str] | None = None,
    exclude_tables: Iterable[str] = (),
    exclude_columns: Iterable[str] = (),
    mask_columns: Iterable[str] = (),
    mask: str = "***",
) -> Registration:
    """Record every change to the models mapped in ``model``'s registry into ``model`` (a class
    using :class:`AuditLogMixin`) until the returned registration is closed.

    ``target`` is what to listen on: the ``Session`` class (every session, including the one
    inside each ``AsyncSession``), a ``sessionmaker`` or one session. ``tables`` limits the
    log to those tables; ``exclude_tables`` leaves some out. Columns are named ``"column"``
    (in every table) or ``"table.column"``: ``exclude_columns`` are never recorded,
    ``mask_columns`` are recorded as ``mask`` (so the log shows *that* a password changed,
    not to what).
    """
    if not (isinstance(model, type) and issubclass(model, AuditLogMixin)):
        raise ConfigurationError(
            f"record_audit_log() needs a mapped class that uses AuditLogMixin, not {model!r}"
        )
    recorder = _Recorder(
        model,
        tables=tables,
        exclude_tables=exclude_tables,
        exclude_columns=exclude_columns,
        mask_columns=mask_columns,
        mask=mask,
    )
    global _recording
    for name, writer in (
        ("before_commit", _write_pending),
        ("after_soft_rollback", _drop_rolled_back),
    ):
        if not event.contains(target, name, writer):
            event.listen(target, name, writer)
    listeners: list[tuple[str, Callable[..., Any]]] = [
        ("after_flush", recorder.after_flush),
        ("do_orm_execute", recorder.on_execute),
    ]
    for name, listener in listeners:
        event.listen(target, name, listener)
    with _recording_lock:
        _recording += 1

    def remove() -> None:
        global _recording
        for name, listener in listeners:
            event.remove(target, name, listener)
        with _recording_lock:
            _recording -= 1

    return Registration(remove)
