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

import datetime  # noqa: TC003 (SQLAlchemy resolves Mapped[...] annotations at runtime)
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, event, insert, inspect
from sqlalchemy.orm import NO_VALUE, Mapped, Mapper, Session, declared_attr, mapped_column

from ormtune.exceptions import ConfigurationError
from ormtune.integrity._auditbulk import BulkStatement
from ormtune.integrity._auditrows import (
    AUDIT_KEYS_OPTION,
    AuditAction,
    AuditedColumns,
    Key,
    Values,
    jsonable,
    read_rows,
    row_key,
)
from ormtune.integrity._context import current_audit_context
from ormtune.integrity._softdelete import TIMESTAMP, utcnow
from ormtune.querylog import Registration

if TYPE_CHECKING:
    from sqlalchemy import Result
    from sqlalchemy.orm import ORMExecuteState, SessionTransaction, UOWTransaction
    from sqlalchemy.orm.state import InstanceState

__all__ = [
    "AUDIT_KEYS_OPTION",
    "AuditAction",
    "AuditLogMixin",
    "Recorder",
    "jsonable",
    "record_audit_log",
]


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


class Recorder:
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
        self._columns: dict[Mapper[Any], AuditedColumns | None] = {}
        self._preloaded_key = f"ormtune_audit_old_values_{id(self)}"

    # -- configuration -----------------------------------------------------------------------

    def columns_of(self, mapper: Mapper[Any]) -> AuditedColumns | None:
        """The recorded columns of ``mapper``, or ``None`` if it is not audited."""
        try:
            return self._columns[mapper]
        except KeyError:
            pass
        columns: AuditedColumns | None = None
        if mapper.registry is self.log_mapper.registry:
            candidate = AuditedColumns(mapper, self.excluded, self.masked)
            if not (candidate.tables & self.exclude_tables) and (
                self.tables is None or candidate.tables & self.tables
            ):
                columns = candidate
        self._columns[mapper] = columns
        return columns

    # -- entries -----------------------------------------------------------------------------

    def show(self, value: object, masked: bool) -> object:
        return self.mask if masked and value is not None else jsonable(value)

    def entry(
        self, cols: AuditedColumns, key: Key | None, old: Values | None, new: Values | None
    ) -> dict[str, Any] | None:
        """One log row for a row that went from ``old`` to ``new`` (``None``: absent)."""
        changes: dict[str, dict[str, object]] = {}
        for attr, name, masked in cols.columns:
            before = None if old is None else old.get(attr)
            after = None if new is None else new.get(attr)
            present = (old is not None and attr in old) or (new is not None and attr in new)
            if not present or (old is not None and new is not None and before == after):
                continue
            changes[name] = {"old": self.show(before, masked), "new": self.show(after, masked)}
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
        return self.row(cols, key, action, changes)

    def row(
        self, cols: AuditedColumns, key: Key | None, action: AuditAction, changes: dict[str, Any]
    ) -> dict[str, Any]:
        context = current_audit_context()
        return {
            "occurred_at": utcnow(),
            "table_name": cols.table,
            "row_key": None if key is None else row_key(key),
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

    def before_flush(self, session: Session, flush_context: UOWTransaction, _: object) -> None:
        """Read the old values attribute history cannot give: columns that were expired (by a
        commit, ``expire()``) or deferred, then set; and, for rows being deleted, columns not
        loaded. One SELECT per mapper (per 500 rows), only when there are such columns."""
        wanted: dict[Mapper[Any], tuple[list[Key], set[str]]] = {}
        for instance, kind in _flushed(session):
            state: InstanceState[Any] = inspect(instance)
            cols = self.columns_of(state.mapper)
            if cols is None or kind == "new" or state.key is None:
                continue
            missing = {
                attr
                for attr, _, _ in cols.columns
                if (
                    attr not in state.dict if kind == "deleted" else _old_value_unknown(state, attr)
                )
            }
            if missing:
                keys, attrs = wanted.setdefault(state.mapper, ([], set()))
                keys.append(state.key[1])
                attrs |= missing
        preloaded: dict[tuple[Mapper[Any], Key], Values] = {}
        if wanted:
            with session.no_autoflush:
                for mapper, (keys, attrs) in wanted.items():
                    pk_keys = self.columns_of(mapper).pk_keys  # type: ignore[union-attr]
                    value_keys = [*pk_keys, *sorted(attrs - set(pk_keys))]
                    rows = read_rows(
                        session, mapper, value_keys, key_attrs=pk_keys, keys=keys, lock=True
                    )
                    preloaded.update(((mapper, key), values) for key, values in rows.items())
        session.info[self._preloaded_key] = preloaded

    def after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        preloaded: dict[tuple[Mapper[Any], Key], Values] = session.info.pop(self._preloaded_key, {})
        entries: list[dict[str, Any]] = []
        for instance, kind in _flushed(session):
            state: InstanceState[Any] = inspect(instance)
            cols = self.columns_of(state.mapper)
            if cols is None:
                continue
            if state.key is not None and kind != "new":
                key: Key = tuple(state.key[1])
            else:
                key = tuple(state.mapper.primary_key_from_instance(instance))
            known = preloaded.get((state.mapper, key), {})
            loaded = {attr: state.dict[attr] for attr, _, _ in cols.columns if attr in state.dict}
            if kind == "new":
                entry = self.entry(cols, key, None, loaded)
            elif kind == "deleted":
                entry = self.entry(cols, key, {**known, **loaded}, None)
            else:
                old: Values = {}
                new: Values = {}
                for attr, _, _ in cols.columns:
                    history = state.attrs[attr].history
                    if history.added or history.deleted:
                        if history.deleted:
                            old[attr] = history.deleted[0]
                        else:
                            old[attr] = known.get(attr)
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
        bulk = BulkStatement(self, state, mapper, cols)
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


def _old_value_unknown(state: InstanceState[Any], attr: str) -> bool:
    """Whether ``attr`` was changed without its old value being known (it was expired or
    deferred when it was set): SQLAlchemy then keeps ``NO_VALUE`` as its committed value, and
    attribute history has a new value and no old one (as it does when the old one was NULL)."""
    return state.committed_state.get(attr) is NO_VALUE


def _flushed(session: Session) -> Iterable[tuple[object, str]]:
    for instance in session.new:
        yield instance, "new"
    for instance in session.dirty:
        if session.is_modified(instance, include_collections=False):
            yield instance, "dirty"
    for instance in session.deleted:
        yield instance, "deleted"


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
    recorder = Recorder(
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
        ("before_flush", recorder.before_flush),
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
