"""What a session has written since a batch loaded a relationship: which of its peers' rows a
lazy load would now read differently (``_handover.py`` hands over the others).

Tracked per session (:class:`WriteLog`), as precisely as cheap:

* a flushed object of a table the relationship reads matters when it is inserted or deleted, or
  when a column the relationship reads changed (its join, ``order_by`` and discriminator
  columns). When the written table holds the join's columns, only the peers the row's old and
  new values name are stale; otherwise every peer of the batch is;
* a flushed peer whose own join columns changed is stale (a many-to-one's foreign key);
* a many-to-many's association rows: the peer whose collection changed, or the peers added to
  or removed from the other side's collection;
* rows the database deletes itself (``ON DELETE`` of a foreign key to a deleted row's table):
  every peer of a batch reading those rows;
* a statement run through ``Session.execute`` stales every peer of every batch reading its
  table, unless it is an ``UPDATE`` that names the columns it sets and sets none the
  relationship reads, or an ``INSERT`` into the peers' own table; text other than a ``SELECT``
  stales every batch;
* a rollback (a savepoint's too) and the end of the transaction (the next one may see other
  transactions' writes) end every batch, and so does removing the tracking (nothing would see
  the writes after that).

Writes made on the session's connection directly, bypassing the session (``connection()``,
``bulk_save_objects``), are not seen.
"""

from __future__ import annotations

import weakref
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, event
from sqlalchemy.orm import MANYTOONE, ColumnProperty, Mapper, RelationshipProperty, Session
from sqlalchemy.orm.attributes import get_history
from sqlalchemy.orm.base import NO_VALUE, PassiveFlag, instance_state
from sqlalchemy.sql import visitors
from sqlalchemy.sql.schema import Column

if TYPE_CHECKING:
    from sqlalchemy.orm import ORMExecuteState, UOWTransaction
    from sqlalchemy.orm.state import InstanceState
    from sqlalchemy.sql.elements import ColumnElement

    from ormtune.batchload._handover import Batch

__all__ = [
    "WriteLog",
    "backing_off",
    "canonical",
    "install_write_tracking",
    "log_of",
    "note_statement",
    "remove_write_tracking",
    "tracking_generation",
    "watch_of",
]

_LOG = "_ormtune_write_log"  # the session's WriteLog, in its __dict__
_generation = 0  # bumped when the write tracking is removed: every batch left then is stale


def tracking_generation() -> int:
    """Changes whenever the tracking is removed: a batch made before is stale."""
    return _generation


def canonical(value: Any) -> Any:
    """A key value as written rows and peers are compared: an application may set a foreign
    key as ``"5"`` where the peer's key is ``5``, and the database would match them."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except ArithmeticError:
            return value.lower()
        if not value.is_finite():
            return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Decimal):
        value = value.normalize()
        return str(int(value)) if value == value.to_integral_value() else str(value)
    return str(value).lower()


class _Watch:
    """What one relationship's lazy load reads, worked out once per relationship."""

    __slots__ = (
        "autoflush",
        "columns",
        "key",
        "own_attributes",
        "own_columns",
        "peer_attributes",
        "prop",
        "row_columns",
        "row_table",
        "secondary",
        "tables",
        "uselist",
    )

    def __init__(self, prop: RelationshipProperty[Any]) -> None:
        self.prop = prop
        self.key = prop.key
        self.uselist = bool(prop.uselist)
        parent_tables = set(prop.parent.tables)
        target_tables = set(prop.mapper.tables)
        clauses: list[Any] = [prop.primaryjoin, *(prop.order_by or ())]
        if prop.secondaryjoin is not None:
            clauses.append(prop.secondaryjoin)
        if prop.mapper.polymorphic_on is not None:
            clauses.append(prop.mapper.polymorphic_on)
        read: set[Column[Any]] = set()
        for clause in clauses:
            read.update(_columns_in(clause))
        # The peer's own columns matter for that peer only: its side of the join (a
        # many-to-one's foreign key, also when both sides are one table), and columns of the
        # parent's tables that no other side has.
        parent_only = {c for c in read if c.table in parent_tables and c.table not in target_tables}
        local = {local for local, _ in prop.local_remote_pairs or ()}
        own = {c for c in read if c in parent_only or c in local}
        own_attributes: set[str] = set()
        for column in list(own):
            try:
                own_attributes.add(prop.parent.get_property_by_column(column).key)
            except Exception:  # not mapped on the parent: any write of it counts for every peer
                own.discard(column)
                parent_only.discard(column)
        self.own_columns = frozenset(own)
        self.own_attributes = frozenset(own_attributes)
        self.columns = frozenset(read - parent_only)
        secondary = prop.secondary if isinstance(prop.secondary, Table) else None
        self.secondary = secondary
        tables: set[Any] = set(target_tables)
        tables.update(c.table for c in self.columns)
        if secondary is not None:
            tables.add(secondary)
        self.tables = frozenset(t for t in tables if isinstance(t, Table))
        # Where a written row names the one peer it matters to: the join's other side.
        self.row_table: Table | None = None
        self.row_columns: tuple[ColumnElement[Any], ...] = ()
        self.peer_attributes: tuple[str, ...] = ()
        pairs = list(prop.local_remote_pairs or ())
        remote_tables = {remote.table for _, remote in pairs}
        if secondary is None and len(remote_tables) == 1 and remote_tables <= target_tables:
            try:
                peer_attributes = tuple(
                    prop.parent.get_property_by_column(local).key for local, _ in pairs
                )
            except Exception:
                peer_attributes = ()
            if peer_attributes:
                (table,) = remote_tables
                assert isinstance(table, Table)
                self.row_table = table
                self.row_columns = tuple(remote for _, remote in pairs)
                self.peer_attributes = peer_attributes
        uses_get = bool(getattr(prop._get_strategy((("lazy", "select"),)), "use_get", False))
        # By primary key, a many-to-one's lazy load takes a target already in the session
        # without SQL, so without an autoflush; every other lazy load autoflushes.
        self.autoflush = not (prop.direction is MANYTOONE and uses_get)


def _columns_in(clause: Any) -> set[Column[Any]]:
    """The table columns ``clause`` reads (a relationship's are annotated copies)."""
    found: set[Column[Any]] = set()
    for element in visitors.iterate(clause):
        if isinstance(element, Column):
            column = element._deannotate()
            assert isinstance(column, Column)
            found.add(column)
    return found


_watches: dict[RelationshipProperty[Any], _Watch] = {}


def watch_of(prop: RelationshipProperty[Any]) -> _Watch:
    watch = _watches.get(prop)
    if watch is None:
        watch = _watches[prop] = _Watch(prop)
    return watch


class WriteLog:
    """One session's writes, as far as the batches it has left unread need them."""

    __slots__ = ("backoff", "batches", "epoch")

    def __init__(self) -> None:
        self.epoch = 0  # bumped by what makes every batch stale
        # Relationships whose batches ended with the transaction before handing anything over
        # (a loop that commits at every step): [batches ended so, lazy loads left plain].
        self.backoff: dict[RelationshipProperty[Any], list[int]] = {}
        # The batches not yet fully handed over, by table they read or own.
        self.batches: dict[Table, weakref.WeakSet[Batch]] = {}

    def watch(self, batch: Batch) -> None:
        """Have ``batch`` told about the writes of the tables it reads or owns, while it lives."""
        watch = batch.watch
        for table in (*watch.tables, *{column.table for column in watch.own_columns}):
            if isinstance(table, Table):
                self.batches.setdefault(table, weakref.WeakSet()).add(batch)


def log_of(session: Session) -> WriteLog:
    log: WriteLog | None = session.__dict__.get(_LOG)
    if log is None:
        log = session.__dict__[_LOG] = WriteLog()
    return log


def _key_values(
    state: InstanceState[Any], attributes: tuple[str, ...], *, old: bool
) -> tuple[Any, ...] | None:
    source = state.committed_state if old else state.dict
    values = []
    for attribute in attributes:
        if old and attribute not in source:
            value = state.dict.get(attribute, NO_VALUE)
        else:
            value = source.get(attribute, NO_VALUE)
        if value is NO_VALUE:
            return None
        values.append(canonical(value))
    return tuple(values)


_row_attributes: dict[tuple[Mapper[Any], RelationshipProperty[Any]], tuple[str, ...] | None] = {}


def _row_attributes_of(mapper: Mapper[Any], watch: _Watch) -> tuple[str, ...] | None:
    cache_key = (mapper, watch.prop)
    try:
        return _row_attributes[cache_key]
    except KeyError:
        pass
    try:
        found: tuple[str, ...] | None = tuple(
            mapper.get_property_by_column(column).key for column in watch.row_columns
        )
    except Exception:
        found = None
    _row_attributes[cache_key] = found
    return found


def _note_row(batch: Batch, state: InstanceState[Any], mapper: Mapper[Any]) -> None:
    """A row of a table ``batch`` reads was written: stale the peers its old and new values
    name (an inserted row has only new ones), or all of them."""
    watch = batch.watch
    attributes = (
        _row_attributes_of(mapper, watch)
        if watch.row_table is not None and watch.row_table in mapper.tables
        else None
    )
    if not attributes:
        batch.stale_all = True
        return
    new = _key_values(state, attributes, old=False)
    old = new if state.key is None else _key_values(state, attributes, old=True)
    if new is None or old is None:
        batch.stale_all = True
        return
    batch.stale_keys.add(new)
    batch.stale_keys.add(old)


def _changed_columns(state: InstanceState[Any]) -> set[Any]:
    props = state.mapper._props
    changed: set[Any] = set()
    for key in state.committed_state:
        prop = props.get(key)
        if isinstance(prop, ColumnProperty):
            changed.update(prop.columns)
    return changed


def _note_association(batch: Batch, state: InstanceState[Any]) -> None:
    """``state``'s collections through the batch's association table changed."""
    watch = batch.watch
    mapper = state.mapper
    props = mapper._props
    for key in state.committed_state:
        prop = props.get(key)
        if not isinstance(prop, RelationshipProperty) or prop.secondary is not watch.secondary:
            continue
        if mapper.isa(watch.prop.parent):
            batch.stale_peers.add(state.key)  # its own collection
            continue
        if prop.mapper.isa(watch.prop.parent):
            history = get_history(state.obj(), key, passive=PassiveFlag.PASSIVE_NO_INITIALIZE)
            for obj in (*history.added, *history.deleted):
                batch.stale_peers.add(instance_state(obj).key)
            continue
        batch.stale_all = True


_cascading: dict[Table, frozenset[Any]] = {}


def _cascading_to(table: Table) -> frozenset[Any]:
    """Tables whose rows the database changes itself when a row of ``table`` is deleted
    (``ON DELETE CASCADE`` / ``SET NULL``, which ``passive_deletes`` leaves to it)."""
    found = _cascading.get(table)
    if found is None:
        reached: set[Any] = set()
        todo = [table]
        while todo:  # a cascade's rows cascade in turn
            deleted = todo.pop()
            for other in deleted.metadata.tables.values():
                if other not in reached and any(
                    key.ondelete and key.references(deleted) for key in other.foreign_keys
                ):
                    reached.add(other)
                    todo.append(other)
        found = _cascading[table] = frozenset(reached)
    return found


def _note_flush(session: Session, flush_context: UOWTransaction) -> None:
    log: WriteLog | None = session.__dict__.get(_LOG)
    if log is None or not log.batches:
        return
    watched = log.batches
    for state, (is_delete, list_only) in list(flush_context.states.items()):
        if list_only:
            continue
        mapper = state.mapper
        if is_delete:
            for table in mapper.tables:
                for other in _cascading_to(table):
                    for batch in watched.get(other, ()):
                        batch.stale_all = True
        batches: set[Batch] = set()
        for table in mapper.tables:
            found = watched.get(table)
            if found:
                batches.update(found)
        if not batches:
            continue
        inserted_or_deleted = is_delete or state.key is None
        changed = None if inserted_or_deleted else _changed_columns(state)
        for batch in batches:
            watch = batch.watch
            reads_rows = not watch.tables.isdisjoint(mapper.tables)
            if inserted_or_deleted:
                if reads_rows:
                    _note_row(batch, state, mapper)
                continue
            assert changed is not None
            if reads_rows and (batch.criteria or not watch.columns.isdisjoint(changed)):
                _note_row(batch, state, mapper)
            if not watch.own_columns.isdisjoint(changed):
                batch.stale_peers.add(state.key)
            if watch.secondary is not None and state.committed_state:
                _note_association(batch, state)


def _set_columns(statement: Any, table: Table) -> set[Any] | None:
    """The columns an UPDATE sets, when it names them in ``values()``; None when unknown."""
    if getattr(statement, "_multi_values", None) or getattr(statement, "_ordered_values", None):
        return None
    values = getattr(statement, "_values", None)
    if not values:
        return None
    columns: set[Any] = set()
    for key in values:
        if isinstance(key, str):
            column = table.c.get(key)
        else:
            column = getattr(key, "_deannotate", lambda: None)()
            if column is None or getattr(column, "table", None) is not table:
                column = table.c.get(getattr(key, "key", None) or "")
        if column is None:
            return None
        columns.add(column)
    return columns


def _reads_only(statement: Any) -> bool:
    """A textual statement that plainly only reads (a SELECT)."""
    text = getattr(statement, "text", None)
    return isinstance(text, str) and text.lstrip().lower().startswith("select")


def note_statement(orm_state: ORMExecuteState) -> None:
    """A statement other than a SELECT ran through ``Session.execute``."""
    log: WriteLog | None = orm_state.session.__dict__.get(_LOG)
    if log is None or not log.batches:
        return
    statement = orm_state.statement
    tables: list[Any] = []
    if orm_state.is_insert or orm_state.is_update or orm_state.is_delete:
        mapper = orm_state.bind_mapper
        if mapper is not None:
            tables.extend(mapper.tables)
        table = getattr(statement, "table", None)
        if isinstance(table, Table):
            tables.append(table._deannotate())  # an ORM statement's table is annotated
    elif _reads_only(statement):
        return
    if not tables:  # text, or a table we cannot name: everything may have changed
        log.epoch += 1
        return
    for table in tables:
        changed = _set_columns(statement, table) if orm_state.is_update else None
        if orm_state.is_delete:
            for other in _cascading_to(table):
                for batch in log.batches.get(other, ()):
                    batch.stale_all = True
        for batch in log.batches.get(table, ()):
            watch = batch.watch
            if (
                changed is not None
                and not batch.criteria
                and watch.columns.isdisjoint(changed)
                and watch.own_columns.isdisjoint(changed)
            ):
                continue  # an UPDATE of columns the relationship does not read
            if orm_state.is_insert and table not in watch.tables:
                continue  # new rows of the peers' own table: none of them is a peer
            batch.stale_all = True


def _note_transaction_end(session: Session, transaction: Any) -> None:
    if transaction.parent is not None:
        return  # a savepoint (released: nothing changes; rolled back: below) or a flush's own
    _end_batches(session)


def _note_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: nothing changes
    _end_batches(session)  # before the commit expires the peers (and drops their loaders)


def _note_rollback(session: Session, previous_transaction: Any) -> None:
    _end_batches(session)  # any rollback, a savepoint's or a failed flush's included


def _end_batches(session: Session) -> None:
    log: WriteLog | None = session.__dict__.get(_LOG)
    if log is None:
        return
    log.epoch += 1
    ended: set[Batch] = set()
    for batches in log.batches.values():
        ended.update(batches)
    log.batches.clear()
    for batch in ended:
        prop = batch.watch.prop
        if batch.handed:
            log.backoff.pop(prop, None)
        elif batch.deferred:
            entry = log.backoff.setdefault(prop, [0, 0])
            entry[0] += 1
            entry[1] = min(2 ** entry[0], _MAX_BACKOFF)


_MAX_BACKOFF = 64


def backing_off(session: Session, prop: RelationshipProperty[Any]) -> bool:
    """Whether this lazy load of ``prop`` should stay plain: its batches in this session have
    ended unused (each such end doubles the number of lazy loads left plain, up to 64; a
    batch that hands rows over ends the back-off)."""
    log: WriteLog | None = session.__dict__.get(_LOG)
    if log is None or not log.backoff:
        return False
    entry = log.backoff.get(prop)
    if entry is None or entry[1] <= 0:
        return False
    entry[1] -= 1
    return True


_LISTENERS: tuple[tuple[Any, str, Any], ...] = (
    (Session, "after_flush", _note_flush),
    (Session, "after_commit", _note_commit),
    (Session, "after_transaction_end", _note_transaction_end),
    (Session, "after_soft_rollback", _note_rollback),
)


def install_write_tracking() -> None:
    for target, name, fn in _LISTENERS:
        if not event.contains(target, name, fn):
            event.listen(target, name, fn)


def remove_write_tracking() -> None:
    global _generation
    _generation += 1
    for target, name, fn in _LISTENERS:
        if event.contains(target, name, fn):
            event.remove(target, name, fn)
