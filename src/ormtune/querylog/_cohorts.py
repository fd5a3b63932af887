"""Cohorts: the instances one ORM query loaded, and the lazy loads made from them.

A cohort is what N+1 detection and automatic batch loading reason about: a lazy load of
relationship R on two members of one cohort is an N+1, and loading R for every member at once
is its fix. Membership is recorded by the ORM's own ``load`` and ``refresh`` instance events
(the rows of one query share one ``QueryContext``). A cohort holds the weak references
SQLAlchemy already keeps from each member's state to its object (``state.obj``), never the
objects or the states, so it keeps nothing alive and forms no reference cycle with the states
that point at it: when the objects go, their states and the cohort are freed at once, without
waiting for the cyclic garbage collector. Members whose object is gone are skipped. The cohort
is kept in a private attribute of each member's state, which SQLAlchemy does not pickle
(``state.info`` would be pickled with the object, and a cohort is not picklable). An instance
belongs to the last query that loaded or refreshed it from a row; instances that a query
returned but that were already in the identity map (and were not refreshed) keep their earlier
cohort.

Tracking is reference-counted like the engine listeners: the instance listeners are installed
when the first user calls :func:`track_cohorts` and removed when the last one releases it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import event
from sqlalchemy.orm import Mapper, QueryContext, RelationshipProperty, loading
from sqlalchemy.orm.attributes import instance_state

from ormtune.querylog._lifecycle import SharedHooks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sqlalchemy.engine import ExecutionContext
    from sqlalchemy.orm import ORMExecuteState
    from sqlalchemy.orm.state import InstanceState

__all__ = [
    "Cohort",
    "LazyLoad",
    "cohort_of",
    "keep_runs",
    "keeping_runs",
    "lazy_load_executing",
    "lazy_load_of",
    "note_refresh",
    "note_refresh_load",
    "query_run_of",
    "release_runs",
    "runs_since",
    "share_new_run",
    "shared_cohort",
    "track_cohorts",
    "track_runs",
    "tracking_cohorts",
    "tracking_runs",
    "untrack_cohorts",
    "untrack_runs",
]

_CONTEXT_KEY = ("ormtune", "cohort")
_CONTEXT_FAST_KEY = ("ormtune", "cohort", "this query")
_STATE_ATTRIBUTE = "_ormtune_cohort"


class Cohort:
    """The instances loaded by one ORM query (weakly, through their states), in row order.

    A cohort recorded by the instance events (:func:`track_cohorts`) has no ``run``: its members
    are the states that point at it. A cohort found from a query run (:func:`run_cohort`,
    :func:`form_cohort`) has that run, and a member that a later query has loaded again has
    left it.
    """

    __slots__ = ("__weakref__", "_refs", "lock", "notes", "parts", "run")

    def __init__(self, run: int | None = None, parts: Iterable[int] = ()) -> None:
        self.run = run
        # The runs this one stands for, when it joins several (the chunks of one batch load).
        self.parts = frozenset(parts)
        # Each member state's own weak reference to its object: nothing new per member.
        self._refs: list[Callable[[], object]] = []
        # Per-cohort scratch space for the features that reason about it (keyed by feature).
        self.notes: dict[object, Any] = {}
        self.lock = threading.Lock()

    def add(self, state: InstanceState[Any]) -> None:
        self._refs.append(state.obj)
        state.__dict__[_STATE_ATTRIBUTE] = self

    def states(self) -> list[InstanceState[Any]]:
        """Members still alive (object not garbage-collected) that still belong to this cohort,
        in row order (a list: an autoload batch reads them all at once)."""
        alive = []
        run, parts = self.run, self.parts
        for ref in self._refs:
            obj = ref()
            if obj is not None:
                state = instance_state(obj)
                if state.__dict__.get(_STATE_ATTRIBUTE) is self and (
                    run is None
                    or state.runid == run
                    or state.runid in parts
                    or (refreshed := query_run_of(state)) == run
                    or refreshed in parts
                ):
                    alive.append(state)
        return alive

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"<Cohort of {len(self._refs)}>"


def cohort_of(state: InstanceState[Any]) -> Cohort | None:
    """The cohort an instance state belongs to, if it was loaded while tracking was on."""
    cohort: Cohort | None = state.__dict__.get(_STATE_ATTRIBUTE)
    return cohort


_SHARED_OPTION = "ormtune_cohort"
# The execution option SQLAlchemy's post-loaders (immediateload) give the lazy loads they run.
_EAGER_LOADER_OPTION = "sa_top_level_orm_context"


def shared_cohort() -> dict[str, Cohort]:
    """Execution options that make the rows of every statement run with them one cohort (the
    chunks of one batch load are one cohort, as the chunks of one ``selectinload`` are)."""
    return {_SHARED_OPTION: Cohort()}


def _cohort_for(context: QueryContext) -> Cohort:
    """Where a query's cohort lives. ``selectinload`` fetches one relationship in several
    queries (one per 500 keys); they carry the original query's context, and their rows form
    one cohort, keyed there by the loader path."""
    options = context.execution_options
    shared = options.get(_SHARED_OPTION)
    if isinstance(shared, Cohort):
        return shared
    attributes: dict[Any, Any] = context.attributes
    key: object = _CONTEXT_KEY
    top = options.get("sa_top_level_orm_context")
    path = getattr(getattr(context, "compile_state", None), "current_path", None)
    if isinstance(top, QueryContext) and top is not context and path is not None:
        attributes, key = top.attributes, (_CONTEXT_KEY, path)
    cohort: Cohort | None = attributes.get(key)
    if cohort is None:
        cohort = attributes[key] = Cohort()
    return cohort


def _join(state: InstanceState[Any], context: QueryContext | None) -> None:
    # Runs once per loaded instance: the cohort is looked up once per query, then cached on it.
    if context is None:
        return  # loaded without a query (Session.merge(load=False), a cache hit): no peers
    attributes = context.attributes
    cohort = attributes.get(_CONTEXT_FAST_KEY)
    if cohort is None:
        cohort = attributes[_CONTEXT_FAST_KEY] = _cohort_for(context)
    cohort._refs.append(state.obj)
    state.__dict__[_STATE_ATTRIBUTE] = cohort


def _on_refresh(state: InstanceState[Any], context: object, attrs: object) -> None:
    # Only a query that replaces what it loads (populate_existing) makes its rows peers again;
    # refreshing one object, or filling in expired attributes along the way, does not. The
    # event also fires without a query: a composite built from its columns passes a marker
    # object in place of the QueryContext, an ORM bulk UPDATE by primary key passes None.
    if (
        isinstance(context, QueryContext)
        and context.refresh_state is None
        and context.populate_existing
    ):
        _join(state, context)


_LISTENERS = (("load", _join), ("refresh", _on_refresh))


def _install() -> None:
    for name, listener in _LISTENERS:
        event.listen(Mapper, name, listener, raw=True)


def _remove() -> None:
    for name, listener in _LISTENERS:
        if event.contains(Mapper, name, listener):
            event.remove(Mapper, name, listener)


_hooks = SharedHooks(_install, _remove)


def track_cohorts() -> None:
    """Start recording cohorts (reference-counted; pair each call with :func:`untrack_cohorts`)."""
    _hooks.acquire()


def untrack_cohorts() -> None:
    """Release one :func:`track_cohorts`; the last release removes the listeners."""
    _hooks.release()


def tracking_cohorts() -> bool:
    """Whether cohort listeners are installed right now (a cache hit asks on every query)."""
    return _hooks.active


# -- query runs: which query loaded an instance, without an event per instance ------------
#
# SQLAlchemy gives every ORM query execution a run id (``QueryContext.runid``, from a process-wide
# counter) and sets it on each instance the query creates, or replaces with ``populate_existing``
# (``InstanceState.runid``): the rows of one query share one run, at no cost to anyone, so the
# run tells a cohort without tracking it. Two things differ from cohorts: a refresh of one object
# (an expired or deferred attribute loaded, ``Session.refresh()``) gives that object the
# refresh's own run, so the run before it is kept on the state (noted before the refresh runs,
# sealed by the ``refresh`` event, which fires only for refreshes); and the chunks of one
# ``selectinload`` (500 keys each) are separate runs.

_RUN_BEFORE_REFRESH = "_ormtune_run"  # (run the object belongs to, runid its refresh gave it)
_REFRESHING = "_ormtune_run_refreshing"


def query_run_of(state: InstanceState[Any]) -> int | None:
    """The run of the query that loaded ``state`` (None for objects no query loaded), through
    any single-object refreshes since."""
    runid: int | None = state.runid
    kept = state.__dict__.get(_RUN_BEFORE_REFRESH)
    if kept is not None and kept[1] == runid:
        run: int = kept[0]
        return run
    return runid


# The execution option in which the ORM passes a query's load options (what it loads for, what
# it refreshes) down to the Connection: it reaches the ExecutionContext of the statement.
_LOAD_OPTIONS = "_sa_orm_load_options"


def note_refresh(context: ExecutionContext) -> None:
    """Called by a statement watcher before a statement runs: if it refreshes a single object,
    remember the run the object belongs to (its refresh will give it a run of its own)."""
    # Spelled out rather than calling note_refresh_load(): this runs for every statement.
    load_options = context.execution_options.get(_LOAD_OPTIONS)
    state: InstanceState[Any] | None = getattr(load_options, "_refresh_state", None)
    if state is not None:
        run = query_run_of(state)
        if run is not None:
            state.__dict__[_REFRESHING] = run


def note_refresh_load(load_options: object) -> None:
    """:func:`note_refresh` for a ``do_orm_execute`` hook, given the execution's
    ``ORMExecuteState.load_options``."""
    state: InstanceState[Any] | None = getattr(load_options, "_refresh_state", None)
    if state is not None:
        run = query_run_of(state)
        if run is not None:
            state.__dict__[_REFRESHING] = run


def _seal_refresh(state: InstanceState[Any], context: object, attrs: object) -> None:
    refreshed: object = getattr(context, "refresh_state", None)  # a QueryContext, or not
    if refreshed is state:
        run = state.__dict__.pop(_REFRESHING, None)
        if run is not None:
            state.__dict__[_RUN_BEFORE_REFRESH] = (run, state.runid)


def _install_seal() -> None:
    event.listen(Mapper, "refresh", _seal_refresh, raw=True)


def _remove_seal() -> None:
    if event.contains(Mapper, "refresh", _seal_refresh):
        event.remove(Mapper, "refresh", _seal_refresh)


# The listener that keeps runs across refreshes, shared by N+1 detection (track_runs, which
# also marks where its watch began) and automatic batch loading (keep_runs, which does not).
_seal_hooks = SharedHooks(_install_seal, _remove_seal)


def _install_runs() -> None:
    global _since
    _seal_hooks.acquire()
    _since = loading._new_runid()  # queries from now on are watched (the counter only grows)


_since = 0
_run_hooks = SharedHooks(_install_runs, _seal_hooks.release)


def keep_runs() -> None:
    """Keep query runs across single-object refreshes, without marking a new start for
    :func:`runs_since` (reference-counted; pair each call with :func:`release_runs`). Callers
    also call :func:`note_refresh` or :func:`note_refresh_load` before refreshes run."""
    _seal_hooks.acquire()


def release_runs() -> None:
    """Release one :func:`keep_runs`."""
    _seal_hooks.release()


def track_runs() -> None:
    """Start keeping query runs across single-object refreshes (reference-counted; pair each
    call with :func:`untrack_runs`). Callers also call :func:`note_refresh` from a statement
    watcher (``ormtune.querylog.watch``)."""
    _run_hooks.acquire()


def untrack_runs() -> None:
    """Release one :func:`track_runs`."""
    _run_hooks.release()


def share_new_run(states: Iterable[InstanceState[Any]]) -> int:
    """Make ``states`` the rows of one new query run, as if one query had loaded them (for
    objects made without a query, such as a cache hit's), and return the run. A run id no query
    has had or will have, so SQLAlchemy's own use of it (is this row's object new to the
    running query?) is unaffected."""
    run: int = loading._new_runid()
    for state in states:
        state.runid = run
        state.__dict__.pop(_RUN_BEFORE_REFRESH, None)
    return run


def tracking_runs() -> bool:
    """Whether :func:`track_runs` is on right now."""
    return _run_hooks.active


def keeping_runs() -> bool:
    """Whether query runs are kept across refreshes right now (by :func:`track_runs` or
    :func:`keep_runs`): objects made without a query should then share a run
    (:func:`share_new_run`) to be each other's peers."""
    return _seal_hooks.active


def runs_since() -> int:
    """The first run watched since :func:`track_runs` last installed its listener: objects of
    earlier runs were loaded while nothing watched (as objects loaded while cohorts were not
    tracked have no cohort)."""
    return _since


class LazyLoad(NamedTuple):
    """A lazy load of ``relationship`` from ``state`` that is about to run SQL (a named tuple:
    one is made for every lazy load while a feature watches them, and a frozen dataclass costs
    three times as much to make)."""

    state: InstanceState[Any]
    relationship: RelationshipProperty[Any]
    cohort: Cohort | None
    # Run by an eager loader (immediateload) for the query that loaded the object, rather
    # than by an attribute access: that loader's own, with its recursion and its options.
    by_eager_loader: bool = False

    @property
    def name(self) -> str:
        """``Class.attribute`` of the relationship, as users write it."""
        return f"{self.relationship.parent.class_.__name__}.{self.relationship.key}"


def lazy_load_of(orm_execute_state: ORMExecuteState) -> LazyLoad | None:
    """The lazy load an ORM execution is, or None for any other execution."""
    if not orm_execute_state.is_select:  # SQLAlchemy 2.0 raises on the next line otherwise
        return None
    state = orm_execute_state.lazy_loaded_from
    if state is None:
        return None
    path = orm_execute_state.loader_strategy_path
    prop = getattr(path, "prop", None)
    if not isinstance(prop, RelationshipProperty):
        return None
    by_eager_loader = _EAGER_LOADER_OPTION in orm_execute_state.execution_options
    return LazyLoad(state, prop, cohort_of(state), by_eager_loader)


def lazy_load_target(
    context: ExecutionContext,
) -> tuple[InstanceState[Any], RelationshipProperty[Any]] | None:
    """The object and relationship of the lazy load a statement about to execute runs, or None
    for any other statement (the cheap part of :func:`lazy_load_executing`, for a watcher that
    asks it of every statement): read from the load options and the loader path the ORM
    compiled the statement with."""
    state: InstanceState[Any] | None = getattr(
        context.execution_options.get(_LOAD_OPTIONS), "_lazy_loaded_from", None
    )
    if state is None:
        return None
    compile_state = getattr(context.compiled, "compile_state", None)
    path = getattr(getattr(compile_state, "compile_options", None), "_current_path", None)
    prop = getattr(path, "prop", None)
    if not isinstance(prop, RelationshipProperty):
        return None
    return state, prop


def lazy_load_executing(context: ExecutionContext) -> LazyLoad | None:
    """The lazy load a statement about to execute runs, or None for any other statement: what
    :func:`lazy_load_of` tells a ``do_orm_execute`` hook, told to a statement watcher from the
    load options and the loader path the ORM compiled the statement with."""
    target = lazy_load_target(context)
    if target is None:
        return None
    state, prop = target
    return LazyLoad(
        state, prop, cohort_of(state), _EAGER_LOADER_OPTION in context.execution_options
    )
