"""How much slower does an ORM workload run inside ``ormtune.capture()``?

The same workload (primary-key selects, then individual inserts) runs plain and under
``capture()`` with call-sites off and on, on SQLite and PostgreSQL. Every variant is warmed up
once, then measured for several rounds; inside each round the variants run in a rotating order
so that drift on a shared, noisy machine spreads evenly over them. The report gives the median
and minimum wall time per variant, the ratio of medians capture/plain, and the overhead per
statement.

Run from the repository root::

    .venv/bin/python bench/capture_overhead.py
    .venv/bin/python bench/capture_overhead.py --quick --backends sqlite

PostgreSQL is reached at ``--postgres`` (trust authentication); the benchmark creates a scratch
database there and drops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import os
import platform
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy
from sqlalchemy import Integer, String, create_engine, delete, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

import ormtune
from ormtune.querylog import listening

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import FrameType

    from sqlalchemy.engine import URL, Engine

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SEED_ROWS = 1_000  # rows the primary-key selects cycle through
QUICK = {"selects": 500, "inserts": 50, "rounds": 2}
TARGET = 1.05  # the goal for PostgreSQL with call-sites off


class Base(DeclarativeBase):
    pass


class Item(Base):
    """Read by the primary-key selects; seeded once, never modified."""

    __tablename__ = "bench_item"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    price: Mapped[int] = mapped_column(Integer)


class Entry(Base):
    """Written by the inserts; emptied before every run."""

    __tablename__ = "bench_entry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(50))
    value: Mapped[int] = mapped_column(Integer)


# --------------------------------------------------------------------------- the workload


def workload(engine: Engine, selects: int, inserts: int) -> int:
    """Run ``selects`` primary-key selects and ``inserts`` single-row inserts.

    Every select goes to the database: ``session.execute(select(...))`` always runs its
    statement (the identity map only answers ``session.get``). Every insert is flushed on its
    own, so it is exactly one INSERT statement; the inserts commit once at the end. Returns a
    checksum of what was read and written, so the plain runs are checked too.
    """
    checksum = 0
    with Session(engine) as session:
        for i in range(selects):
            item_id = i % SEED_ROWS + 1
            item = session.execute(select(Item).where(Item.id == item_id)).scalar_one()
            checksum += item.id
        session.commit()
        session.expunge_all()
        for i in range(inserts):
            entry = Entry(name=f"entry {i}", value=i)
            session.add(entry)
            session.flush()
            checksum += entry.value
        session.commit()
    return checksum


def expected_checksum(selects: int, inserts: int) -> int:
    return sum(i % SEED_ROWS + 1 for i in range(selects)) + sum(range(inserts))


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    name: str
    capture: bool
    callsites: bool = False


VARIANTS = (
    Variant("plain", capture=False),
    Variant("capture (call-sites off)", capture=True, callsites=False),
    Variant("capture (call-sites on)", capture=True, callsites=True),
)


@dataclass
class Backend:
    name: str
    engine: Engine
    reset: Callable[[], None]
    times: dict[str, list[float]] = field(default_factory=dict)  # wall-clock seconds
    cpu: dict[str, list[float]] = field(default_factory=dict)  # this process's CPU seconds
    version: str = ""


def run_once(backend: Backend, variant: Variant, selects: int, inserts: int) -> tuple[float, float]:
    """One timed run of the workload: (wall-clock, CPU) seconds. Checks the workload's result
    and, under capture, the log: a capture that misses statements fails the benchmark."""
    backend.reset()
    gc.collect()
    expected = expected_checksum(selects, inserts)
    if variant.capture:
        started, cpu_started = time.perf_counter(), time.process_time()
        with ormtune.capture(callsites=variant.callsites) as log:
            checksum = workload(backend.engine, selects, inserts)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        statements = selects + inserts
        if len(log) != statements:
            raise AssertionError(
                f"{backend.name}/{variant.name}: the capture recorded {len(log)} statements, "
                f"expected {statements}"
            )
        if variant.callsites:
            first = log[0].callsite
            if first is None or first.function != "workload":
                raise AssertionError(f"{backend.name}/{variant.name}: call-site {first}")
        elif log[0].callsite is not None:
            raise AssertionError(f"{backend.name}/{variant.name}: unexpected call-site")
        del log
    else:
        if listening():
            raise AssertionError("ormtune's engine listeners are installed during a plain run")
        started, cpu_started = time.perf_counter(), time.process_time()
        checksum = workload(backend.engine, selects, inserts)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    if checksum != expected:
        raise AssertionError(f"{backend.name}/{variant.name}: checksum {checksum} != {expected}")
    return elapsed, cpu


# --------------------------------------------------------------------------- backends


def prepare(engine: Engine) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(Item),
            [{"id": i, "name": f"item {i}", "price": i * 7} for i in range(1, SEED_ROWS + 1)],
        )


def sqlite_backend(directory: str) -> Backend:
    engine = create_engine(f"sqlite:///{os.path.join(directory, 'bench.sqlite3')}")
    prepare(engine)

    def reset() -> None:
        # INTEGER PRIMARY KEY without AUTOINCREMENT: ids restart at 1 in an empty table.
        with engine.begin() as conn:
            conn.execute(delete(Entry))

    with engine.connect() as conn:
        version = conn.exec_driver_sql("select sqlite_version()").scalar_one()
    return Backend("sqlite", engine, reset, version=f"SQLite {version}")


@dataclass
class ScratchDatabase:
    """A PostgreSQL database created for this run and dropped at its end."""

    admin: Engine
    name: str

    @property
    def url(self) -> URL:
        return self.admin.url.set(database=self.name)

    def drop(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def create_scratch_database(url: str) -> ScratchDatabase:
    admin = create_engine(make_url(url), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"ormtune_bench_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return ScratchDatabase(admin, name)


def postgresql_backend(scratch: ScratchDatabase) -> Backend:
    engine = create_engine(scratch.url)
    prepare(engine)

    def reset() -> None:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {Entry.__tablename__} RESTART IDENTITY"))

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {Item.__tablename__}"))

    with engine.connect() as conn:
        version = conn.exec_driver_sql("show server_version").scalar_one()
    driver = engine.dialect.driver
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        driver += f" {importlib.metadata.version(driver)}"
    return Backend("postgresql", engine, reset, version=f"PostgreSQL {version} via {driver}")


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Row:
    backend: str
    variant: str
    median: float  # wall-clock seconds
    minimum: float
    cpu_median: float  # CPU seconds of this process (the benchmark client)
    # For the capture variants only:
    ratio: float | None = None  # median / median of plain
    paired: float | None = None  # median over rounds of (this run / plain run of that round)
    overhead_us: float | None = None  # (median - plain median) per statement, microseconds
    cpu_ratio: float | None = None
    cpu_overhead_us: float | None = None


def rows(backends: Sequence[Backend], statements: int) -> list[Row]:
    out: list[Row] = []
    for backend in backends:
        plain = backend.times[VARIANTS[0].name]
        plain_median = statistics.median(plain)
        plain_cpu = statistics.median(backend.cpu[VARIANTS[0].name])
        for variant in VARIANTS:
            times = backend.times[variant.name]
            median = statistics.median(times)
            cpu = statistics.median(backend.cpu[variant.name])
            row = Row(backend.name, variant.name, median, min(times), cpu)
            if variant is not VARIANTS[0]:
                row = replace(
                    row,
                    ratio=median / plain_median,
                    paired=statistics.median(t / p for t, p in zip(times, plain, strict=True)),
                    overhead_us=(median - plain_median) / statements * 1e6,
                    cpu_ratio=cpu / plain_cpu,
                    cpu_overhead_us=(cpu - plain_cpu) / statements * 1e6,
                )
            out.append(row)
    return out


HEADERS = (
    "backend",
    "variant",
    "median s",
    "min s",
    "ratio",
    "paired ratio",
    "Δ µs/stmt",
    "CPU median s",
    "CPU ratio",
    "CPU Δ µs/stmt",
)
LEGEND = (
    "median s, min s: wall-clock seconds per run. ratio: median / plain median (the headline "
    "figure). paired ratio: median over rounds of run / plain run of the same round. "
    "Δ µs/stmt: (median - plain median) / statements. CPU columns: the same from the "
    "benchmark process's CPU time (time.process_time), which the database server's work "
    "and most of the machine's noise do not enter."
)


def cells(row: Row) -> tuple[str, ...]:
    def opt(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    return (
        row.backend,
        row.variant,
        f"{row.median:.3f}",
        f"{row.minimum:.3f}",
        opt(row.ratio, ".3f"),
        opt(row.paired, ".3f"),
        opt(row.overhead_us, "+.1f"),
        f"{row.cpu_median:.3f}",
        opt(row.cpu_ratio, ".3f"),
        opt(row.cpu_overhead_us, "+.1f"),
    )


def text_table(table: Sequence[Row]) -> str:
    lines = [HEADERS, *(cells(row) for row in table)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    numeric = range(2, len(HEADERS))
    out = []
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                for i, cell in enumerate(line)
            ).rstrip()
        )
        if n == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def markdown_table(table: Sequence[Row]) -> str:
    align = ["---", "---", *["---:"] * (len(HEADERS) - 2)]
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(cells(row)) + " |" for row in table),
    ]
    return "\n".join(lines)


def revision() -> str:
    """The git commit of this checkout, marked when src/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        clean = subprocess.run(
            ["git", "diff-index", "--quiet", "HEAD", "--", "src"], cwd=root, check=False
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit if clean.returncode == 0 else f"{commit} with local changes in src/"


def load_average() -> str:
    """The machine's 1-minute load average: how much else was running (Unix only)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "unknown"


def command_line() -> str:
    executable = sys.executable
    cwd = os.getcwd() + os.sep
    if executable.startswith(cwd):
        executable = executable[len(cwd) :]
    return shlex.join([executable, *sys.argv])


# --------------------------------------------------------------------------- main


def rotations(rounds: int) -> Iterator[tuple[int, tuple[Variant, ...]]]:
    """Each round's order of the variants: plain first, then capture first, and so on."""
    for r in range(rounds):
        k = r % len(VARIANTS)
        yield r, VARIANTS[k:] + VARIANTS[:k]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Overhead of ormtune.capture() on an ORM workload (plain vs capture).",
    )
    parser.add_argument("--selects", type=int, default=20_000, help="primary-key selects per run")
    parser.add_argument("--inserts", type=int, default=2_000, help="single-row inserts per run")
    parser.add_argument("--rounds", type=int, default=7, help="measured runs of each variant")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK['selects']} selects, {QUICK['inserts']} inserts, "
        f"{QUICK['rounds']} rounds",
    )
    parser.add_argument(
        "--backends",
        default="sqlite,postgresql",
        help="comma-separated: sqlite, postgresql (default: both)",
    )
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        metavar="URL",
        help=f"PostgreSQL server to create a scratch database on (default: {DEFAULT_POSTGRES})",
    )
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the table here")
    args = parser.parse_args(argv)
    if args.quick:
        args.selects, args.inserts, args.rounds = (
            QUICK["selects"],
            QUICK["inserts"],
            QUICK["rounds"],
        )
    args.backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = set(args.backends) - {"sqlite", "postgresql"}
    if unknown or not args.backends:
        parser.error(f"unknown backends: {', '.join(sorted(unknown)) or '(none given)'}")
    if args.selects < 1 or args.inserts < 1 or args.rounds < 1:
        parser.error("--selects, --inserts and --rounds must be at least 1")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind, so the scratch database is dropped


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    statements = args.selects + args.inserts
    print(f"command: {command_line()}")
    print(
        f"workload: {args.selects:,} primary-key selects + {args.inserts:,} single-row inserts "
        f"({statements:,} statements) per run; {args.rounds} rounds after 1 warm-up run"
    )
    started_at = datetime.datetime.now().astimezone()
    load_before = load_average()
    backends: list[Backend] = []
    scratch: ScratchDatabase | None = None
    with tempfile.TemporaryDirectory(prefix="ormtune-bench-") as directory:
        try:
            for name in args.backends:
                if name == "sqlite":
                    backends.append(sqlite_backend(directory))
                else:
                    scratch = create_scratch_database(args.postgres)
                    print(f"scratch database: {scratch.name}")
                    backends.append(postgresql_backend(scratch))
            versions = ", ".join(
                [
                    f"Python {platform.python_version()}",
                    f"SQLAlchemy {sqlalchemy.__version__}",
                    f"ormtune {ormtune.__version__} (git {revision()})",
                    *(backend.version for backend in backends),
                    f"{os.cpu_count()} CPUs",
                ]
            )
            print(f"versions: {versions}")

            for backend in backends:
                for variant in VARIANTS:
                    elapsed, cpu = run_once(backend, variant, args.selects, args.inserts)
                    print(
                        f"warm-up   {backend.name:<10} {variant.name:<26} "
                        f"{elapsed:8.3f} s  (CPU {cpu:.3f} s)",
                        flush=True,
                    )
                    backend.times[variant.name] = []
                    backend.cpu[variant.name] = []
            for r, order in rotations(args.rounds):
                for backend in backends:
                    for variant in order:
                        elapsed, cpu = run_once(backend, variant, args.selects, args.inserts)
                        backend.times[variant.name].append(elapsed)
                        backend.cpu[variant.name].append(cpu)
                        print(
                            f"round {r + 1:<3} {backend.name:<10} {variant.name:<26} "
                            f"{elapsed:8.3f} s  (CPU {cpu:.3f} s)",
                            flush=True,
                        )
        finally:
            for backend in backends:
                backend.engine.dispose()
            if scratch is not None:
                scratch.drop()

    table = rows(backends, statements)
    finished_at = datetime.datetime.now().astimezone()
    load = f"load average (1 min) {load_before} at the start, {load_average()} at the end"
    print()
    print(text_table(table))
    print(f"\n{LEGEND}")
    print(f"\n{load}")
    for row in table:
        if row.backend == "postgresql" and row.variant == VARIANTS[1].name:
            assert row.ratio is not None
            verdict = "met" if row.ratio <= TARGET else "NOT met"
            print(
                f"\ntarget (PostgreSQL, call-sites off, ratio of medians <= {TARGET}): "
                f"{verdict} ({row.ratio:.3f})"
            )
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(
            "\n".join(
                [
                    f"Command: `{command_line()}`",
                    "",
                    f"Run: {started_at:%Y-%m-%d %H:%M %Z} to {finished_at:%H:%M %Z}; {versions}; "
                    f"{load}.",
                    "",
                    f"Workload per run: {args.selects:,} primary-key selects + "
                    f"{args.inserts:,} single-row inserts ({statements:,} statements); "
                    f"{args.rounds} rounds after 1 warm-up run per variant.",
                    "",
                    markdown_table(table),
                    "",
                    LEGEND,
                    "",
                ]
            ),
            encoding="utf-8",
        )
        print(f"\nwrote {args.markdown}")


if __name__ == "__main__":
    main()
