"""Query capture: every SQL statement an application runs, with its fingerprint and cost.

``capture()`` records the statements of one block of code into a :class:`QueryLog`;
``observe()`` sends every statement in the process to a :class:`~ormtune.typing.QueryObserver`.
Both share one set of engine listeners, installed only while something listens.

``emit()`` and ``observe_signals()`` carry what features report besides statements (cache
outcomes, N+1 findings, autoload batches) from the package that knows to the packages that
count, without either importing the other; see ``_signals.py``.
"""

from ormtune.querylog._callsite import CallSite, find_callsite
from ormtune.querylog._capture import Capture, Observation, capture, listening, observe, watch
from ormtune.querylog._cohorts import (
    Cohort,
    LazyLoad,
    cohort_of,
    keeping_runs,
    lazy_load_executing,
    lazy_load_of,
    lazy_load_target,
    note_refresh,
    note_refresh_load,
    query_run_of,
    runs_since,
    share_new_run,
    shared_cohort,
    track_cohorts,
    track_runs,
    tracking_cohorts,
    tracking_runs,
    untrack_cohorts,
    untrack_runs,
)
from ormtune.querylog._event import QueryEvent, redact
from ormtune.querylog._lifecycle import Registration, SharedHooks
from ormtune.querylog._log import QueryGroup, QueryLog
from ormtune.querylog._ormhooks import acts_on_lazy_loads_only, lazy_loads_only
from ormtune.querylog._run_cohorts import (
    end_post_loads,
    form_cohort,
    join_runs_since,
    note_post_load,
    post_loads_running,
    run_cohort,
    run_mark,
    track_run_cohorts,
    untrack_run_cohorts,
)
from ormtune.querylog._signals import (
    AutoloadBatch,
    CacheEvent,
    CacheOutcome,
    NPlusOneSignal,
    Signal,
    emit,
    observe_signals,
    signals_wanted,
)
from ormtune.querylog._sqltext import StatementInfo, StatementKind, analyze, fingerprint

__all__ = [
    "AutoloadBatch",
    "CacheEvent",
    "CacheOutcome",
    "CallSite",
    "Capture",
    "Cohort",
    "LazyLoad",
    "NPlusOneSignal",
    "Observation",
    "QueryEvent",
    "QueryGroup",
    "QueryLog",
    "Registration",
    "SharedHooks",
    "Signal",
    "StatementInfo",
    "StatementKind",
    "acts_on_lazy_loads_only",
    "analyze",
    "capture",
    "cohort_of",
    "emit",
    "end_post_loads",
    "find_callsite",
    "fingerprint",
    "form_cohort",
    "join_runs_since",
    "keeping_runs",
    "lazy_load_executing",
    "lazy_load_of",
    "lazy_load_target",
    "lazy_loads_only",
    "listening",
    "note_post_load",
    "note_refresh",
    "note_refresh_load",
    "observe",
    "observe_signals",
    "post_loads_running",
    "query_run_of",
    "redact",
    "run_cohort",
    "run_mark",
    "runs_since",
    "share_new_run",
    "shared_cohort",
    "signals_wanted",
    "track_cohorts",
    "track_run_cohorts",
    "track_runs",
    "tracking_cohorts",
    "tracking_runs",
    "untrack_cohorts",
    "untrack_run_cohorts",
    "untrack_runs",
    "watch",
]
