"""Unused eager loads: relationships a query loaded eagerly that nothing read afterwards.

Two things must be known: which relationships a query loaded eagerly, and whether any of them
was read. The first comes from SQLAlchemy's own ``load`` instance event (raw, with the query's
``QueryContext``), once per query, class and loader path: a relationship already in a freshly
loaded instance's ``__dict__`` was loaded from the row (``joinedload``, ``subqueryload``), and
one registered as a post-load of the instance's loader path will be loaded right after the rows
(``selectinload``, ``immediateload``).

The second has no event. A loaded value is returned straight from the instance ``__dict__`` by
``InstrumentedAttribute.__get__``; ``AttributeEvents`` fire on writes and collection changes
only. The supported extension points do not fit: ``sqlalchemy.ext.instrumentation`` needs a
``__sa_instrumentation_manager__`` on each class before it is mapped and then rebinds ORM module
globals for every class; ``ClassManager.install_descriptor`` with a new descriptor splits the
attribute's identity (``User.posts``, ``Mapper.all_orm_descriptors`` and the manager would hold
different objects, and ``inspect(obj).attrs.posts.value`` reads through the manager's). The
original nplusone library replaced ``InstrumentedAttribute.__get__`` for every class, for good.

So, while an unused-eager detection is open and only then, each relationship that a query
actually loaded eagerly has its ``InstrumentedAttribute`` objects (on the mapped class and its
mapped subclasses) switched to :class:`ReadTracking`, a subclass with no state of its own that
returns exactly what ``InstrumentedAttribute.__get__`` returns and then notes the relationship's
key in the reading object's cohort. The objects stay the same objects (``User.posts is
User.posts``, options, caches and the mapper see no change), and the last detection to close
switches every one back, so nothing is left behind: the cost is one extra Python call and two
dictionary look-ups per read of a tracked relationship while a detection watches, and nothing
at all otherwise (docs/benchmarks.md). During the block ``type(User.posts)`` is the subclass
(``isinstance`` checks and statement cache keys are unchanged).

Limits, each erring towards no finding except the last two:

* relationships whose descriptor is not a plain ``InstrumentedAttribute`` (a custom
  instrumentation) are not judged;
* only objects a query creates are judged: objects the session already held that the query
  returned again keep the cohort of the query that first loaded them, and ``populate_existing``
  refreshes are not judged;
* two private SQLAlchemy details are read, each with a fallback: ``QueryContext.post_load_paths``
  (what selectin/immediate loads a path will run) and ``_get_context_loader`` (which option
  named a joined/subquery load, for the fix's wording; without it the mapping's strategy, or
  ``joinedload``, is named);
* a read made on an object after a later ``populate_existing`` query moved it into its own
  cohort does not count for the first query;
* a class mapped while a block is open gets no read-noting attribute until the next block.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import event
from sqlalchemy.orm import Mapper, RelationshipProperty
from sqlalchemy.orm.attributes import InstrumentedAttribute, instance_state
from sqlalchemy.orm.path_registry import PathRegistry

from ormtune.nplusone import _hooks
from ormtune.nplusone._findings import STRATEGY_OPTIONS
from ormtune.querylog import SharedHooks, cohort_of, track_cohorts, untrack_cohorts

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sqlalchemy.orm import QueryContext
    from sqlalchemy.orm.state import InstanceState

    from ormtune.nplusone._detection import Detection
    from ormtune.querylog import Cohort

__all__ = [
    "Eager",
    "EagerLoad",
    "ReadTracking",
    "acquire",
    "release",
    "tracked",
]

_READS: Final = ("ormtune.nplusone", "reads")  # cohort.notes: keys of relationships read
_CONTEXT: Final = ("ormtune.nplusone", "eager")  # QueryContext.attributes: what a query loaded


class ReadTracking(InstrumentedAttribute[Any]):
    """An ``InstrumentedAttribute`` that notes each read of a loaded relationship in the
    cohort of the object read (see the module doc); what it returns is unchanged."""

    __slots__ = ()
    inherit_cache = True

    def __get__(self, instance: object | None, owner: Any) -> Any:
        if instance is None:
            return self
        value = InstrumentedAttribute.__get__(self, instance, owner)
        try:
            state = instance_state(instance)
        except AttributeError:  # an object without ORM state that __get__ still answered
            return value
        cohort = cohort_of(state)
        if cohort is not None:
            reads: set[str] | None = cohort.notes.get(_READS)
            if reads is not None:
                reads.add(self.key)
        return value


@dataclass(frozen=True, slots=True)
class Eager:
    """One relationship a query loaded eagerly: its strategy (``"selectin"``) and whether a
    loader option asked for it (else the mapping's ``lazy=``)."""

    relationship: RelationshipProperty[Any]
    strategy: str
    option: bool


@dataclass(slots=True, eq=False)
class EagerLoad:
    """The relationships one query loaded eagerly for its objects of one class (at one loader
    path), how many objects that was, and the relationship keys read on any of them since
    (shared with the cohort, so it outlives the objects)."""

    relationships: tuple[Eager, ...]
    reads: set[str]
    count: int = 0


def _switch(descriptor: InstrumentedAttribute[Any], to: type[InstrumentedAttribute[Any]]) -> None:
    # Same slots, no state of its own: the object stays the same object, only its __get__
    # changes (see the module doc).
    descriptor.__class__ = to


class _Descriptors:
    """The ``InstrumentedAttribute`` objects switched to :class:`ReadTracking`, to switch back."""

    __slots__ = ("_lock", "_switched", "_tracked", "_untrackable")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._switched: list[InstrumentedAttribute[Any]] = []
        self._tracked: set[RelationshipProperty[Any]] = set()
        self._untrackable: set[RelationshipProperty[Any]] = set()

    def track(self, relationship: RelationshipProperty[Any]) -> bool:
        """Track reads of ``relationship`` on every mapped class that has it; False if one of
        its descriptors is not a plain ``InstrumentedAttribute``."""
        if relationship in self._tracked:
            return True
        with self._lock:
            if relationship in self._tracked:
                return True
            if relationship in self._untrackable:
                return False
            found: list[InstrumentedAttribute[Any]] = []
            for mapper in relationship.parent.self_and_descendants:
                descriptor = mapper.class_.__dict__.get(relationship.key)
                if descriptor is None or type(descriptor) is ReadTracking:
                    continue
                if type(descriptor) is not InstrumentedAttribute:
                    self._untrackable.add(relationship)
                    return False
                found.append(descriptor)
            for descriptor in found:
                _switch(descriptor, ReadTracking)
            self._switched.extend(found)
            self._tracked.add(relationship)
            return True

    def tracked(self) -> list[str]:
        with self._lock:
            return sorted(
                f"{d.class_.__name__}.{d.key}" for d in self._switched if type(d) is ReadTracking
            )

    def restore(self) -> None:
        with self._lock:
            for descriptor in self._switched:
                if type(descriptor) is ReadTracking:
                    _switch(descriptor, InstrumentedAttribute)
            self._switched.clear()
            self._tracked.clear()
            self._untrackable.clear()


_descriptors = _Descriptors()


def _lazy(strategy_key: object) -> str | None:
    """``"selectin"`` from a strategy key such as ``(("lazy", "selectin"),)``."""
    if isinstance(strategy_key, tuple):
        for entry in strategy_key:
            if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == "lazy":
                return str(entry[1])
    return None


def _from_row(
    relationship: RelationshipProperty[Any], context: QueryContext, state: InstanceState[Any]
) -> str:
    """The strategy that loaded ``relationship`` from the rows (joined or subquery): the
    query's loader option for it if it has one, looked up as ``StrategizedProperty`` does
    (private API, so any surprise falls back to the mapping's), else the mapping's."""
    strategy: str | None = None
    lookup: Callable[[Any, Any], Any] | None = getattr(relationship, "_get_context_loader", None)
    current = getattr(getattr(context.compile_state, "current_path", None), "path", None)
    if lookup is not None and isinstance(current, tuple):
        # A post-load query (selectinload's) keys its options from its own root entity.
        path = PathRegistry.coerce(state.load_path.path[len(current) :])
        strategy = _lazy(getattr(lookup(context, path), "strategy", None))
    strategy = strategy or str(relationship.lazy)
    return strategy if strategy in ("joined", "subquery", "noload") else "joined"


def _post_loaded(state: InstanceState[Any], context: QueryContext) -> dict[Any, str]:
    """The relationships to be loaded for ``state`` after the rows (selectin, immediate), with
    the strategy of each, as registered for its loader path."""
    post_loads: dict[Any, Any] = getattr(context, "post_load_paths", None) or {}
    post_load = post_loads.get(state.load_path.path)
    found: dict[Any, str] = {}
    for entry in getattr(post_load, "loaders", {}).values():
        token, limit, loader = entry[1], entry[2], entry[3]
        if isinstance(token, RelationshipProperty) and state.mapper.isa(limit):
            strategy = _lazy(getattr(getattr(loader, "__self__", None), "strategy_key", None))
            found[token] = strategy or "selectin"
    return found


def _eager_load(
    state: InstanceState[Any], context: QueryContext, cohort: Cohort
) -> EagerLoad | None:
    """What the query loaded eagerly for ``state`` (the first of its class and path)."""
    post_loaded = _post_loaded(state, context)
    loaded = state.dict
    found: list[Eager] = []
    for relationship in state.mapper.relationships:
        strategy = post_loaded.get(relationship)
        if strategy is None and relationship.key in loaded:
            strategy = _from_row(relationship, context, state)
        if strategy not in STRATEGY_OPTIONS or not _descriptors.track(relationship):
            continue
        found.append(Eager(relationship, strategy, option=strategy != relationship.lazy))
    if not found:
        return None
    with cohort.lock:
        reads: set[str] = cohort.notes.setdefault(_READS, set())
    return EagerLoad(tuple(found), reads)


def _on_load(state: InstanceState[Any], context: QueryContext | None) -> None:
    # Runs once per loaded instance while an unused-eager detection is open anywhere; one query
    # is processed by one thread, so what it found is kept on its context without a lock.
    if context is None:
        return  # loaded without a query (Session.merge(load=False), a cache hit)
    found: tuple[tuple[Detection, ...], dict[object, EagerLoad | None]] | None
    found = context.attributes.get(_CONTEXT)
    if found is None:
        watching = tuple(d for d in _hooks.scoped() if d.settings.unused_eager)
        empty: dict[object, EagerLoad | None] = {}
        found = context.attributes[_CONTEXT] = (watching, empty)
    detections, loads = found
    if not detections:
        return
    key = (state.load_path.path, state.mapper)
    try:
        load = loads[key]
    except KeyError:
        load = loads[key] = _first(state, context, detections)
    if load is not None:
        load.count += 1


def _first(
    state: InstanceState[Any], context: QueryContext, detections: tuple[Detection, ...]
) -> EagerLoad | None:
    """The eager loads of the first object of its class and path in a query, handed to the
    detections watching (with the query's line, found once for all of them)."""
    cohort = cohort_of(state)
    if cohort is None:
        return None
    load = _eager_load(state, context, cohort)
    if load is not None:
        callsites = _hooks.Callsites()
        for detection in detections:
            detection.on_eager_load(load, callsites)
    return load


def _install() -> None:
    event.listen(Mapper, "load", _on_load, raw=True)


def _remove() -> None:
    if event.contains(Mapper, "load", _on_load):
        event.remove(Mapper, "load", _on_load)
    _descriptors.restore()


_listener = SharedHooks(_install, _remove)


def acquire() -> None:
    """Start finding eager loads (reference-counted; pair each call with :func:`release`).
    Reads are noted in cohorts, so cohorts are tracked meanwhile (before the ``load``
    listener, which looks the cohort up)."""
    track_cohorts()
    _listener.acquire()


def release() -> None:
    """Release one :func:`acquire`; the last removes the listener and switches every tracked
    descriptor back."""
    _listener.release()
    untrack_cohorts()


def tracked() -> Sequence[str]:
    """``Class.attribute`` of each relationship whose reads are tracked right now (for tests)."""
    return _descriptors.tracked()
