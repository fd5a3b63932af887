"""The SQLAlchemy hooks N+1 detection runs on, shared by every detection in the process.

Two things are installed when the first detection starts and removed when the last one stops
(reference-counted, like the engine listeners of ``ormtune.querylog``):

* query runs (:func:`ormtune.querylog.track_runs`): SQLAlchemy's own per-query run id on each
  instance says which query loaded it, kept across single-object refreshes, with no event per
  loaded instance (unused-eager detection tracks cohorts on top, for the reads it notes);
* one statement watcher (:func:`ormtune.querylog.watch`), which sees every statement just
  before the database runs it, with SQLAlchemy's execution context: a lazy load is known there
  by the load options the ORM passes down with it (the object it loads for, the relationship's
  path), so it is counted before its SQL runs, and in ``"raise"`` mode stopped there (many-to-one
  loads answered from the identity map never get there, rightly); a single-object refresh is
  noted before it replaces the object's run. After the statement, the watcher gets its
  fingerprint, for the finding and for repeated queries.

No ``do_orm_execute`` listener: one would make every ORM execution build its hook state and
run the ORM's pre-execution step twice, and wrapping the lazy load to scope its statements
(``invoke_statement``) would run it through ``Session.execute`` a second time. The open
detections are a context variable: threads and asyncio tasks never see each other's, and tasks
started inside a block inherit it. Where no ``detect()`` block is open, the installed detection
(if any) acts.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ormtune.exceptions import ConfigurationError
from ormtune.nplusone._findings import loader_option, relationship_name
from ormtune.querylog import (
    StatementKind,
    find_callsite,
    lazy_load_target,
    note_refresh,
    track_runs,
    untrack_runs,
    watch,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import ExecutionContext
    from sqlalchemy.orm import InstanceState, RelationshipProperty

    from ormtune.nplusone._detection import Detection, Tally
    from ormtune.querylog import CallSite, Registration, StatementInfo

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
    ``skip_modules`` (the stack walk is the expensive part). Made for every lazy load and rarely
    asked: no ``__init__`` to run, and the dictionary comes with the first walk."""

    _found: dict[tuple[str, ...], CallSite | None] | None = None

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
    """A lazy load about to run: what each active detection counted, and its line (found at
    most once, and only if asked)."""

    marks: dict[Detection, LazyMark]
    callsites: Callsites


_scoped: ContextVar[tuple[Detection, ...]] = ContextVar("ormtune_nplusone", default=())
_installed: Detection | None = None
_lock = threading.Lock()
_users = 0
_watching: Registration | None = None


def scoped() -> tuple[Detection, ...]:
    """The ``detect()`` blocks open in this context, outermost first."""
    return _scoped.get()


# relationship -> (its name, the loader option that fixes it): formatted once, not per load.
_names: dict[RelationshipProperty[Any], tuple[str, str]] = {}


def _count(
    state: InstanceState[Any],
    prop: RelationshipProperty[Any],
    detections: tuple[Detection, ...],
) -> Loading | None:
    """Count a lazy load that is about to run in each active detection; what the watcher needs
    to see again after the statement (None when no detection needs its fingerprint or its
    line: the usual case once the loop is a known N+1)."""
    callsites = Callsites()
    tallies: list[tuple[Detection, Tally | None]] = []
    error: BaseException | None = None
    wanted = False
    for detection in detections:
        tally, found = detection.on_lazy_load(state, prop, callsites)
        tallies.append((detection, tally))
        if error is None:
            error = found
        wanted = wanted or detection.after_wanted(tally)
    if error is not None:
        # An N+1 in "raise" mode: raised before the lazy load runs SQL, inside the loop.
        raise error
    if not wanted:
        return None
    names = _names.get(prop)
    if names is None:
        names = _names[prop] = (relationship_name(prop), loader_option(prop))
    name, option = names
    return Loading({d: LazyMark(name, option, tally) for d, tally in tallies}, callsites)


_PLAIN = object()  # the token of a statement that is no lazy load, in a detect() block
_SELECT = StatementKind.SELECT


class _Watcher:
    """Sees every statement while any detection is active (see the module doc)."""

    __slots__ = ()

    def before_statement(self, context: ExecutionContext, /) -> object | None:
        scoped = _scoped.get()
        if scoped:
            detections = scoped
        elif _installed is not None:
            detections = (_installed,)
        else:
            return None
        target = lazy_load_target(context)
        if target is not None:
            return _count(target[0], target[1], detections)
        note_refresh(context)
        for detection in scoped:
            if detection.counts_selects:
                return _PLAIN
        return None

    def after_statement(self, token: object, statement: StatementInfo, /) -> None:
        if statement.kind is not _SELECT:
            return
        fingerprint = statement.fingerprint
        if token is _PLAIN:
            callsites = Callsites()
            for detection in _scoped.get():
                detection.on_select(fingerprint, callsites, None)
            return
        assert isinstance(token, Loading)
        marks = token.marks
        for detection, mark in marks.items():
            detection.on_lazy_loaded(mark.tally, fingerprint)
        for detection in _scoped.get():
            detection.on_select(fingerprint, token.callsites, marks.get(detection))


_WATCHER = _Watcher()


def acquire() -> None:
    """Install the hooks if this is the first active detection."""
    global _users, _watching
    with _lock:
        _users += 1
        if _users > 1:
            return
        track_runs()
        _watching = watch(_WATCHER)


def release() -> None:
    """Remove the hooks if this was the last active detection."""
    global _users, _watching
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users > 0:
            return
        if _watching is not None:
            _watching.close()
            _watching = None
        untrack_runs()


def hooked() -> bool:
    """Whether the detection hooks are installed right now."""
    return _watching is not None


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
