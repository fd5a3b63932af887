"""Query capture: every SQL statement an application runs, with its fingerprint and cost.

``capture()`` records the statements of one block of code into a :class:`QueryLog`;
``observe()`` sends every statement in the process to a :class:`~ormtune.typing.QueryObserver`.
Both share one set of engine listeners, installed only while something listens.
"""

from ormtune.querylog._callsite import CallSite, find_callsite
from ormtune.querylog._capture import Capture, Observation, capture, listening, observe
from ormtune.querylog._cohorts import (
    Cohort,
    LazyLoad,
    cohort_of,
    lazy_load_of,
    track_cohorts,
    tracking_cohorts,
    untrack_cohorts,
)
from ormtune.querylog._event import QueryEvent, redact
from ormtune.querylog._lifecycle import Registration, SharedHooks
from ormtune.querylog._log import QueryGroup, QueryLog
from ormtune.querylog._sqltext import StatementInfo, StatementKind, analyze, fingerprint

__all__ = [
    "CallSite",
    "Capture",
    "Cohort",
    "LazyLoad",
    "Observation",
    "QueryEvent",
    "QueryGroup",
    "QueryLog",
    "Registration",
    "SharedHooks",
    "StatementInfo",
    "StatementKind",
    "analyze",
    "capture",
    "cohort_of",
    "find_callsite",
    "fingerprint",
    "lazy_load_of",
    "listening",
    "observe",
    "redact",
    "track_cohorts",
    "tracking_cohorts",
    "untrack_cohorts",
]
