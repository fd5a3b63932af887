"""What N+1 detection costs the process, without a database's noise: CPU time on SQLite.

The naive loop of bench/autoload.py at 100 users on in-memory SQLite, where the ORM's own work
is all the work (a loopback PostgreSQL adds round trips that dilute any client-side cost, and
wall time on a shared machine is noisy). Each variant runs in a process of its own, set up once
as an application is: in the "on" processes detection is installed at start-up and each run is
one ``detect("log")`` block; the "off" processes never install it. Plain lazy loading (an N+1
to find) and selectinload (nothing to find); interleaved rounds, median process CPU time.
``--postgres URL`` (for example ``postgresql+psycopg://postgres@127.0.0.1/postgres``) runs the
same loop on a scratch PostgreSQL database instead and reports the median wall time next to the
CPU time.

    .venv-bench/bin/python bench/detection_cpu.py
    .venv-bench/bin/python bench/detection_cpu.py --postgres "$URL" --users 10
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import selectinload

sys.path.insert(0, str(Path(__file__).parent))

import _harness
from autoload import User, naive_loop, quiet_findings, seed

from ormtune.nplusone import detect, install

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy.engine import URL
    from sqlalchemy.orm.interfaces import ORMOption

USERS = 100
ROUNDS = 200


@contextlib.contextmanager
def _database(postgres: str | None) -> Iterator[str | URL]:
    if postgres is None:
        yield "sqlite://"
        return
    with _harness.scratch_postgres(postgres, "ormtune_bench_detection_cpu") as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: in-memory SQLite)")
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    quiet_findings()
    with _database(args.postgres) as url:
        engine = create_engine(url)
        seed(engine, args.users)
        if args.postgres is not None:
            engine.dispose()  # no pooled connection crosses into the worker processes
        # In-memory SQLite lives in this process's engine: the forked workers inherit it.
        measure(engine, args.users, args.rounds, wall=args.postgres is not None)
        engine.dispose()


def _factory(
    engine: Engine, users: int, options: tuple[ORMOption, ...], detected: bool
) -> Callable[[], Callable[[], int]]:
    def factory() -> Callable[[], int]:
        if not detected:
            return lambda: naive_loop(engine, users, options)
        install("log")

        def run() -> int:
            with detect("log"):
                return naive_loop(engine, users, options)

        return run

    return factory


def measure(engine: Engine, users: int, rounds: int, *, wall: bool) -> None:
    loops = {"plain lazy": (), "selectinload": (selectinload(User.payments),)}
    factories = {
        f"{name}{' + detect' if detected else ''}": _factory(engine, users, options, detected)
        for name, options in loops.items()
        for detected in (False, True)
    }
    timed = _harness.interleaved_processes_with_cpu(factories, rounds)
    rows = []
    for name in loops:
        off, on = timed[name], timed[f"{name} + detect"]
        off_cpu = statistics.median(cpu for _, cpu in off)
        on_cpu = statistics.median(cpu for _, cpu in on)
        row = [name, f"{off_cpu * 1000:.2f}", f"{on_cpu * 1000:.2f}", f"{on_cpu / off_cpu:.3f}"]
        if wall:
            off_wall = statistics.median(elapsed for elapsed, _ in off)
            on_wall = statistics.median(elapsed for elapsed, _ in on)
            row += [f"{off_wall * 1000:.2f}", f"{on_wall * 1000:.2f}", f"{on_wall / off_wall:.3f}"]
        rows.append(row)
    headers = ["loop", "detect off ms CPU", "detect on ms CPU", "on/off"]
    if wall:
        headers += ["detect off ms wall", "detect on ms wall", "on/off"]
    print(_harness.text_table(headers, rows))
    extra = {"users": str(users), "rounds": str(rounds), "database": engine.dialect.name}
    print(f"\n{_harness.environment(extra)}\ncommand: {_harness.command_line()}")


if __name__ == "__main__":
    main()
