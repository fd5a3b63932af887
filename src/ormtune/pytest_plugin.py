"""pytest plugin: query budgets and N+1 checks as fixtures, markers and an option.

* ``assert_max_queries`` fixture: ``with assert_max_queries(3): ...``
* ``assert_num_queries`` fixture: ``with assert_num_queries(3): ...`` (exactly three)
* ``@pytest.mark.max_queries(n)`` (or ``max_queries(n, exact=True)``): the test's body may run
  at most ``n`` statements; fixture set-up and tear-down are not counted.
* ``assert_no_nplusone`` fixture: ``with assert_no_nplusone(): ...`` fails at an N+1.
* ``@pytest.mark.nplusone`` (``nplusone("warn", allow=("User.*",), ...)``, the arguments of
  ``ormtune.nplusone.detect()``; mode ``"raise"`` unless the run sets another): the test's body
  is checked for N+1 and repeated queries.
* ``--ormtune-nplusone=raise|warn|log|off`` (or the ``ormtune_nplusone`` ini option): every
  test's body is checked; ``@pytest.mark.nplusone("off")`` exempts a test. Findings are listed
  at the end of the run.
* ``--ormtune-unused-eager`` (or ``ormtune_unused_eager = true``): the checks also report
  unused eager loads, as ``detect(unused_eager=True)`` does, when the test's body ends
  (``@pytest.mark.nplusone(unused_eager=...)`` decides for one test).

Cohort tracking is on for the whole test (set-up included) wherever N+1 checks apply, so
objects loaded by fixtures count. A marker with bad arguments stops the run at collection,
naming the test and the value.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import pytest

from ormtune.exceptions import OrmtuneError
from ormtune.nplusone import Detection, Finding
from ormtune.nplusone._settings import DEFAULT_REPEATED_THRESHOLD, MODES, Settings, settings
from ormtune.querylog import track_cohorts, track_runs, untrack_cohorts, untrack_runs
from ormtune.testing import assert_max_queries as _assert_max_queries
from ormtune.testing import assert_no_nplusone as _assert_no_nplusone
from ormtune.testing import assert_num_queries as _assert_num_queries
from ormtune.testing._budget import QueryBudget, check_count

if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from contextlib import AbstractContextManager

_MARKER = "max_queries"
_NPLUSONE = "nplusone"
_NPLUSONE_ARGS = (
    "mode",
    "allow",
    "allow_callsites",
    "repeated_threshold",
    "skip_modules",
    "unused_eager",
)
_INI = "ormtune_nplusone"
_INI_EAGER = "ormtune_unused_eager"

_suite_mode = pytest.StashKey[str]()
_suite_eager = pytest.StashKey[bool]()
_item_settings = pytest.StashKey[Settings | None]()
_findings = pytest.StashKey[list[tuple[str, list[Finding]]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ormtune")
    group.addoption(
        "--ormtune-nplusone",
        choices=MODES,
        default=None,
        dest="ormtune_nplusone",
        help="check every test's body for N+1 and repeated queries: raise (fail the test), "
        f"warn, log or off (default: the {_INI} ini option, else off)",
    )
    group.addoption(
        "--ormtune-unused-eager",
        action="store_true",
        default=None,
        dest="ormtune_unused_eager",
        help="N+1 checks also report relationships loaded eagerly and never read (default: "
        f"the {_INI_EAGER} ini option, else no)",
    )
    parser.addini(
        _INI, "N+1 checks for every test: off (default), log, warn or raise", default="off"
    )
    parser.addini(
        _INI_EAGER,
        "N+1 checks also report unused eager loads: true or false (default)",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(n, exact=False): fail the test if its body runs more than n SQL statements "
        "(exactly n with exact=True); from ormtune",
    )
    config.addinivalue_line(
        "markers",
        f"{_NPLUSONE}(mode='raise', allow=(), allow_callsites=(), repeated_threshold=5, "
        "unused_eager=False): check the test's body for N+1 and repeated queries (and unused "
        "eager loads), as ormtune.nplusone.detect() does; nplusone('off') exempts a test from "
        "--ormtune-nplusone; from ormtune",
    )
    mode = config.getoption("ormtune_nplusone") or config.getini(_INI)
    if mode not in MODES:
        choices = ", ".join(MODES)
        raise pytest.UsageError(
            f"the {_INI} ini option must be one of {choices}, but was given {mode!r}"
        )
    config.stash[_suite_mode] = mode
    eager = config.getoption("ormtune_unused_eager")
    config.stash[_suite_eager] = bool(config.getini(_INI_EAGER) if eager is None else eager)
    config.stash[_findings] = []


def _budget_of(item: pytest.Item) -> tuple[int, bool] | None:
    marker = item.get_closest_marker(_MARKER)
    if marker is None:
        return None
    unknown = set(marker.kwargs) - {"exact"}
    if len(marker.args) != 1 or unknown:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{_MARKER} takes one count and optionally exact=True, "
            f"as in @pytest.mark.{_MARKER}(3); got args={marker.args!r} kwargs={marker.kwargs!r}"
        )
    try:
        count = check_count(marker.args[0], f"@pytest.mark.{_MARKER} count")
    except (TypeError, OrmtuneError) as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
    return count, bool(marker.kwargs.get("exact", False))


def _nplusone_of(item: pytest.Item) -> Settings | None:
    """The N+1 settings for the test's body: its marker's over the run's; None when off."""
    suite = item.config.stash.get(_suite_mode, "off")
    eager = item.config.stash.get(_suite_eager, False)
    marker = item.get_closest_marker(_NPLUSONE)
    if marker is None:
        if suite == "off":
            return None
        return settings(
            suite,
            (),
            (),
            DEFAULT_REPEATED_THRESHOLD,
            (),
            caller=f"--ormtune-nplusone={suite}",
            unused_eager=eager,
        )
    arguments = dict(marker.kwargs)
    unknown = sorted(set(arguments) - set(_NPLUSONE_ARGS))
    if len(marker.args) > 1 or unknown or (marker.args and "mode" in arguments):
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{_NPLUSONE} takes a mode and the keyword arguments "
            f"{', '.join(_NPLUSONE_ARGS[1:])}, as in @pytest.mark.{_NPLUSONE}('raise', "
            f"allow=('User.posts',)); got args={marker.args!r} kwargs={marker.kwargs!r}"
        )
    if marker.args:
        arguments["mode"] = marker.args[0]
    try:
        found = settings(
            arguments.get("mode", "raise" if suite == "off" else suite),
            arguments.get("allow", ()),
            arguments.get("allow_callsites", ()),
            arguments.get("repeated_threshold", DEFAULT_REPEATED_THRESHOLD),
            arguments.get("skip_modules", ()),
            caller=f"@pytest.mark.{_NPLUSONE}",
            unused_eager=arguments.get("unused_eager", eager),
        )
    except (TypeError, OrmtuneError) as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
    return None if found.mode == "off" else found


def _settings_of(item: pytest.Item) -> Settings | None:
    if _item_settings not in item.stash:
        item.stash[_item_settings] = _nplusone_of(item)
    return item.stash[_item_settings]


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    for item in items:
        _budget_of(item)
        _settings_of(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    # Objects that fixtures load must be watched for the body's lazy loads to count (query runs)
    # and for its reads of their eager loads (cohorts).
    if _settings_of(item) is None:
        return (yield)
    track_runs()
    track_cohorts()
    try:
        return (yield)
    finally:
        untrack_cohorts()
        untrack_runs()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    __tracebackhide__ = True
    budget_spec = _budget_of(item)
    nplusone = _settings_of(item)
    if budget_spec is None and nplusone is None:
        return (yield)
    budget: AbstractContextManager[object] = nullcontext()
    if budget_spec is not None:
        count, exact = budget_spec
        budget = (_assert_num_queries if exact else _assert_max_queries)(count)
    detection = Detection(nplusone) if nplusone is not None else None
    try:
        with budget, detection or nullcontext():
            result = yield
    finally:
        if detection is not None and (found := detection.findings):
            item.config.stash[_findings].append((item.nodeid, found))
    return result


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """List the N+1 findings of every checked test, whatever the mode made of them."""
    records = config.stash.get(_findings, [])
    if not records:
        return
    terminalreporter.write_sep("=", "ormtune N+1 findings")
    total = 0
    for nodeid, findings in records:
        terminalreporter.write_line(nodeid)
        for finding in findings:
            total += 1
            for line in str(finding).splitlines():
                terminalreporter.write_line(f"  {line}")
    findings_noun = "finding" if total == 1 else "findings"
    tests_noun = "test" if len(records) == 1 else "tests"
    terminalreporter.write_line(f"{total} N+1 {findings_noun} in {len(records)} {tests_noun}")


@pytest.fixture
def assert_max_queries() -> Callable[..., QueryBudget]:
    """``with assert_max_queries(n[, engine, ...]):`` fails if the block runs more than ``n``
    statements, listing them with their call-sites."""
    return _assert_max_queries


@pytest.fixture
def assert_num_queries() -> Callable[..., QueryBudget]:
    """``with assert_num_queries(n[, engine, ...]):`` fails unless the block runs exactly ``n``
    statements."""
    return _assert_num_queries


@pytest.fixture
def assert_no_nplusone() -> Generator[Callable[..., Detection]]:
    """``with assert_no_nplusone(allow=(...)):`` fails the test at the second lazy load of an
    N+1 (and, at the end of the block, on repeated queries, and with ``unused_eager=True`` on
    unused eager loads). Query runs and cohorts are watched from this fixture's set-up, so
    objects loaded before the block count too."""
    track_runs()
    track_cohorts()
    try:
        yield _assert_no_nplusone
    finally:
        untrack_cohorts()
        untrack_runs()


__all__: list[str] = []
