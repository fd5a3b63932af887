"""What N+1 detection costs the process, without a database's noise: CPU time on SQLite.

The naive loop of bench/autoload.py at 100 users on in-memory SQLite, where the ORM's own work
is all the work (a loopback PostgreSQL adds round trips that dilute any client-side cost, and
wall time on a shared machine is noisy). Detection is installed once; each "on" run is one
``detect("log")`` block, each "off" run has no detection installed. Plain lazy loading (an N+1
to find) and selectinload (nothing to find); interleaved rounds, median process CPU time.

    .venv-bench/bin/python bench/detection_cpu.py
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine
from sqlalchemy.orm import selectinload

sys.path.insert(0, str(Path(__file__).parent))

import _harness
from autoload import User, naive_loop, seed

from ormtune.nplusone import detect, install, uninstall

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.orm.interfaces import ORMOption

USERS = 100
ROUNDS = 200


def main() -> None:
    quiet = logging.getLogger("ormtune.nplusone")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    engine = create_engine("sqlite://")
    seed(engine, USERS)

    def loop(options: tuple[ORMOption, ...], detected: bool) -> Callable[[], int]:
        def run() -> int:
            if not detected:
                return naive_loop(engine, USERS, options)
            with detect("log"):
                return naive_loop(engine, USERS, options)

        return run

    loops = {"plain lazy": (), "selectinload": (selectinload(User.payments),)}
    variants = {
        (name, detected): loop(options, detected)
        for name, options in loops.items()
        for detected in (False, True)
    }
    cpu: dict[tuple[str, bool], list[float]] = {key: [] for key in variants}
    keys = list(variants)
    for round_number in range(ROUNDS):
        shift = round_number % len(keys)
        for key in keys[shift:] + keys[:shift]:
            if key[1]:
                install("log")
            started = time.process_time()
            variants[key]()
            cpu[key].append(time.process_time() - started)
            if key[1]:
                uninstall()
    rows = []
    for name in loops:
        off = statistics.median(cpu[(name, False)])
        on = statistics.median(cpu[(name, True)])
        rows.append([name, f"{off * 1000:.2f}", f"{on * 1000:.2f}", f"{on / off:.3f}"])
    print(_harness.text_table(["loop", "detect off ms CPU", "detect on ms CPU", "on/off"], rows))
    print(f"\n{_harness.environment({'rounds': str(ROUNDS)})}\ncommand: {_harness.command_line()}")


if __name__ == "__main__":
    main()
