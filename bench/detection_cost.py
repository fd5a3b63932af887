"""Where N+1 detection's cost goes, in CPU instructions counted by callgrind.

The timed benchmarks (``autoload.py``'s second table, ``detection_cpu.py``) say how much
detection costs; on a shared machine they scatter by several percent from run to run. This one
counts instead, stage by stage, so that a change to one stage shows up exactly: the naive loop
of ``autoload.py`` at N users on in-memory SQLite, run under ``valgrind --tool=callgrind`` with
a small and a large number of runs, with the cyclic garbage collector off; the difference
divided by the difference in runs is the instructions of one run, free of start-up. The stages
add one mechanism at a time:

* ``off``: no ormtune;
* ``cohorts``: :func:`ormtune.querylog.track_cohorts` alone (a ``load`` event per object;
  what autoload and unused-eager detection track, and detection alone did before it kept
  SQLAlchemy's per-query run ids instead);
* ``do_orm_execute``: a ``do_orm_execute`` listener on ``Session`` that returns at once (what
  detection installed before it watched statements instead; kept for comparison);
* ``+ invoke_statement``: the same listener running each lazy load itself, as detection did;
* ``statement hooks``: ormtune's statement hooks with an observer that does nothing;
* ``all hooks``: what detection installs, with no detection logic (the floor): query runs
  (:func:`ormtune.querylog.track_runs`, a ``refresh`` listener) and a statement watcher
  (:func:`ormtune.querylog.watch`) that asks each statement whether it is a lazy load and
  returns a token, so that it is called after the statement too;
* ``installed``: ``ormtune.nplusone.install("log")`` (N+1 findings, no repeated queries);
* ``detect() block``: installed, and each run in a ``detect("log")`` block (the benchmark's
  "detect on": repeated queries too, and the block's start and end).

    .venv-bench/bin/python bench/detection_cost.py      # needs valgrind
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).parent))

import _harness
from autoload import naive_loop, quiet_findings, seed

from ormtune.nplusone import detect, install
from ormtune.querylog import (
    QueryEvent,
    StatementInfo,
    lazy_load_executing,
    observe,
    track_cohorts,
    track_runs,
    watch,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import ExecutionContext, Result
    from sqlalchemy.orm import ORMExecuteState

STAGES = {
    "off": "off",
    "cohorts": "cohorts",
    "do_orm_execute": "do_orm_execute (returns at once)",
    "invoke": "+ invoke_statement for lazy loads",
    "engine": "statement hooks + no-op observer",
    "hooks": "all hooks, no detection logic",
    "installed": 'install("log")',
    "block": 'install("log") + detect("log") block',
}


class _Nothing:
    def on_query(self, event: QueryEvent, /) -> None:
        return


class _AskOnly:
    def before_statement(self, context: ExecutionContext, /) -> object | None:
        return lazy_load_executing(context) or self

    def after_statement(self, token: object, statement: StatementInfo, /) -> None:
        return


def _return_at_once(orm_execute_state: ORMExecuteState) -> None:
    return None


def _invoke_lazy_loads(orm_execute_state: ORMExecuteState) -> Result[Any] | None:
    if orm_execute_state.is_select and orm_execute_state.lazy_loaded_from is not None:
        return orm_execute_state.invoke_statement()
    return None


def _set_up(stage: str) -> bool:
    """Install what ``stage`` measures; whether each run is a detect() block."""
    if stage == "cohorts":
        track_cohorts()
    if stage == "hooks":
        track_runs()
    if stage == "do_orm_execute":
        event.listen(Session, "do_orm_execute", _return_at_once)
    if stage == "invoke":
        event.listen(Session, "do_orm_execute", _invoke_lazy_loads)
    if stage == "engine":
        observe(_Nothing())
    if stage == "hooks":
        watch(_AskOnly())
    if stage in ("installed", "block"):
        install("log")
    return stage == "block"


def _inner(stage: str, users: int, runs: int) -> None:
    quiet_findings()
    engine = create_engine("sqlite://")
    seed(engine, 100)
    block = _set_up(stage)
    for _ in range(3):  # warm SQLAlchemy's caches
        naive_loop(engine, users, ())
    # Without the cyclic collector: when its passes fall depends on every allocation since
    # start-up, which moves the counts by more than a stage adds (its own cost is not shown).
    gc.collect()
    gc.disable()
    for _ in range(runs):
        if block:
            with detect("log"):
                naive_loop(engine, users, ())
        else:
            naive_loop(engine, users, ())


def main(argv: Sequence[str] | None = None) -> None:
    _harness.callgrind_main(
        __file__,
        STAGES,
        _inner,
        option="stages",
        base="off",
        headers=["stage", "instructions/run", "added", "ratio"],
        users=10,
        small=5,
        large=25,
        argv=argv,
    )


if __name__ == "__main__":
    main()
