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
