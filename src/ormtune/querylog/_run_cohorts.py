"""Cohorts found from query runs when they are first needed, not recorded object by object.

Recording a cohort with the ``load`` instance event costs an event dispatch per loaded object,
about a microsecond, which an application pays for every row whether or not anything ever lazy
loads from it. Automatic batch loading needs a cohort only when a lazy load is about to run,
and SQLAlchemy already marks every object with its query's run id (``InstanceState.runid``,
see ``_cohorts.py``). So the cohorts are made then: every object added to the session's
identity map since the last time is put in its run's cohort, found by walking the map back
from its newest entry to the newest object already indexed (dictionaries keep insertion
order). Each object is indexed once, in one loop, and only in sessions that lazy load;
grouping by run, not by position, keeps it right where SQLAlchemy interleaves runs (subquery
and immediate loaders, ``yield_per`` with eager loads, objects put back into a session).

Three kinds of rows change run without being added to the map, and are recorded as they come:

* the objects a ``populate_existing`` query refreshes were in the map before it ran: the
  ``refresh`` event (which fires only for refreshes) puts them in the query's run;
* the chunks of one batch load (500 keys each) are queries of their own: when the batch ends,
  their runs are noted as parts of one (:func:`join_runs_since`), whose cohort their objects
  join when they are indexed;
* a cache hit's objects: the cache makes them one (:func:`form_cohort`).

And the queries a post-loader runs for one path of a query (``selectinload``'s chunks,
``lazy="immediate"``'s one lazy load per parent) are one run too: see
:func:`note_post_load` and :func:`end_post_loads`, below.

An object expired by ``commit()`` and refreshed on its own gets a run of its own from that
refresh; :func:`ormtune.querylog.note_refresh_load`, called by a ``do_orm_execute`` hook,
keeps the run it belongs to (as :func:`ormtune.querylog.track_runs` explains).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.orm import Mapper, QueryContext, loading

from ormtune.querylog._cohorts import (
    _RUN_BEFORE_REFRESH,
    _STATE_ATTRIBUTE,
    Cohort,
    keep_runs,
    query_run_of,
    release_runs,
    share_new_run,
    tracking_cohorts,
)
from ormtune.querylog._lifecycle import SharedHooks

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from sqlalchemy.orm.identity import IdentityMap
    from sqlalchemy.orm.state import InstanceState

__all__ = [
    "end_post_loads",
    "form_cohort",
    "join_runs_since",
    "note_post_load",
    "post_loads_running",
    "run_cohort",
    "run_mark",
    "track_run_cohorts",
    "untrack_run_cohorts",
]

# Every run cohort, by run (run ids are unique in the process): its members keep it alive.
_by_run: weakref.WeakValueDictionary[int, Cohort] = weakref.WeakValueDictionary()
# Per identity map, the newest object already indexed into its run's cohort, and the map's
# size then.
_indexed: weakref.WeakKeyDictionary[IdentityMap, tuple[InstanceState[Any], int]] = (
    weakref.WeakKeyDictionary()
)
# Per identity map, runs that are parts of a larger one (the chunks of one batch load), each
# mapped to the cohort of the whole; held here until the map is next indexed.
_parts: weakref.WeakKeyDictionary[IdentityMap, dict[int, Cohort]] = weakref.WeakKeyDictionary()


def _note_populated(state: InstanceState[Any], context: object, attrs: object) -> None:
    # Only a query that replaces what it loads makes its rows peers again (see _cohorts.py).
    if (
        isinstance(context, QueryContext)
        and context.refresh_state is None
        and context.populate_existing
    ):
        _join_run(state, context.runid)


def _install() -> None:
    global _since
    keep_runs()
    event.listen(Mapper, "refresh", _note_populated, raw=True)
    _since = run_mark()  # objects loaded from now on have their refreshes noted


def _remove() -> None:
    if event.contains(Mapper, "refresh", _note_populated):
        event.remove(Mapper, "refresh", _note_populated)
    release_runs()


_since = 0


_hooks = SharedHooks(_install, _remove)


def track_run_cohorts() -> None:
    """Start keeping what :func:`run_cohort` needs (reference-counted; pair each call with
    :func:`untrack_run_cohorts`): query runs across refreshes, and the rows of
    ``populate_existing`` queries."""
    _hooks.acquire()


def untrack_run_cohorts() -> None:
    """Release one :func:`track_run_cohorts`."""
    _hooks.release()


def _query_run(state: InstanceState[Any]) -> int | None:
    # query_run_of(), inlined where it runs for every object indexed.
    runid = state.runid
    if runid is not None:
        kept = state.__dict__.get(_RUN_BEFORE_REFRESH)
        if kept is not None and kept[1] == runid:
            return int(kept[0])  # refreshed on its own since its query
    return runid


def _recorded(cohort: Cohort | None) -> bool:
    """Whether ``cohort`` was recorded by the instance events and is still kept up to date by
    them (while unused-eager detection runs): then it is exact as it is."""
    return cohort is not None and cohort.run is None and tracking_cohorts()


def _join_run(state: InstanceState[Any], run: int) -> Cohort:
    """Put ``state`` in the cohort of ``run`` (made if need be), unless it is there already or
    in a cohort the instance events keep."""
    kept: Cohort | None = state.__dict__.get(_STATE_ATTRIBUTE)
    if kept is not None and (kept.run == run or run in kept.parts or _recorded(kept)):
        return kept
    cohort = _by_run.get(run)
    if cohort is None:
        cohort = _by_run[run] = Cohort(run)
    cohort._refs.append(state.obj)
    state.__dict__[_STATE_ATTRIBUTE] = cohort
    return cohort


def _index(identity_map: IdentityMap) -> None:
    """Put every object added to the map since the last call in its run's cohort: a walk back
    from the newest entry to the newest already indexed (the whole map the first time, or when
    that object has left it). Each object is indexed once, wherever its run's other objects
    are (SQLAlchemy interleaves runs: subquery and immediate loaders, yield_per with eager
    loads, objects put back into a session)."""
    mapping: dict[Any, InstanceState[Any]] = identity_map._dict
    values: Iterable[InstanceState[Any]] = mapping.values()
    newest, size = _indexed.get(identity_map, (None, 0))
    if newest is not None and mapping.get(newest.key) is not newest:
        newest = None  # gone (garbage-collected, expunged): index the whole map again
    try:
        new = _since_newest(reversed(values), newest)  # type: ignore[call-overload]
    except RuntimeError:  # the garbage collector freed an object meanwhile: walk a copy
        new = _since_newest(reversed(list(values)), newest)
    if newest is not None and len(new) < len(mapping) - size:
        # Fewer new objects than the map grew by: the newest indexed one was taken out and put
        # back at the end meanwhile (expunge and add). Index the whole map again.
        new = _since_newest(reversed(list(values)), None)
    parts = _parts.pop(identity_map, None)
    if not new:
        return
    _indexed[identity_map] = (new[0], len(mapping))
    since = _since
    for state in reversed(new):  # oldest first: row order within each run
        run = _query_run(state)
        if run is not None and run >= since:
            if parts is not None and run in parts:
                _join_whole(state, parts[run])
            else:
                _join_run(state, run)


def _join_whole(state: InstanceState[Any], whole: Cohort) -> None:
    # _join_run() for a run that is part of a larger one.
    kept: Cohort | None = state.__dict__.get(_STATE_ATTRIBUTE)
    if kept is not whole and not _recorded(kept):
        whole._refs.append(state.obj)
        state.__dict__[_STATE_ATTRIBUTE] = whole


def _since_newest(
    states: Iterator[InstanceState[Any]], newest: InstanceState[Any] | None
) -> list[InstanceState[Any]]:
    new = []
    for state in states:
        if state is newest:
            break
        new.append(state)
    return new


def run_cohort(state: InstanceState[Any], identity_map: IdentityMap) -> Cohort | None:
    """The cohort of ``state``: the objects of the query run that loaded it, indexed from the
    identity map of its session when a lazy load needs it, or recorded by the instance events
    (:func:`ormtune.querylog.track_cohorts`). None for an object no query loaded, or one loaded
    before :func:`track_run_cohorts` (its refreshes may not have been noted)."""
    cohort: Cohort | None = state.__dict__.get(_STATE_ATTRIBUTE)
    if cohort is not None and _recorded(cohort):
        return cohort
    run = query_run_of(state)
    if run is None or run < _since:
        return None
    parts = _parts.get(identity_map)
    whole = None if parts is None else parts.get(run)
    _index(identity_map)
    if whole is not None:
        _join_whole(state, whole)
        found: Cohort = state.__dict__[_STATE_ATTRIBUTE]
        return found
    return _join_run(state, run)


def form_cohort(states: list[InstanceState[Any]]) -> Cohort:
    """Make ``states`` the rows of one new query run and one cohort, as if one query had loaded
    them (a cache hit's objects)."""
    run = share_new_run(states)
    cohort = _by_run[run] = Cohort(run)
    refs = cohort._refs
    for state in states:
        refs.append(state.obj)
        state.__dict__[_STATE_ATTRIBUTE] = cohort
    return cohort


def run_mark() -> int:
    """A run id no query has had: every query run from now on has a greater one."""
    mark: int = loading._new_runid()
    return mark


def join_runs_since(mark: int, identity_map: IdentityMap) -> None:
    """Make the queries run since ``mark`` (from :func:`run_mark`) one run, for the objects they
    added to ``identity_map``, if more than one query ran (one query is one run already): the
    chunks of one batch load are one cohort, as those of one ``selectinload`` are. Costs one
    step per run, not per object: the objects join the whole's cohort when the map is next
    indexed. The session's queries since ``mark`` must have been run by the caller; other
    sessions' runs in between never reach this map."""
    end = run_mark()
    running = _post_loads.get(identity_map)
    if running is not None and running[2] > mark:
        # Post-loads of the batch's own queries (its chunks' immediate loads): their objects
        # are the batch's, below.
        del _post_loads[identity_map]
    if end - mark <= 2:
        return  # at most one run in between
    _note_parts(identity_map, range(mark + 1, end), end)


# -- the queries an eager loader runs for one path, as one run ----------------------------
#
# SQLAlchemy's post-loaders run queries of their own after the parents' query: ``selectinload``
# one per 500 parents, ``lazy="immediate"`` (or ``immediateload()``) one lazy load per parent.
# Each is a run of its own, so without this the level below would be one cohort per chunk or
# per parent. SQLAlchemy runs one path's queries one after another, before anything else of the
# session's (post-loads further down wait for the path to end), so the objects that a session's
# identity map gains from the first query of a path to its next other execution, with a run in
# between and loaded along that path, are that path's: made one cohort when that execution
# comes.

# Per identity map, the path whose post-load queries are running: its key, the loader path the
# objects are loaded along (a tuple of mappers and relationships), and the first run mark.
_post_loads: weakref.WeakKeyDictionary[IdentityMap, tuple[object, tuple[Any, ...], int]] = (
    weakref.WeakKeyDictionary()
)


def note_post_load(identity_map: IdentityMap, key: object, path: tuple[Any, ...]) -> None:
    """Called by a ``do_orm_execute`` hook before a query that a post-loader runs: ``key`` tells
    one top-level query's path from another (any hashable value), ``path`` is the loader path
    (``ORMExecuteState.loader_strategy_path.path``). The queries of one path become one run
    (see :func:`end_post_loads`)."""
    running = _post_loads.get(identity_map)
    if running is not None and running[0] == key:
        return
    if running is not None:
        end_post_loads(identity_map)
    _post_loads[identity_map] = (key, path, run_mark())


def post_loads_running() -> bool:
    """Whether any session may have post-load queries to end (cheap; asked for every query)."""
    return bool(_post_loads)


def end_post_loads(identity_map: IdentityMap) -> None:
    """Called by a ``do_orm_execute`` hook before any other execution of the session: the
    objects the post-load queries since :func:`note_post_load` loaded become one cohort."""
    running = _post_loads.pop(identity_map, None)
    if running is None:
        return
    _, path, mark = running
    end = run_mark()
    values: Iterable[InstanceState[Any]] = identity_map._dict.values()
    try:
        found = _loaded_along(reversed(values), path, mark, end)  # type: ignore[call-overload]
    except RuntimeError:  # the garbage collector freed an object meanwhile: walk a copy
        found = _loaded_along(reversed(list(values)), path, mark, end)
    runs = {run for state in found if (run := state.runid) is not None}
    if len(runs) < 2:
        return  # one query: one run already
    whole = Cohort(end, runs)  # end: a run id no query has
    for state in reversed(found):  # oldest first: row order
        _join_whole(state, whole)


def _loaded_along(
    states: Iterator[InstanceState[Any]], path: tuple[Any, ...], mark: int, end: int
) -> list[InstanceState[Any]]:
    # The newest objects of the map with a run between mark and end, loaded along path (not,
    # say, put into the session from another one meanwhile).
    found = []
    length = len(path)
    for state in states:
        runid = state.runid
        if runid is None:
            continue  # flushed, not loaded
        if runid < mark:
            break
        if runid < end and state.load_path.path[:length] == path:
            found.append(state)
    return found


def _note_parts(identity_map: IdentityMap, runs: Iterable[int], end: int) -> None:
    whole = Cohort(end, runs)  # end: a run id no query has
    parts = _parts.get(identity_map)
    if parts is None:
        parts = _parts[identity_map] = {}
    for run in whole.parts:
        parts[run] = whole
