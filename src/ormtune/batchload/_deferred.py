"""A batch's result for an object, held until the application reads it.

A batch loads a relationship for every peer at the first lazy load; plain lazy loading would
load each peer's later, when the loop reaches it, after an autoflush. When the loop writes in
between (a new child for a peer it has not read yet), the two differ. So the batch does not
set the peers' attributes: it leaves each peer a loader of its own (``InstanceState.callables``,
where SQLAlchemy keeps per-object loaders) holding the rows, and that loader does at the read
what the lazy load would have done: autoflush, then give the batch's rows if nothing the
relationship reads has been written by the session since the batch, or run the plain lazy load
if something has. A peer that is never read costs nothing more than before.

What counts as a write, per session: a flush (the tables of the objects it writes, and the
association tables of their many-to-many relationships), any statement other than a SELECT
run through ``Session.execute`` (every table), and the end of a transaction (every table: the
next one may see other transactions' writes). Writes made on the session's connection
directly, bypassing the session, are not seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Table, event
from sqlalchemy.orm import MANYTOONE, Session, object_mapper
from sqlalchemy.orm.base import PassiveFlag
from sqlalchemy.orm.session import _state_session

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.orm import RelationshipProperty
    from sqlalchemy.orm.state import InstanceState

__all__ = ["Deferral", "install_write_tracking", "note_write", "remove_write_tracking"]

_WRITES = "_ormtune_writes"  # the session's write counters: table name (None: all) -> count
_TOTAL = "_ormtune_writes_total"  # the session's writes of any kind, counted once each
_EVERYTHING = None


def note_write(session: Session, tables: Iterable[str | None] = (_EVERYTHING,)) -> None:
    """Count a write of ``tables`` (by default, of everything) in ``session``."""
    attributes = session.__dict__
    counters: dict[str | None, int] | None = attributes.get(_WRITES)
    if counters is None:
        counters = attributes[_WRITES] = {}
    for table in tables:
        counters[table] = counters.get(table, 0) + 1
    attributes[_TOTAL] = attributes.get(_TOTAL, 0) + 1


def _snapshot(session: Session, tables: tuple[str, ...]) -> tuple[int, ...]:
    counters: dict[str | None, int] = session.__dict__.get(_WRITES) or {}
    return (counters.get(_EVERYTHING, 0), *[counters.get(table, 0) for table in tables])


class _Reads(NamedTuple):
    """What a lazy load of one relationship reads, worked out once per relationship."""

    tables: tuple[str, ...]  # the target's, the association table, a many-to-one's own
    on_parent: bool  # a many-to-one: the object's own foreign key is read too
    autoflush: bool  # by primary key, a many-to-one's lazy load takes a target already in
    # the session without SQL, so without an autoflush; every other lazy load autoflushes


_reads: dict[RelationshipProperty[Any], _Reads] = {}


def _reads_of(prop: RelationshipProperty[Any]) -> _Reads:
    reads = _reads.get(prop)
    if reads is None:
        names = {table.fullname for table in prop.mapper.tables}
        if isinstance(prop.secondary, Table):
            names.add(prop.secondary.fullname)
        on_parent = prop.direction is MANYTOONE
        if on_parent:
            names.update(table.fullname for table in prop.parent.tables)
        uses_get = bool(getattr(prop._get_strategy((("lazy", "select"),)), "use_get", False))
        reads = _reads[prop] = _Reads(tuple(sorted(names)), on_parent, not (on_parent and uses_get))
    return reads


class _Batched:
    """The loader a batch leaves a peer: its rows, and the session's writes when they were
    read. Pickles with its object (plain slots; tables by name)."""

    __slots__ = ("key", "reads", "total", "value", "writes")

    def __init__(
        self, key: str, value: Any, reads: _Reads, total: int, writes: tuple[int, ...]
    ) -> None:
        self.key = key
        self.value = value
        self.reads = reads
        self.total = total  # the session's writes of any kind then
        self.writes = writes  # and of what the relationship reads

    def __call__(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        reads = self.reads
        # Without SQL (an identity map lookup), or with a many-to-one's own foreign key perhaps
        # changed, or detached (it raises): the lazy load itself, below.
        if passive & PassiveFlag.SQL_OK and not (reads.on_parent and state.modified):
            session = _state_session(state)
            if session is not None:
                if (
                    reads.autoflush
                    and not passive & PassiveFlag.NO_AUTOFLUSH
                    and not session._is_clean()
                ):
                    session._autoflush()  # where the lazy load would have autoflushed
                if session.__dict__.get(_TOTAL, 0) == self.total or (
                    _snapshot(session, reads.tables) == self.writes
                ):
                    return self.value  # nothing it reads written by the session since
        lazy_load: Any = state.manager[self.key].impl.callable_
        return lazy_load(state, passive)


class Deferral:
    """What one batch leaves its peers: made once per batch (the session's writes read once),
    then :meth:`defer` per peer."""

    __slots__ = ("key", "reads", "total", "writes")

    def __init__(self, prop: RelationshipProperty[Any], session: Session) -> None:
        self.key = prop.key
        self.reads = _reads_of(prop)
        self.total = session.__dict__.get(_TOTAL, 0)
        self.writes = _snapshot(session, self.reads.tables)

    def defer(self, state: InstanceState[Any], value: Any) -> None:
        """Leave ``value`` (what the batch loaded for ``state``) to be given when the
        application reads it, if the session has not written what it reads by then."""
        if "callables" not in state.__dict__:
            state.callables = {}
        state.callables[self.key] = _Batched(self.key, value, self.reads, self.total, self.writes)


def _note_flush(session: Session, flush_context: object) -> None:
    written: set[str] = set()
    for obj in (*session.new, *session.dirty, *session.deleted):
        mapper = object_mapper(obj)
        written.update(table.fullname for table in mapper.tables)
        for prop in mapper.relationships:
            if isinstance(prop.secondary, Table):
                written.add(prop.secondary.fullname)
    if written:
        note_write(session, written)


def _note_transaction_end(session: Session) -> None:
    note_write(session)


def install_write_tracking() -> None:
    event.listen(Session, "after_flush", _note_flush)
    event.listen(Session, "after_commit", _note_transaction_end)
    event.listen(Session, "after_rollback", _note_transaction_end)


def remove_write_tracking() -> None:
    for name, fn in (
        ("after_flush", _note_flush),
        ("after_commit", _note_transaction_end),
        ("after_rollback", _note_transaction_end),
    ):
        if event.contains(Session, name, fn):
            event.remove(Session, name, fn)
