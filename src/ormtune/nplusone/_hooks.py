"""The SQLAlchemy hooks N+1 detection runs on, shared by every detection in the process.

Three things are installed when the first detection starts and removed when the last one stops
(reference-counted, like the engine listeners of ``ormtune.querylog``):

* query runs (:func:`ormtune.querylog.track_runs`): SQLAlchemy's own per-query run id on each
  instance says which query loaded it, kept across single-object refreshes, with no event per
  loaded instance (unused-eager detection tracks cohorts on top, for the reads it notes);
* one ``do_orm_execute`` listener on the ``Session`` class, which sees every lazy load before
  it runs SQL (many-to-one loads answered from the identity map never get there, rightly), and
  every single-object refresh before it replaces the object's run;
* one querylog observer, which sees every statement, for fingerprints and repeated queries.

The listener runs a lazy load's statement itself (``ORMExecuteState.invoke_statement``, the
documented way to wrap an execution), with a context variable naming the lazy load set around
it, so the observer knows which statements a lazy load ran. The lazy loads an eager loader
(``immediateload``) runs are counted but left to SQLAlchemy, which runs them with options of
their own that ``invoke_statement`` would replace with the query's. The open detections are a
context variable too: threads and asyncio tasks never see each other's, and tasks started
inside a block inherit it. Where no ``detect()`` block is open, the installed detection (if
any) acts.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import event
from sqlalchemy.orm import Session

from ormtune.exceptions import ConfigurationError
from ormtune.nplusone._findings import loader_option, relationship_name
from ormtune.querylog import (
    StatementKind,
    find_callsite,
    lazy_load_of,
    lazy_loads_only,
    note_refresh,
    observe,
    track_runs,
    untrack_runs,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Result
    from sqlalchemy.orm import ORMExecuteState, RelationshipProperty

    from ormtune.nplusone._detection import Detection, Tally
    from ormtune.querylog import CallSite, LazyLoad, Observation, QueryEvent

__all__ = [
    "Callsites",
    "LazyMark",
    "Loading",
    "acquire",
    "hooked",
    "install",
    "installed",
    "pop",
    "push",
    "release",
    "scoped",
    "uninstall",
]


class Callsites:
    """The application line of the statement being handled, found at most once per distinct
    ``skip_modules`` (the stack walk is the expensive part)."""

    __slots__ = ("_found",)

    def __init__(self) -> None:
        # Made for every lazy load and rarely asked: the dictionary comes with the first walk.
        self._found: dict[tuple[str, ...], CallSite | None] | None = None

    def get(self, skip_modules: tuple[str, ...]) -> CallSite | None:
        found = self._found
        if found is None:
            found = self._found = {}
        elif skip_modules in found:
            return found[skip_modules]
        callsite = found[skip_modules] = find_callsite(skip_modules)
        return callsite


class LazyMark(NamedTuple):
    """What one detection knows about a lazy load: its relationship, the loader option that
    would have avoided it, and the detection's tally for the cohort (None without a cohort).
    A named tuple, made for every lazy load: cheaper to make than a frozen dataclass."""

    relationship: str
    option: str
    tally: Tally | None


@dataclass(slots=True, eq=False)
class Loading:
    """A lazy load in progress in this context; statements run meanwhile belong to it."""

    marks: dict[Detection, LazyMark]
    callsites: Callsites
    fingerprint: str | None = None


_scoped: ContextVar[tuple[Detection, ...]] = ContextVar("ormtune_nplusone", default=())
_loading: ContextVar[Loading | None] = ContextVar("ormtune_nplusone_loading", default=None)
_installed: Detection | None = None
_lock = threading.Lock()
_users = 0
_observation: Observation | None = None


def scoped() -> tuple[Detection, ...]:
    """The ``detect()`` blocks open in this context, outermost first."""
    return _scoped.get()


def _active() -> tuple[Detection, ...]:
    scoped = _scoped.get()
    if scoped:
        return scoped
    installed = _installed
    return () if installed is None else (installed,)


@lazy_loads_only
def _on_do_orm_execute(orm_execute_state: ORMExecuteState) -> Result[Any] | None:
    """Count each lazy load with the active detections, then run it (see the module doc)."""
    detections = _active()
    if not detections:
        return None
    lazy = lazy_load_of(orm_execute_state)
    if lazy is None:
        if orm_execute_state.is_select:
            note_refresh(orm_execute_state)
        return None
    loading, error = _count(lazy, detections)
    if error is not None:
        # An N+1 in "raise" mode: raised before the lazy load runs SQL, inside the loop.
        raise error
    if lazy.by_eager_loader:
        # SQLAlchemy runs an eager loader's lazy loads without the query's own yield_per and
        # autoflush=False; invoke_statement() would pass those along. Counted, not wrapped.
        return None
    return _run(orm_execute_state, loading)


# relationship -> (its name, the loader option that fixes it): formatted once, not per load.
_names: dict[RelationshipProperty[Any], tuple[str, str]] = {}


def _count(
    lazy: LazyLoad, detections: tuple[Detection, ...]
) -> tuple[Loading, BaseException | None]:
    callsites = Callsites()
    prop = lazy.relationship
    names = _names.get(prop)
    if names is None:
        names = _names[prop] = (relationship_name(prop), loader_option(prop))
    name, option = names
    marks: dict[Detection, LazyMark] = {}
    error: BaseException | None = None
    for detection in detections:
        tally, found = detection.on_lazy_load(lazy, callsites)
        marks[detection] = LazyMark(name, option, tally)
        error = error or found
    return Loading(marks, callsites), error


def _run(orm_execute_state: ORMExecuteState, loading: Loading) -> Result[Any]:
    token = _loading.set(loading)
    try:
        result = orm_execute_state.invoke_statement()
    finally:
        _loading.reset(token)
    if loading.fingerprint is not None:
        for detection, mark in loading.marks.items():
            detection.on_lazy_loaded(mark.tally, loading.fingerprint)
    return result


class _Observer:
    """Receives every statement while any detection is active; ignores those outside one."""

    __slots__ = ()

    def on_query(self, event: QueryEvent, /) -> None:
        loading = _loading.get()
        scoped = _scoped.get()
        if (loading is None and not scoped) or event.kind is not StatementKind.SELECT:
            return
        if loading is not None and loading.fingerprint is None:
            loading.fingerprint = event.fingerprint
        callsites = loading.callsites if loading is not None else Callsites()
        for detection in scoped:
            mark = loading.marks.get(detection) if loading is not None else None
            detection.on_select(event.fingerprint, callsites, mark)


_OBSERVER = _Observer()


def acquire() -> None:
    """Install the hooks if this is the first active detection."""
    global _users, _observation
    with _lock:
        _users += 1
        if _users > 1:
            return
        track_runs()
        if not event.contains(Session, "do_orm_execute", _on_do_orm_execute):
            event.listen(Session, "do_orm_execute", _on_do_orm_execute)
        _observation = observe(_OBSERVER)


def release() -> None:
    """Remove the hooks if this was the last active detection."""
    global _users, _observation
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users > 0:
            return
        if event.contains(Session, "do_orm_execute", _on_do_orm_execute):
            event.remove(Session, "do_orm_execute", _on_do_orm_execute)
        if _observation is not None:
            _observation.close()
            _observation = None
        untrack_runs()


def hooked() -> bool:
    """Whether the detection hooks are installed right now."""
    return event.contains(Session, "do_orm_execute", _on_do_orm_execute)


def push(detection: Detection) -> Token[tuple[Detection, ...]]:
    """Make ``detection`` active in this context (and the tasks it starts)."""
    return _scoped.set((*_scoped.get(), detection))


def pop(detection: Detection, token: Token[tuple[Detection, ...]]) -> None:
    """Undo :func:`push`, also when left in another context than it was entered in."""
    try:
        _scoped.reset(token)
    except ValueError:
        _scoped.set(tuple(d for d in _scoped.get() if d is not detection))


def install(detection: Detection) -> None:
    """Make ``detection`` act wherever no ``detect()`` block is open."""
    global _installed
    with _lock:
        if _installed is not None:
            raise ConfigurationError(
                f"N+1 detection is already installed (mode={_installed.mode!r}); "
                f"call ormtune.nplusone.uninstall() before installing it again"
            )
        _installed = detection
    acquire()


def installed() -> Detection | None:
    """The installed detection, if any."""
    return _installed


def uninstall(detection: Detection) -> bool:
    """Undo :func:`install` if ``detection`` is the installed one; whether it was."""
    global _installed
    with _lock:
        if _installed is not detection:
            return False
        _installed = None
    release()
    return True
