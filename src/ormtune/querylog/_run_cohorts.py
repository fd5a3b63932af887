"""Cohorts found from query runs when they are first needed, not recorded object by object.

Recording a cohort with the ``load`` instance event costs an event dispatch per loaded object,
about a microsecond, which an application pays for every row whether or not anything ever lazy
loads from it. Automatic batch loading needs a cohort only when a lazy load is about to run,
and SQLAlchemy already marks every object with its query's run id (``InstanceState.runid``,
see ``_cohorts.py``). So the cohort is found then: a query adds the objects it creates to the
session's identity map one after another, so walking the map from its newest entry back finds
them all, and the walk stops at the first object of an older run. The cohort found is kept on
its members' states, so the next relationship loaded from it finds it at once.

Three kinds of rows are not where the walk looks, and are recorded as they come instead:

* the objects a ``populate_existing`` query refreshes were in the map before it ran: the
  ``refresh`` event (which fires only for refreshes) notes them under the query's run;
* the chunks of one batch load (500 keys each) are queries of their own: the batch makes their
  new objects one run and one cohort when it ends (:func:`join_runs_since`);
* a cache hit's objects: the cache makes them one (:func:`form_cohort`).

An object expired by ``commit()`` and refreshed on its own gets a run of its own from that
refresh; :func:`ormtune.querylog.note_refresh_load`, called by a ``do_orm_execute`` hook,
keeps the run it belongs to (as :func:`ormtune.querylog.track_runs` explains).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.orm import Mapper, QueryContext, loading
from sqlalchemy.orm.attributes import instance_state

from ormtune.querylog._cohorts import (
    _RUN_BEFORE_REFRESH,
    _STATE_ATTRIBUTE,
    Cohort,
    keep_runs,
    query_run_of,
    release_runs,
    share_new_run,
)
from ormtune.querylog._lifecycle import SharedHooks

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from sqlalchemy.orm.identity import IdentityMap
    from sqlalchemy.orm.state import InstanceState

__all__ = [
    "form_cohort",
    "join_runs_since",
    "run_cohort",
    "run_mark",
    "track_run_cohorts",
    "untrack_run_cohorts",
]

# Cohorts of populate_existing queries, by run: the refreshed objects, noted as they come.
_populated: weakref.WeakValueDictionary[int, Cohort] = weakref.WeakValueDictionary()
_POPULATED_KEY = ("ormtune", "populated cohort")


def _note_populated(state: InstanceState[Any], context: object, attrs: object) -> None:
    # Only a query that replaces what it loads makes its rows peers again (see _cohorts.py).
    if (
        isinstance(context, QueryContext)
        and context.refresh_state is None
        and context.populate_existing
    ):
        attributes = context.attributes
        cohort: Cohort | None = attributes.get(_POPULATED_KEY)
        if cohort is None:
            # Incomplete: the query's new rows join it when a lazy load first needs it. Its
            # members keep it alive, the registry finds it from those new rows.
            cohort = attributes[_POPULATED_KEY] = Cohort(context.runid, complete=False)
            _populated[context.runid] = cohort
        cohort._refs.append(state.obj)
        _adopt(state, cohort)


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


# How many objects of other runs a search passes before it indexes the whole identity map
# instead: a search passes every object loaded after the run it looks for, and a loop over
# objects of many small old runs (one session.get() each) would otherwise pass the same newer
# objects again for each of them.
_WALK_BUDGET = 2_000


def _query_run(state: InstanceState[Any]) -> int | None:
    # query_run_of(), inlined where it runs for every object of a search.
    runid = state.runid
    if runid is not None:
        kept = state.__dict__.get(_RUN_BEFORE_REFRESH)
        if kept is not None and kept[1] == runid:
            return int(kept[0])  # refreshed on its own since its query
    return runid


def _run_members(states: Iterator[InstanceState[Any]], run: int) -> list[InstanceState[Any]] | None:
    """The states of ``run`` among ``states`` (newest first), up to the first of an older run;
    None once more than the budget of other runs' objects has been passed."""
    members = []
    budget = _WALK_BUDGET
    for state in states:
        runid = state.runid
        if runid == run:
            members.append(state)
            continue
        if runid is None:
            continue  # made by the application and flushed, or merged without a query
        runid = _query_run(state)
        if runid == run:
            members.append(state)
            continue
        if runid is not None and runid < run:
            break
        budget -= 1
        if not budget:
            return None
    return members


def _by_run(states: Iterable[InstanceState[Any]]) -> dict[int, list[InstanceState[Any]]]:
    runs: dict[int, list[InstanceState[Any]]] = {}
    for state in states:
        runid = _query_run(state)
        if runid is not None and runid >= _since:
            members = runs.get(runid)
            if members is None:
                runs[runid] = [state]
            else:
                members.append(state)
    return runs


def run_cohort(state: InstanceState[Any], identity_map: IdentityMap) -> Cohort | None:
    """The cohort of ``state``: the objects of the query run that loaded it, found in the
    identity map of its session the first time it is asked for, or recorded by the instance
    events (:func:`ormtune.querylog.track_cohorts`). None for an object no query loaded, or
    one loaded before :func:`track_run_cohorts` (its refreshes may not have been noted)."""
    cohort: Cohort | None = state.__dict__.get(_STATE_ATTRIBUTE)
    if cohort is not None and cohort.run is None:
        return cohort  # recorded by the instance events: exact as it is
    run = query_run_of(state)
    if run is None or run < _since:
        return None
    if cohort is not None and cohort.run == run and cohort.complete:
        return cohort
    values: Iterable[InstanceState[Any]] = identity_map._dict.values()
    try:
        found = _run_members(reversed(values), run)  # type: ignore[call-overload]
    except RuntimeError:  # the garbage collector freed an object meanwhile: walk a copy
        values = list(values)
        found = _run_members(reversed(values), run)
    if found is None:
        # Far behind newer objects: index every run in the map at once, so that no other
        # search passes them again.
        runs = _by_run(list(values))
        for other, members in runs.items():
            if other != run:
                _materialize(other, members)
        found = runs.get(run, [])
    else:
        found.reverse()  # row order
    if all(member is not state for member in found):
        found.append(state)  # a row its query found in the map already, and reloaded
    return _materialize(run, found)


def _materialize(run: int, found: list[InstanceState[Any]]) -> Cohort:
    """The complete cohort of ``run``: ``found`` and the objects its query refreshed."""
    cohort = _populated.pop(run, None)
    if cohort is None:
        cohort = Cohort(run)
    cohort.complete = True
    refs = cohort._refs
    known = {id(ref) for ref in refs}
    for member in found:
        if id(member.obj) not in known:
            refs.append(member.obj)
    for ref in refs:
        obj = ref()
        if obj is not None:
            _adopt(instance_state(obj), cohort)
    return cohort


def _adopt(state: InstanceState[Any], cohort: Cohort) -> None:
    # Never take a member from a cohort the instance events recorded (they are exact, and
    # unused-eager detection keeps what it saw on them).
    kept: Cohort | None = state.__dict__.get(_STATE_ATTRIBUTE)
    if kept is None or kept.run is not None:
        state.__dict__[_STATE_ATTRIBUTE] = cohort


def form_cohort(states: list[InstanceState[Any]], *, replace: bool = True) -> Cohort:
    """Make ``states`` the rows of one new query run and one cohort, as if one query had loaded
    them (a cache hit's objects, the chunks of one batch load). With ``replace=False``, an
    object whose cohort the instance events recorded keeps it."""
    run = share_new_run(states)
    cohort = Cohort(run)
    refs = cohort._refs
    for state in states:
        refs.append(state.obj)
        if replace:
            state.__dict__[_STATE_ATTRIBUTE] = cohort
        else:
            _adopt(state, cohort)
    return cohort


def run_mark() -> int:
    """A run id no query has had: every query run from now on has a greater one."""
    mark: int = loading._new_runid()
    return mark


def join_runs_since(mark: int, identity_map: IdentityMap) -> None:
    """Make the objects that the queries run since ``mark`` (from :func:`run_mark`) added to
    the session one run and one cohort, if more than one query ran (one query is one run
    already): the chunks of one batch load are one cohort, as those of one ``selectinload``
    are. The session's queries since ``mark`` must have been run by the caller."""
    end = run_mark()
    if end - mark <= 2:
        return  # at most one run in between (other threads' queries take run ids too)
    values: Iterable[InstanceState[Any]] = identity_map._dict.values()
    try:
        found = _runs_between(reversed(values), mark, end)  # type: ignore[call-overload]
    except RuntimeError:
        found = _runs_between(reversed(list(values)), mark, end)
    if found:
        found.reverse()
        # Rows the instance events saw are one cohort already (the batch shares one then).
        form_cohort(found, replace=False)


def _runs_between(
    states: Iterator[InstanceState[Any]], mark: int, end: int
) -> list[InstanceState[Any]]:
    found = []
    for state in states:
        runid = state.runid
        if runid is None:
            continue
        if runid < mark:
            break
        if runid < end:
            found.append(state)
    return found
