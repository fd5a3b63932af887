"""A batch's rows for the peers that have not read them yet, handed over at the read.

Plain lazy loading loads each peer's relationship when the loop reaches it, after an autoflush;
a batch loads them all at the first read. When the loop writes in between (a new child for a
peer it has not read yet, a child moved, deleted or re-ordered), the two would differ. So the
batch commits only the trigger's value, and leaves every other peer a loader of its own
(``InstanceState.callables``, where SQLAlchemy keeps per-object loaders) holding its rows. At the
read, that loader does what the lazy load would: autoflush where it would have, then hand over
the rows if nothing written since the batch changes them (``_writes.py``), or load as the lazy
load does if something has. A partial ``expire`` of the peer's attribute, the peer or a child
of its rows leaving the session, and a bare attribute access under asyncio (which raises
``MissingGreenlet``) take the lazy load too.

A stale peer's read batches the stale peers again if its batch handed rows to some peer, or is
the first of its line; a loop that writes what every step reads gets plain lazy loads after
two batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.base import NO_VALUE, PassiveFlag
from sqlalchemy.orm.session import _state_session
from sqlalchemy.orm.util import LoaderCriteriaOption
from sqlalchemy.util.concurrency import in_greenlet

from ormtune.batchload._writes import (
    canonical,
    install_write_tracking,
    log_of,
    remove_write_tracking,
    tracking_generation,
    watch_of,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.orm import RelationshipProperty, Session
    from sqlalchemy.orm.state import InstanceState

__all__ = [
    "Batch",
    "install_handover",
    "is_stale_batched",
    "may_batch",
    "rebatch_limit",
    "rebatch_source",
    "remove_handover",
]

_SQL_OK = int(PassiveFlag.SQL_OK)
_NO_AUTOFLUSH = int(PassiveFlag.NO_AUTOFLUSH)


class Batch:
    """One batch's rows left to its peers, and what has made which of them stale since."""

    __slots__ = (
        "__weakref__",
        "criteria",
        "deferred",
        "epoch",
        "generation",
        "handed",
        "log",
        "needs_greenlet",
        "session_key",
        "source",
        "stale_all",
        "stale_keys",
        "stale_peers",
        "unclaimed",
        "watch",
    )

    def __init__(
        self,
        prop: RelationshipProperty[Any],
        session: Session,
        source: Batch | None,
        load_options: tuple[Any, ...],
    ) -> None:
        """Made once the batch's first query has run (it may autoflush). ``source``: the stale
        batch whose peers this one loads again, if any (:func:`rebatch_source`);
        ``load_options``: the trigger's, whose loader criteria the batch's rows also depend on.
        """
        self.source = source
        # Loader criteria on the target (soft delete, with_loader_criteria) read columns of
        # their own: any column of its tables counts.
        self.criteria = any(_filters(option, prop.mapper) for option in load_options)
        self.deferred = 0  # peers left rows to hand over
        self.watch = watch_of(prop)
        self.log = log = log_of(session)
        self.session_key = session.hash_key
        self.epoch = log.epoch
        self.generation = tracking_generation()
        self.handed = 0  # peers given their rows: the batch has saved that many queries
        self.stale_all = False
        self.stale_keys: set[tuple[Any, ...]] = set()  # join values of rows written since
        self.stale_peers: set[Any] = set()  # identity keys of peers whose own columns changed
        self.unclaimed: set[int] = set()  # many-to-one targets it loaded, not yet read
        try:  # an asyncio driver: a lazy load outside greenlet_spawn raises MissingGreenlet
            self.needs_greenlet = bool(session.get_bind(prop.parent).dialect.is_async)
        except Exception:
            self.needs_greenlet = False
        log.watch(self)

    def defer(self, state: InstanceState[Any], value: Any) -> None:
        """Leave ``value`` (what the batch loaded for ``state``) to be handed over when the
        application reads it."""
        if "callables" not in state.__dict__:
            state.callables = {}
        state.callables[self.watch.key] = _Batched(self, value)
        self.deferred += 1

    def is_stale_for(self, state: InstanceState[Any]) -> bool:
        """Whether ``state``'s rows may differ from what its lazy load would read now."""
        if (
            self.stale_all
            or self.epoch != self.log.epoch
            or self.generation != tracking_generation()
            or self.session_key != state.session_id
        ):
            return True
        if self.stale_peers and state.key in self.stale_peers:
            return True
        watch = self.watch
        own = watch.own_attributes
        if own and state.modified and not own.isdisjoint(state.committed_state):
            return True  # its own join columns changed, not flushed yet
        if self.stale_keys:
            values = state.dict
            key = []
            for attribute in watch.peer_attributes:
                value = values.get(attribute, NO_VALUE)
                if value is NO_VALUE:
                    return True  # its key unknown without a load: take it as stale
                key.append(canonical(value))
            if not watch.peer_attributes or tuple(key) in self.stale_keys:
                return True
        return False


def _filters(option: object, target: Mapper[Any]) -> bool:
    """Whether ``option`` is loader criteria that apply to ``target``'s rows."""
    if not isinstance(option, LoaderCriteriaOption):
        return False
    root = option.root_entity
    if root is not None:
        return issubclass(target.class_, root)
    entity = option.entity
    mapper = getattr(entity, "mapper", None)
    return mapper is None or target.isa(mapper) or mapper.isa(target)


class _Batched:
    """The loader a batch leaves a peer: its rows, and the batch that knows whether they are
    still what a lazy load would read."""

    __slots__ = ("batch", "rebatch", "value")

    def __init__(self, batch: Batch, value: Any) -> None:
        self.batch = batch
        self.value = value
        self.rebatch = False  # stale, read: its lazy load may batch the stale peers again

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickled object is read in another session, if ever: the plain lazy load then.
        return (_PlainLoad, (self.batch.watch.key,))

    def __call__(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        batch = self.batch
        flags = int(passive)
        session = _state_session(state) if flags & _SQL_OK else None
        if (
            session is None
            or state._deleted
            # A bare attribute access under asyncio: the lazy load raises MissingGreenlet, so
            # does this (the rows wait for the awaitable form)
            or (batch.needs_greenlet and not in_greenlet())
        ):
            return self._lazy_load(state, passive)
        value = self.value
        watch = batch.watch
        if watch.autoflush or (batch.unclaimed and id(value) in batch.unclaimed):
            # Where the lazy load would have autoflushed (a many-to-one's target the batch
            # selected would have been selected by its first reader).
            if batch.unclaimed:
                batch.unclaimed.discard(id(value))
            if not flags & _NO_AUTOFLUSH and not session._is_clean():
                session._autoflush()
        session_key = batch.session_key
        if watch.uselist:
            in_session = True
            for child in value:
                if child._sa_instance_state.session_id != session_key:
                    in_session = False  # expunged, or its session closed meanwhile
                    break
        else:
            in_session = value is None or value._sa_instance_state.session_id == session_key
        if not in_session or batch.is_stale_for(state):
            # The lazy load, with this loader in place: autoload leaves objects with a loader
            # of their own alone, unless it is a stale batch's, read; it then batches the
            # stale peers again, as many as rebatch_limit allows.
            self.rebatch = True
            return self._lazy_load(state, passive)
        batch.handed += 1
        if batch.source is not None:
            batch.source.handed += 1  # the stale batch's peers are paying off again
        return value

    def _lazy_load(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        lazy_load: Any = state.manager[self.batch.watch.key].impl.callable_
        return lazy_load(state, passive)


class _PlainLoad:
    """What a :class:`_Batched` pickles as: the plain lazy load."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_PlainLoad, (self.key,))

    def __call__(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        lazy_load: Any = state.manager[self.key].impl.callable_
        return lazy_load(state, passive)


def may_batch(loader: object) -> bool:
    """Whether a lazy load may batch although the object has ``loader`` of its own: a batch's
    stale rows, read."""
    return isinstance(loader, _Batched) and loader.rebatch


def rebatch_source(loader: object) -> Batch | None:
    """The stale batch whose peers a lazy load started by the read of ``loader`` batches
    again, if it is one."""
    if isinstance(loader, _Batched) and loader.rebatch:
        return loader.batch
    return None


def rebatch_limit(source: Batch) -> int:
    """How many of a stale batch's peers to batch again: twice as many as it (and the batches
    made again from it) handed over, and at least 8. A loop that makes every peer stale at
    each step then re-reads a bounded number of rows per step, not all that remain; a loop
    that wrote once is batched again in doubling steps."""
    return max(_MIN_REBATCH, 2 * source.handed)


_MIN_REBATCH = 8


def is_stale_batched(loader: object, state: InstanceState[Any]) -> bool:
    """Whether ``loader`` (a per-object loader of ``state``) is a batch's, gone stale: the
    object can be batched again."""
    return isinstance(loader, _Batched) and loader.batch.is_stale_for(state)


def _note_expire(state: InstanceState[Any], attributes: Iterable[str] | None) -> None:
    # A full expire removes every per-object loader itself; a partial one only a column's.
    if attributes is None:
        return
    callables = state.__dict__.get("callables")
    if not callables:
        return
    for key in attributes:
        if isinstance(callables.get(key), _Batched):
            del callables[key]


def install_handover() -> None:
    """Start tracking writes, and dropping loaders on a partial ``expire``."""
    install_write_tracking()
    if not event.contains(Mapper, "expire", _note_expire):
        event.listen(Mapper, "expire", _note_expire, raw=True)  # raw: given the state


def remove_handover() -> None:
    """Stop: every batch's rows not yet handed over are left to the plain lazy load."""
    remove_write_tracking()
    if event.contains(Mapper, "expire", _note_expire):
        event.remove(Mapper, "expire", _note_expire)
