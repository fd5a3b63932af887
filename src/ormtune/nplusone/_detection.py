"""Detections: one unit of work watched for N+1 and repeated queries, and what they found.

An N+1 is decided per cohort (the instances one query loaded): the tally of relationship R on a
cohort counts the distinct members R was lazily loaded for, and the second member makes it an
N+1. A cohort is known by SQLAlchemy's run id of the query that loaded the instance
(:func:`ormtune.querylog.query_run_of`), with no work per loaded instance; the tallies live in
the detection, for the few thousand most recently used runs at most.

Repeated queries are decided per unit of work: SELECTs are grouped by fingerprint and
call-site, and a group with ``repeated_threshold`` statements or more is a finding, not
counting lazy loads that are part of an N+1 (they are reported once, as that N+1).

Unused eager loads (``detect(unused_eager=True)``) are decided per unit of work too: each query
that loaded relationships eagerly is noted with its line (``_eager.py`` finds them and tracks
reads), and a relationship that no object of that query was read for is a finding.
"""

from __future__ import annotations

import itertools
import logging
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self

from ormtune.exceptions import NPlusOneError, NPlusOneWarning
from ormtune.nplusone import _eager, _hooks
from ormtune.nplusone._findings import (
    BATCH_ADVICE,
    Finding,
    FindingKind,
    describe,
    eager_fix,
    loader_option,
    relationship_name,
)
from ormtune.nplusone._settings import (
    DEFAULT_REPEATED_THRESHOLD,
    Mode,
    Settings,
    settings,
)
from ormtune.querylog import NPlusOneSignal, emit, query_run_of, runs_since, signals_wanted

if TYPE_CHECKING:
    from collections.abc import Iterable
    from contextvars import Token
    from types import TracebackType

    from sqlalchemy.orm import InstanceState, RelationshipProperty

    from ormtune.nplusone._eager import EagerLoad
    from ormtune.nplusone._hooks import Callsites, LazyMark
    from ormtune.querylog import CallSite

__all__ = ["Detection", "Tally", "detect", "install", "uninstall"]

logger = logging.getLogger("ormtune.nplusone")

# Query runs a detection keeps tallies for: an N+1 loop touches its run again at every turn,
# so only runs nothing has lazily loaded from in a long while are dropped (and a dropped run's
# N+1, if it goes on, is found again at its next two loads and counted into the same finding).
_MAX_RUNS = 4096


class Tally:
    """Lazy loads of one relationship on one cohort (query run), as one detection counted
    them."""

    __slots__ = ("fingerprint", "loads", "members", "pattern")

    def __init__(self) -> None:
        # The members by id(): the tally is one run's, so every member counted is a member of
        # that run (kept alive by the application, or gone); a state that
        # dies cannot be counted again, and an id reused by a later member could only make one
        # distinct load count as a repeat (and then only when a yield_per result's members
        # are dropped while it is still being read), never invent an N+1.
        self.members: set[int] = set()
        self.loads = 0
        self.pattern: _Pattern | None = None  # set once this is an N+1
        self.fingerprint: str | None = None


@dataclass(slots=True, eq=False)
class _Pattern:
    """A finding being accumulated: a relationship's N+1 at one line, or a repeated SELECT."""

    order: int
    kind: FindingKind
    relationship: str | None
    callsite: CallSite | None
    fingerprint: str | None
    fix: str
    allowed: bool
    count: int = 0
    reported: bool = False

    def finding(self) -> Finding:
        return Finding(
            self.kind, self.relationship, self.count, self.callsite, self.fingerprint, self.fix
        )


@dataclass(slots=True, eq=False)
class _Group:
    """The SELECTs of one fingerprint from one call-site; lazy loads keep their marks."""

    order: int
    plain: int = 0
    lazy: list[LazyMark] = field(default_factory=list)


def _log(finding: Finding) -> None:
    """Log ``finding`` at WARNING, attributed to the loop's line (as a warning is), without
    ``logging``'s walk up the stack for a caller that would only be ormtune."""
    if not logger.isEnabledFor(logging.WARNING):
        return
    callsite = finding.callsite
    if callsite is None:
        logger.warning("%s", finding)
        return
    logger.handle(
        logger.makeRecord(
            logger.name,
            logging.WARNING,
            callsite.filename,
            callsite.lineno,
            "%s",
            (finding,),
            None,
            callsite.function,
        )
    )


def _warn(finding: Finding) -> None:
    if finding.callsite is None:
        warnings.warn(str(finding), NPlusOneWarning, stacklevel=4)
    else:
        # Attributed to the loop's line, not to ormtune or SQLAlchemy.
        warnings.warn_explicit(
            str(finding), NPlusOneWarning, finding.callsite.filename, finding.callsite.lineno
        )


class Detection:
    """One unit of work (a request, a test, a ``with`` block) watched for N+1 queries.

    Create it with :func:`detect` and use it as ``with`` or ``async with``; it is active in the
    context that entered it (this thread or asyncio task, and the tasks it starts). What it
    found is in :attr:`findings`, during the block and after it; :meth:`report` prints them.
    :func:`install` makes one that acts wherever no block is open.
    """

    __slots__ = (
        "_eager",
        "_groups",
        "_lock",
        "_order",
        "_patterns",
        "_runs",
        "_state",
        "_token",
        "counts_selects",
        "installed",
        "settings",
    )

    def __init__(self, settings: Settings, *, installed: bool = False) -> None:
        self.settings = settings
        self.installed = installed
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._patterns: dict[tuple[object, ...], _Pattern] = {}
        self._groups: dict[tuple[str, CallSite | None], _Group] = {}
        # Tallies by query run (most recently used last).
        self._runs: dict[int, dict[object, Tally]] = {}
        # Whether SELECTs are counted for repeated-query findings (only a detect() block can).
        self.counts_selects = not installed and settings.repeated_threshold is not None
        self._eager: list[tuple[EagerLoad, CallSite | None, int]] = []  # with line and order
        self._state: Literal["new", "open", "closed"] = "new"
        self._token: Token[tuple[Detection, ...]] | None = None

    @property
    def mode(self) -> Mode:
        return self.settings.mode

    @property
    def active(self) -> bool:
        """Whether the detection is open and watching."""
        return self._state == "open" and self.mode != "off"

    # -- the unit of work -------------------------------------------------------------------

    def start(self) -> Self:
        """Begin watching (what entering the ``with`` block does)."""
        if self._state != "new":
            raise RuntimeError(
                "this N+1 detection was already started; create a new one with detect()"
            )
        if self.mode != "off":
            if self.installed:
                _hooks.install(self)
            else:
                _hooks.acquire()
                if self.settings.unused_eager:
                    _eager.acquire()
                self._token = _hooks.push(self)
        self._state = "open"
        return self

    def stop(self) -> None:
        """Stop watching and report what is still unreported, as the mode says: log it, warn,
        or (``"raise"``) raise :class:`~ormtune.exceptions.NPlusOneError`."""
        __tracebackhide__ = True
        self._stop(may_raise=True)

    def _stop(self, *, may_raise: bool) -> None:
        __tracebackhide__ = True
        if self._state != "open":
            return
        self._state = "closed"
        if self.mode == "off":
            return
        if self.installed:
            _hooks.uninstall(self)
            self._forget_tallies()
            return
        token, self._token = self._token, None
        try:
            if token is not None:
                _hooks.pop(self, token)
        finally:
            if self.settings.unused_eager:
                _eager.release()
            _hooks.release()
        self._forget_tallies()
        self._conclude(may_raise=may_raise)

    def _forget_tallies(self) -> None:
        with self._lock:
            self._runs.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        __tracebackhide__ = True
        # An exception leaving the block goes on unchanged; findings are still logged or warned.
        self._stop(may_raise=exc_type is None)

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        __tracebackhide__ = True
        self._stop(may_raise=exc_type is None)

    # -- results ----------------------------------------------------------------------------

    @property
    def findings(self) -> list[Finding]:
        """What was found so far, in the order it first happened; allowed findings are left
        out. Repeated queries count up to the moment of asking."""
        with self._lock:
            self._update_repeated()
            self._update_unused()
            patterns = sorted(self._patterns.values(), key=lambda pattern: pattern.order)
            return [pattern.finding() for pattern in patterns if not pattern.allowed]

    def report(self) -> str:
        """The findings as readable text (``"no N+1 or repeated queries"`` when clean)."""
        return describe(self.findings)

    def __repr__(self) -> str:
        return f"<Detection mode={self.mode!r} {self._state}, {len(self._patterns)} patterns>"

    def _conclude(self, *, may_raise: bool) -> None:
        __tracebackhide__ = True
        with self._lock:
            self._update_repeated()
            self._update_unused()
            self._eager.clear()  # concluded: later reads no longer change the findings
            pending = sorted(
                (p for p in self._patterns.values() if not p.allowed and not p.reported),
                key=lambda pattern: pattern.order,
            )
            for pattern in pending:
                pattern.reported = True
            findings = [pattern.finding() for pattern in pending]
        if signals_wanted():
            for finding in findings:
                if finding.kind == "repeated":  # N+1s were signalled as they happened
                    emit(NPlusOneSignal("repeated", finding.relationship, finding.count))
        self._emit(findings, may_raise=may_raise)

    def _emit(self, findings: list[Finding], *, may_raise: bool) -> None:
        __tracebackhide__ = True
        if not findings:
            return
        if self.mode == "log":
            for finding in findings:
                _log(finding)
        elif self.mode == "warn":
            for finding in findings:
                _warn(finding)
        elif self.mode == "raise" and may_raise:
            raise NPlusOneError(describe(findings), findings=findings)

    # -- called by the hooks ----------------------------------------------------------------

    def on_lazy_load(
        self, state: InstanceState[Any], prop: RelationshipProperty[Any], callsites: Callsites
    ) -> tuple[Tally | None, NPlusOneError | None]:
        """Count a lazy load of ``prop`` for ``state`` that is about to run; the error to raise,
        in ``"raise"`` mode, when it is the second member of its cohort to load the
        relationship. (Runs for every lazy load: one lock, the run's tallies looked up
        inline.)"""
        run = query_run_of(state)
        if run is None:
            return None, None  # loaded by no query
        with self._lock:
            # This detection's tallies on the run, the run made the most recently used (the
            # least recently used one goes when more than _MAX_RUNS are kept).
            runs = self._runs
            tallies = runs.pop(run, None)
            if tallies is None:
                # A run this detection has tallies for was watched when they were made, and
                # stays so: the hooks (and runs_since()) stay as they are while it is active.
                if run < runs_since():
                    return None, None  # loaded before anything watched
                tallies = {}
                if len(runs) >= _MAX_RUNS:
                    del runs[next(iter(runs))]
            runs[run] = tallies
            tally = tallies.get(prop)
            if tally is None:
                tally = tallies[prop] = Tally()
            tally.loads += 1
            members = tally.members
            members.add(id(state))
            pattern = tally.pattern
            if pattern is not None:  # an N+1 already found: one more load of it
                pattern.count += 1
                return tally, None
            if len(members) < 2:
                return tally, None
            error, signal, finding = self._found(prop, tally, callsites)
        if finding is not None:
            self._emit([finding], may_raise=False)
        if signal is not None:
            emit(signal)  # outside the lock: a subscriber may take its own
        return tally, error

    def after_wanted(self, tally: Tally | None) -> bool:
        """Whether a lazy load just counted into ``tally`` must be shown to this detection again
        after its statement: for the statement's fingerprint, or for repeated queries."""
        if tally is not None:
            pattern = tally.pattern
            if pattern is not None:
                # Part of an N+1 already (never a repeated query): only the finding's
                # fingerprint can be missing.
                return pattern.fingerprint is None
            if tally.fingerprint is None:
                return True
        return self.counts_selects

    def _found(
        self, prop: RelationshipProperty[Any], tally: Tally, callsites: Callsites
    ) -> tuple[NPlusOneError | None, NPlusOneSignal | None, Finding | None]:
        """The second member of a cohort lazily loaded the relationship: an N+1, from this
        line. The error to raise, the signal to emit and the finding to report now. Called
        with the lock held."""
        signal: NPlusOneSignal | None = None
        pattern, new = self._n_plus_one(prop, callsites.get(self.settings.skip_modules))
        tally.pattern = pattern
        pattern.count += tally.loads
        if pattern.fingerprint is None:
            pattern.fingerprint = tally.fingerprint
        if pattern.allowed:
            return None, None, None
        if signals_wanted():
            # One signal per loop (a cohort turning into an N+1), for metrics.
            signal = NPlusOneSignal("n+1", pattern.relationship, tally.loads)
        if self.mode == "raise":
            pattern.reported = True
            finding = pattern.finding()
            return NPlusOneError(str(finding), findings=[finding]), signal, None
        if not (self.installed and new):
            return None, signal, None
        # An installed detection has no end to report at: report the pattern now, once.
        pattern.reported = True
        return None, signal, pattern.finding()

    def _n_plus_one(
        self, prop: RelationshipProperty[Any], callsite: CallSite | None
    ) -> tuple[_Pattern, bool]:
        """The N+1 pattern of ``prop`` at ``callsite``, and whether it is new. Called with the
        lock held."""
        name = relationship_name(prop)
        key = ("n+1", name, callsite)
        pattern = self._patterns.get(key)
        if pattern is not None:
            return pattern, False
        pattern = self._patterns[key] = _Pattern(
            order=next(self._order),
            kind="n+1",
            relationship=name,
            callsite=callsite,
            fingerprint=None,
            fix=loader_option(prop),
            allowed=self.settings.allows(name, callsite),
        )
        return pattern, True

    def on_lazy_loaded(self, tally: Tally | None, fingerprint: str) -> None:
        """Note the statement a lazy load ran, for the finding it may become part of."""
        if tally is None:
            return
        pattern = tally.pattern
        if tally.fingerprint is not None and (pattern is None or pattern.fingerprint is not None):
            return  # nothing left to note (set once, under the lock below, never unset)
        with self._lock:
            if tally.fingerprint is None:
                tally.fingerprint = fingerprint
            pattern = tally.pattern
            if pattern is not None and pattern.fingerprint is None:
                pattern.fingerprint = fingerprint

    def on_select(self, fingerprint: str, callsites: Callsites, mark: LazyMark | None) -> None:
        """Count a SELECT run in this unit of work, for repeated-query findings."""
        if self.installed or self.settings.repeated_threshold is None:
            return
        if mark is not None and mark.tally is not None and mark.tally.pattern is not None:
            # A lazy load of an N+1 already found is reported as that N+1, never as a repeated
            # query (see _update_repeated): no need to find its line.
            return
        callsite = callsites.get(self.settings.skip_modules)
        with self._lock:
            key = (fingerprint, callsite)
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(next(self._order))
            if mark is None:
                group.plain += 1
            else:
                group.lazy.append(mark)

    def on_eager_load(self, load: EagerLoad, callsites: Callsites) -> None:
        """Note a query's eager loads (called in the query's context, at its first object)."""
        callsite = callsites.get(self.settings.skip_modules)
        with self._lock:
            self._eager.append((load, callsite, next(self._order)))

    def _update_unused(self) -> None:
        """Rebuild the unused-eager patterns from the eager loads and the reads so far (one per
        relationship, fix and line). Called with the lock held."""
        if not self._eager:
            return
        earlier = {k: p for k, p in self._patterns.items() if p.kind == "unused-eager"}
        for key in earlier:
            del self._patterns[key]
        for load, callsite, order in self._eager:
            for eager in load.relationships:
                if eager.relationship.key in load.reads:
                    continue
                name = relationship_name(eager.relationship)
                fix = eager_fix(eager.relationship, eager.strategy, option=eager.option)
                key = ("unused-eager", name, fix, callsite)
                pattern = self._patterns.get(key)
                if pattern is None:
                    before = earlier.get(key)
                    pattern = self._patterns[key] = _Pattern(
                        order=order,
                        kind="unused-eager",
                        relationship=name,
                        callsite=callsite,
                        fingerprint=None,
                        fix=fix,
                        allowed=self.settings.allows(name, callsite),
                        reported=before is not None and before.reported,
                    )
                pattern.count += load.count

    def _update_repeated(self) -> None:
        """Turn groups at or over the threshold into (or update) repeated-query patterns.
        Called with the lock held."""
        threshold = self.settings.repeated_threshold
        if threshold is None:
            return
        for (fingerprint, callsite), group in self._groups.items():
            key = ("repeated", fingerprint, callsite)
            # Lazy loads that belong to an N+1 are reported as that N+1, not twice.
            lazy = [mark for mark in group.lazy if mark.tally is None or mark.tally.pattern is None]
            count = group.plain + len(lazy)
            pattern = self._patterns.get(key)
            if count < threshold:
                # Lazy loads can turn out to be part of an N+1 after a look at the findings.
                if pattern is not None and not pattern.reported:
                    del self._patterns[key]
                continue
            relationships = {(mark.relationship, mark.option) for mark in lazy}
            relationship, fix = None, BATCH_ADVICE
            if not group.plain and len(relationships) == 1:
                relationship, fix = relationships.pop()
            if pattern is None:
                pattern = self._patterns[key] = _Pattern(
                    order=group.order,
                    kind="repeated",
                    relationship=relationship,
                    callsite=callsite,
                    fingerprint=fingerprint,
                    fix=fix,
                    allowed=False,
                )
            pattern.relationship, pattern.fix, pattern.count = relationship, fix, count
            pattern.allowed = self.settings.allows(relationship, callsite)


def detect(
    mode: Mode = "warn",
    *,
    allow: Iterable[str] = (),
    allow_callsites: Iterable[str] = (),
    repeated_threshold: int | None = DEFAULT_REPEATED_THRESHOLD,
    skip_modules: Iterable[str] = (),
    unused_eager: bool = False,
) -> Detection:
    """Watch a block of code for N+1 queries and repeated queries: ``with detect(...) as d:``.

    Reported inside the block: a relationship lazy-loaded for two or more of the objects one
    query loaded (an N+1), and a SELECT run ``repeated_threshold`` times or more from one line
    (None turns that off). Objects must be loaded while a detection (or the pytest plugin,
    or :func:`ormtune.querylog.track_runs`) is on for their lazy loads to count.

    ``mode`` says what a finding does: ``"warn"`` (an
    :class:`~ormtune.exceptions.NPlusOneWarning` at the loop's line, when the block ends),
    ``"raise"`` (:class:`~ormtune.exceptions.NPlusOneError` at the second lazy load, or at the
    end of the block for repeated queries), ``"log"`` (the ``ormtune.nplusone`` logger, when
    the block ends) or ``"off"``. ``allow`` exempts relationships (``"User.payments"``,
    ``"User.*"``), ``allow_callsites`` exempts lines of code, matched with fnmatch against
    ``"file:line"`` and ``"file:function"`` (``"*/reports.py:*"``); ``skip_modules`` adds
    module prefixes to skip, like a data-access layer, when finding the loop's line.

    ``unused_eager=True`` also reports relationships that a query in the block loaded eagerly
    (``joinedload``, ``selectinload``, ``subqueryload``, ``immediateload``, by option or by the
    mapping's ``lazy=``) and that were read on none of its objects by the end of the block,
    with the query's line. Reads are tracked by switching the relationship's attribute to a
    read-noting subclass while such a block is open (see ``ormtune.nplusone``); ``"raise"``
    raises for them when the block ends.
    """
    return Detection(
        _checked_settings(
            mode, allow, allow_callsites, repeated_threshold, skip_modules, unused_eager
        )
    )


# detect() runs once per request or test, with the same arguments: their check is remembered
# for arguments that are strings, numbers, None or tuples (bounded; keyed with each argument's
# type, so that 1 is never taken for True); lists, sets and generators are checked every time.
_checked: dict[tuple[object, ...], Settings] = {}
_CHECKED_LIMIT = 256


def _checked_settings(
    mode: object,
    allow: object,
    allow_callsites: object,
    repeated_threshold: object,
    skip_modules: object,
    unused_eager: object,
) -> Settings:
    arguments = (mode, allow, allow_callsites, repeated_threshold, skip_modules, unused_eager)
    if not (
        type(allow) is tuple and type(allow_callsites) is tuple and type(skip_modules) is tuple
    ):
        return settings(*arguments[:5], caller="detect()", unused_eager=unused_eager)
    # Each argument with its type (written out: this runs once per request or test).
    key = (
        (type(mode), mode),
        allow,
        allow_callsites,
        (type(repeated_threshold), repeated_threshold),
        skip_modules,
        (type(unused_eager), unused_eager),
    )
    try:
        found = _checked.get(key)
    except TypeError:  # a tuple holding something unhashable: checked (and refused) below
        return settings(*arguments[:5], caller="detect()", unused_eager=unused_eager)
    if found is None:
        found = settings(*arguments[:5], caller="detect()", unused_eager=unused_eager)
        if len(_checked) < _CHECKED_LIMIT:
            _checked[key] = found
    return found


def install(
    mode: Mode = "warn",
    *,
    allow: Iterable[str] = (),
    allow_callsites: Iterable[str] = (),
    skip_modules: Iterable[str] = (),
) -> Detection:
    """Turn N+1 detection on for the whole process, wherever no :func:`detect` block is open.

    Each N+1 pattern (a relationship at a line) is logged or warned once, when it first
    happens, so its count is then 2; ``"raise"`` raises at every N+1. Repeated queries need a
    unit of work to be counted in, so they are found only inside :func:`detect` blocks (wrap
    each request in one). Returns the installed :class:`Detection`; :func:`uninstall` (or its
    ``stop()``) removes it. Installing twice is an error.
    """
    detection = Detection(
        settings(mode, allow, allow_callsites, None, skip_modules, caller="install()"),
        installed=True,
    )
    return detection.start()


def uninstall() -> Detection | None:
    """Remove the detection :func:`install` installed, and return it (None if there was none)."""
    detection = _hooks.installed()
    if detection is not None:
        detection.stop()
    return detection
