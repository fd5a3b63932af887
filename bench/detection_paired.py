"""N+1 detection on against off, paired within one process: its overhead without the spread
between processes.

``autoload.py``'s detection table runs "on" and "off" in processes of their own; identical
processes there differ from one another by 3-33% on this shared machine (its "spread of off
processes" column), as much as the 10% target itself, so one run can miss or meet it by chance.
This benchmark takes the difference between processes out: the same naive loop (``autoload.py``'s,
on PostgreSQL) runs in one process as a sequence of pairs, ``--runs`` runs with detection off
and ``--runs`` runs with it on (``install("log")``, each run in a ``detect("log")`` block, then
``uninstall()``), the two halves of a pair in alternating order, and each pair gives one ratio.
The report is the median ratio over all pairs of ``--processes`` processes, run one after
another, with its quartiles.

Its resolution is measured the same way: an A/A control pairs "off" with "off" (the same
sequence, no detection in either half), so its ratios show how far a pair strays by chance.
"Off" after an ``uninstall()`` is SQLAlchemy with no ormtune listener left; what remains is its
``_has_events`` flag on the dialect, an empty listener list checked per statement.

    .venv-bench/bin/python bench/detection_paired.py
    .venv-bench/bin/python bench/detection_paired.py --sizes 10,100,1000 --pairs 10
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).parent))

import _harness
from autoload import STRATEGIES, TARGET_DETECTION, naive_loop, quiet_findings, seed

from ormtune.nplusone import detect, install, uninstall

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

    from autoload import Strategy
    from sqlalchemy.engine import URL


def _timed(run: Callable[[], object], times: int) -> float:
    started = time.perf_counter()
    for _ in range(times):
        run()
    return (time.perf_counter() - started) / times


def _pairs(
    url: URL, users: int, strategy: Strategy, pairs: int, runs: int, control: bool
) -> list[float]:
    """In this process: ``pairs`` ratios, on/off (or off/off for the control)."""
    engine = create_engine(url)

    def off() -> None:
        naive_loop(engine, users, strategy.options)

    def on() -> None:
        with detect("log"):
            naive_loop(engine, users, strategy.options)

    def half(detected: bool) -> float:
        if not detected:
            return _timed(off, runs)
        install("log")
        try:
            on()  # the first run after installing sets SQLAlchemy's dispatch up: not timed
            return _timed(on, runs)
        finally:
            uninstall()

    for _ in range(3):
        off()
    half(not control)  # warm detection's own code and caches
    ratios = []
    for pair in range(pairs):
        if pair % 2:
            second, first = half(False), half(not control)
        else:
            first, second = half(not control), half(False)
        ratios.append(first / second)
    engine.dispose()
    return ratios


def _process(
    conn: Connection, url: URL, users: int, strategy: Strategy, pairs: int, runs: int, control: bool
) -> None:
    conn.send(_pairs(url, users, strategy, pairs, runs, control))
    conn.close()


def paired(
    url: URL, users: int, strategy: Strategy, args: argparse.Namespace, *, control: bool
) -> list[float]:
    """Every pair's ratio, from ``args.processes`` processes run one after another."""
    context = multiprocessing.get_context("fork")
    ratios: list[float] = []
    for _ in range(args.processes):
        parent, child = context.Pipe()
        process = context.Process(
            target=_process, args=(child, url, users, strategy, args.pairs, args.runs, control)
        )
        process.start()
        ratios += parent.recv()
        process.join()
    return ratios


def _runs_for(users: int) -> int:
    # 10 runs per half at N = 10 (about 50 ms), one at N = 100 and more.
    return max(1, 100 // users)


def main() -> None:
    quiet_findings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=_harness.DEFAULT_POSTGRES)
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--pairs", type=int, default=30, help="pairs per process")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--runs", type=int, help="runs per half (default: about 50 ms of loop)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    headers = [
        "N users",
        "loop",
        "pairs",
        "on/off (median)",
        "quartiles",
        "A/A off/off (median)",
        "A/A quartiles",
    ]
    rows: list[list[object]] = []
    verdicts = []
    with _harness.scratch_postgres(args.postgres, "ormtune_bench_detection") as url:
        engine = create_engine(url)
        seed(engine, max(sizes))
        engine.dispose()  # no pooled connection crosses into the worker processes
        for users in sizes:
            worst = 0.0
            for strategy in STRATEGIES[:2]:  # plain lazy (N+1s found) and selectinload (none)
                given = args.runs
                args.runs = given or _runs_for(users)
                ratios = paired(url, users, strategy, args, control=False)
                control = paired(url, users, strategy, args, control=True)
                args.runs = given
                quartiles = statistics.quantiles(ratios, n=4)
                control_quartiles = statistics.quantiles(control, n=4)
                median = statistics.median(ratios)
                worst = max(worst, median)
                rows.append(
                    [
                        users,
                        strategy.name,
                        len(ratios),
                        f"{median:.3f}",
                        f"{quartiles[0]:.3f}-{quartiles[2]:.3f}",
                        f"{statistics.median(control):.3f}",
                        f"{control_quartiles[0]:.3f}-{control_quartiles[2]:.3f}",
                    ]
                )
            verdicts.append(
                f"detection at N={users}, paired: worst median on/off {worst:.3f} "
                f"({'ok' if worst <= TARGET_DETECTION else 'MISSED'}: at most {TARGET_DETECTION})"
            )
    print(_harness.text_table(headers, rows))
    print()
    print("\n".join(verdicts))
    environment = _harness.environment(
        {"pairs per process": str(args.pairs), "processes": str(args.processes)}
    )
    print(f"\n{environment}\ncommand: {_harness.command_line()}")
    print()
    print(_harness.markdown_table(headers, rows))


if __name__ == "__main__":
    main()
