"""What every benchmark here shares: a scratch database, interleaved timing, tables.

The machine is shared and noisy, so variants are never timed one after the other: each round
runs every variant once, in an order that rotates from round to round, and the report uses
medians over rounds.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import platform
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import sqlalchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from multiprocessing.connection import Connection

    from sqlalchemy.engine import URL

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def scratch_postgres(url: str, prefix: str) -> Iterator[URL]:
    """A new, empty PostgreSQL database for the benchmark, dropped afterwards."""
    admin_url = make_url(url)
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin_url.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def interleaved(
    variants: Mapping[str, Callable[[], object]], rounds: int, *, warmup: bool = True
) -> dict[str, list[float]]:
    """Seconds per call of each variant, one call per round, in a rotating order."""
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - started)
    return times


def _worker(factory: Callable[[], Callable[[], object]], conn: Connection, warmup: int) -> None:
    run = factory()
    for _ in range(warmup):
        run()
    while conn.recv():
        started, started_cpu = time.perf_counter(), time.process_time()
        run()
        conn.send((time.perf_counter() - started, time.process_time() - started_cpu))
    conn.close()


def interleaved_processes(
    factories: Mapping[str, Callable[[], Callable[[], object]]], rounds: int, *, warmup: int = 3
) -> dict[str, list[float]]:
    """Like :func:`interleaved`, but each variant lives in a process of its own, set up once by
    its factory (as an application sets itself up once at start-up) and then asked for one
    timed run at a time, in a rotating order; only one variant runs at any moment."""
    timed = interleaved_processes_with_cpu(factories, rounds, warmup=warmup)
    return {name: [wall for wall, _ in runs] for name, runs in timed.items()}


def interleaved_processes_with_cpu(
    factories: Mapping[str, Callable[[], Callable[[], object]]], rounds: int, *, warmup: int = 3
) -> dict[str, list[tuple[float, float]]]:
    """:func:`interleaved_processes`, giving each run's wall time and its process's CPU time."""
    context = multiprocessing.get_context("fork")
    names = list(factories)
    workers = {}
    for name in names:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(factories[name], child, warmup))
        process.start()
        workers[name] = (process, parent)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    try:
        for round_number in range(rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                _, conn = workers[name]
                conn.send(True)
                times[name].append(conn.recv())
    finally:
        for process, conn in workers.values():
            conn.send(False)
            process.join(timeout=30)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    )


def environment(extra: Mapping[str, str] | None = None) -> str:
    """One line describing where and how the figures were made."""
    parts = [
        datetime.date.today().isoformat(),
        f"Python {platform.python_version()}",
        f"SQLAlchemy {sqlalchemy.__version__}",
        *(f"{key} {value}" for key, value in (extra or {}).items()),
    ]
    return ", ".join(parts)


def command_line() -> str:
    """The command that made the figures, as someone at the repository root would type it."""
    return shlex.join([os.path.relpath(sys.executable), *sys.argv])


def print_report(
    headers: Sequence[str], rows: Sequence[Sequence[object]], extra: Mapping[str, str]
) -> None:
    """The table as text and as Markdown, then where and how it was made."""
    print(text_table(headers, rows))
    print()
    print(markdown_table(headers, rows))
    print()
    print(environment(extra))
    print(f"command: {command_line()}")


def callgrind_instructions(argv: Sequence[str]) -> int:
    """The instructions ``valgrind --tool=callgrind`` counts for one run of ``argv``, with
    ``PYTHONHASHSEED=0`` and, where ``setarch`` is installed, address randomisation off: object
    ids (and so the layout of every dictionary keyed by them) then repeat from run to run, and
    so does the count of one configuration. Different configurations (other code imported,
    other objects made) still lay memory out differently, which moves counts by a few percent
    between them."""
    setarch = shutil.which("setarch")
    no_aslr = [setarch, platform.machine(), "-R"] if setarch else []
    done = subprocess.run(
        [*no_aslr, "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    match = re.search(r"refs:\s+([\d,]+)", done.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{done.stderr}")
    return int(match.group(1).replace(",", ""))


def callgrind_per_run(script: str, stage: str, users: int, small: int, large: int) -> float:
    """The instructions of one run of ``script --inner STAGE --users N --runs R``: the count at
    ``large`` runs less the count at ``small``, over the difference, so start-up cancels out."""

    def count(runs: int) -> int:
        argv = [sys.executable, script, "--inner", stage, "--users", str(users)]
        return callgrind_instructions([*argv, "--runs", str(runs)])

    return (count(large) - count(small)) / (large - small)


def callgrind_main(
    script: str,
    labels: dict[str, str],
    inner: Callable[[str, int, int], None],
    *,
    option: str,
    base: str,
    headers: Sequence[str],
    users: int,
    small: int,
    large: int,
    argv: Sequence[str] | None = None,
) -> None:
    """The command line of a callgrind benchmark: ``--users``, ``--small``, ``--large`` and
    ``--OPTION`` (comma-separated keys of ``labels``). Run as ``--inner KEY --runs R`` (by
    :func:`callgrind_per_run`) it calls ``inner(key, users, runs)``; otherwise it prints the
    instructions per run of each key asked for, against ``base``, under ``headers``."""
    import argparse

    summary = (sys.modules["__main__"].__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(description=summary)
    parser.add_argument("--users", type=int, default=users)
    parser.add_argument("--small", type=int, default=small)
    parser.add_argument("--large", type=int, default=large)
    parser.add_argument(f"--{option}", default=",".join(labels), help="comma-separated")
    parser.add_argument("--inner", choices=labels, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        inner(args.inner, args.users, args.runs)
        return
    per_run = {
        key: callgrind_per_run(script, key, args.users, args.small, args.large)
        for key in getattr(args, option).split(",")
    }
    extra = {"users": str(args.users), "runs": f"{args.small}/{args.large}"}
    print_report(list(headers), against(per_run, labels, base), extra)


def against(per_run: dict[str, float], labels: dict[str, str], base: str) -> list[list[str]]:
    """Table rows: each stage's label, count, and difference and ratio against ``base``."""
    reference = per_run.get(base)
    return [
        [
            labels[stage],
            f"{count:,.0f}",
            "" if reference is None else f"{count - reference:+,.0f}",
            "" if reference is None else f"{count / reference:.3f}",
        ]
        for stage, count in per_run.items()
    ]
