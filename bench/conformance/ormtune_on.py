"""A pytest plugin that turns ormtune on for a whole run of SQLAlchemy's own test suite.

Loaded with ``-p ormtune_on`` (this directory on ``PYTHONPATH``); ``ORMTUNE_VARIANT`` picks
what is on (docs/conformance.md):

* ``A``: ``ormtune.autoload()``, every ``lazy="select"`` relationship of every mapper
  (declarative and imperative alike);
* ``B``: ``ormtune.nplusone.install("log")`` (which keeps query runs, not cohorts);
* ``C``: both.

Some of SQLAlchemy's fixtures (``RemoveORMEventsGlobally``, ``teardown_events``) remove every
ORM event listener after a test, ormtune's included; before each test the plugin puts back
whichever of ormtune's listeners are missing, in their original order. Two diagnostics:
``ORMTUNE_COUNT=1`` prints how many lazy loads autoload saw, found eligible and batched;
``ORMTUNE_RELAX=1`` turns SQLAlchemy's SQL assertions (statement counts, ``CompiledSQL``)
into no-ops, so that a test which differs only in its SQL goes on to check its objects.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper, Session

import ormtune
from ormtune import nplusone
from ormtune.batchload import _autoload
from ormtune.querylog import _capture, _cohorts, _run_cohorts

if TYPE_CHECKING:
    from sqlalchemy.orm import ORMExecuteState

VARIANTS = ("A", "B", "C")
_variant = os.environ.get("ORMTUNE_VARIANT", "")
_counts: Counter[str] = Counter()
_reinstalled = 0


def _autoloading() -> bool:
    return _variant in ("A", "C")


def _detecting() -> bool:
    return _variant in ("B", "C")


def pytest_configure(config: pytest.Config) -> None:
    if _variant not in VARIANTS:
        raise pytest.UsageError(f"ORMTUNE_VARIANT must be one of {VARIANTS}, not {_variant!r}")
    if _autoloading():
        ormtune.autoload()  # for the whole run
    if _detecting():
        nplusone.install("log")
    if os.environ.get("ORMTUNE_COUNT"):
        _count_batches()
    if os.environ.get("ORMTUNE_RELAX"):
        from sqlalchemy.testing import assertsql

        def no_sql_assertions(self: object, *rules: object) -> None:
            return None

        assertsql.SQLAsserter.assert_ = no_sql_assertions  # type: ignore[method-assign]


def pytest_report_header(config: pytest.Config) -> str:
    return f"ormtune_on: variant {_variant}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Put back whichever of ormtune's listeners SQLAlchemy's fixtures removed."""
    global _reinstalled
    missing = False
    refresh_listeners = []
    if _autoloading():
        refresh_listeners += [_cohorts._seal_refresh, _run_cohorts._note_populated]
    if _detecting():
        refresh_listeners += [_cohorts._seal_refresh]
    for listener in refresh_listeners:
        if not event.contains(Mapper, "refresh", listener):
            event.listen(Mapper, "refresh", listener, raw=True)
            missing = True
    if _autoloading() and not event.contains(Session, "do_orm_execute", _autoload._on_orm_execute):
        event.listen(Session, "do_orm_execute", _autoload._on_orm_execute, retval=True)
        missing = True
    if _detecting():
        for name, engine_listener in _capture._LISTENERS:
            if not event.contains(Engine, name, engine_listener):
                event.listen(Engine, name, engine_listener)
                missing = True
    _reinstalled += missing


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"ormtune_on: listeners put back before {_reinstalled} tests")
    if os.environ.get("ORMTUNE_COUNT"):
        terminalreporter.write_line(f"ormtune_on: autoload {dict(_counts)}")


def _count_batches() -> None:
    namespace = vars(_autoload)  # the hook looks both up there, at each lazy load
    settings_for = namespace["_settings_for"]
    batch_load = namespace["batch_load"]

    def counted_settings_for(orm_state: ORMExecuteState) -> Any:
        found = settings_for(orm_state)
        _counts["lazy loads seen"] += 1
        _counts["eligible" if found else "not eligible"] += 1
        return found

    def counted_batch_load(*args: Any, **kwargs: Any) -> Any:
        result = batch_load(*args, **kwargs)
        _counts["batched" if result is not None else "left to the lazy load"] += 1
        return result

    namespace["_settings_for"] = counted_settings_for
    namespace["batch_load"] = counted_batch_load
