"""The before/after table: one workload against every endpoint, naive vs tuned vs handwritten.

``make demo`` runs it on SQLite with the in-memory cache; ``--postgres URL --redis URL`` runs it
on PostgreSQL with Redis as the shared cache. It migrates and fills one database with the
deterministic generator, copies it for every run, runs the same seeded workload
(``marketplace.workload.plan``) through each mode's app in this process (an ASGI client: no
sockets, so the figures are the app's own time) in two passes of mirrored order (naive, tuned,
handwritten, then back), counts each request's queries with ``ormtune.capture()`` the same way
in every mode, checks that every run returned the same statuses and bodies (tokens and the
run's own timestamps aside), and prints a table per endpoint, also written to Markdown.

    PYTHONPATH=examples python -m marketplace.demo [--users 500] [--requests 360]
        [--postgres postgresql+asyncpg://postgres@127.0.0.1/postgres --redis redis://127.0.0.1]
        [--output bench/results/marketplace-demo.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

import ormtune
from marketplace.app import create_app
from marketplace.data import generate
from marketplace.db import upgrade
from marketplace.settings import Settings
from marketplace.workload import ENDPOINTS, Call, Catalog, catalog_from_database, plan
from ormtune.caching import active_cache

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence

__all__ = ["clear_redis", "main"]

Mode = Literal["naive", "tuned", "handwritten"]
MODES: tuple[Mode, ...] = ("naive", "tuned", "handwritten")
# Two passes in mirrored order (A B C C B A), each run on its own copy of the database, so a
# change in the machine's load during the demo weighs on every mode alike.
ORDER: tuple[tuple[Mode, int], ...] = (
    *((mode, 1) for mode in MODES),
    *((mode, 2) for mode in reversed(MODES)),
)
TOTAL = "all requests"
DEFAULT_OUTPUT = Path("bench/results/marketplace-demo.md")
VOLATILE_KEYS = frozenset({"access_token"})


K = TypeVar("K")  # what names a copy of the template database


@dataclass(slots=True)
class Sample:
    """One request's outcome in one mode."""

    status: int
    body: Any
    seconds: float
    queries: int
    hits: int
    misses: int


@dataclass(slots=True)
class ModeRun:
    mode: Mode
    samples: list[Sample] = field(default_factory=list)
    cpu_seconds: float = 0.0  # the process's CPU time over the requests (all threads)


# --- databases ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Databases:
    """One database URL per run (mode and pass; async driver), plus what to drop at the end."""

    urls: dict[tuple[Mode, int], str]
    cleanup: Any


def _sqlite_databases(workdir: Path, users: int, seed: int) -> tuple[Databases, Catalog]:
    template = workdir / "template.sqlite"
    url = f"sqlite+aiosqlite:///{template}"
    upgrade(url)
    generate(url, users=users, seed=seed)
    catalog = catalog_from_database(url)
    urls: dict[tuple[Mode, int], str] = {}
    for mode, number in ORDER:
        copy = workdir / f"{mode}-{number}.sqlite"
        shutil.copyfile(template, copy)
        urls[mode, number] = f"sqlite+aiosqlite:///{copy}"
    return Databases(urls, lambda: None), catalog


def postgres_copies(
    server_url: str, keys: Sequence[K], users: int, seed: int
) -> tuple[dict[K, str], Callable[[], None], Catalog]:
    """A template database migrated and filled once, then one copy per key (``CREATE
    DATABASE ... TEMPLATE``): the copies' URLs (async driver), what drops every one of them,
    and the template's catalog."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    admin_url = server.set(drivername="postgresql+psycopg", database="postgres")
    tag = f"mp_demo_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    names = {key: f"{tag}_{number}" for number, key in enumerate(keys)}
    template = f"{tag}_template"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")

    def drop_all() -> None:
        with admin.connect() as connection:
            for name in [*names.values(), template]:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{template}"'))
    try:
        template_url = server.set(drivername="postgresql+asyncpg", database=template)
        upgrade(template_url.render_as_string(hide_password=False))
        rendered = template_url.render_as_string(hide_password=False)
        generate(rendered, users=users, seed=seed)
        catalog = catalog_from_database(rendered)
        with admin.connect() as connection:
            for name in names.values():
                connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    except BaseException:
        drop_all()
        raise
    urls = {
        key: server.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False
        )
        for key, name in names.items()
    }
    return urls, drop_all, catalog


def _postgres_databases(server_url: str, users: int, seed: int) -> tuple[Databases, Catalog]:
    """One copy per run of a template database; every one is dropped at the end."""
    urls, drop_all, catalog = postgres_copies(server_url, ORDER, users, seed)
    return Databases(urls, drop_all), catalog


# --- progress ----------------------------------------------------------------------------


class Progress:
    """A dependency-free progress bar on stderr (a line per quarter when not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stderr.isatty()
        self._last_quarter = -1
        self._label = ""

    def label(self, text: str) -> None:
        self._label = text
        self._draw()

    def advance(self) -> None:
        self.done += 1
        self._draw()

    def _draw(self) -> None:
        fraction = self.done / self.total if self.total else 1.0
        if self.tty:
            width = 30
            filled = int(width * fraction)
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(f"\r[{bar}] {fraction:6.1%}  {self._label:<40}")
            sys.stderr.flush()
        else:
            quarter = int(fraction * 4)
            if quarter != self._last_quarter:
                self._last_quarter = quarter
                print(f"{fraction:6.1%}  {self._label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --- running one mode --------------------------------------------------------------------


@asynccontextmanager
async def _running(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app of ``settings`` with its lifespan entered, behind an in-process client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://marketplace") as client:
            yield client


def _cache_counts() -> tuple[int, int]:
    cache = active_cache()
    if cache is None:
        return 0, 0
    overall = cache.stats.overall
    return overall.hits, overall.misses


async def run_mode(settings: Settings, calls: Sequence[Call], progress: Progress) -> ModeRun:
    run = ModeRun(settings.mode)
    tokens: dict[int, str] = {}
    progress.label(f"{settings.mode}: starting")
    async with _running(settings) as client:
        progress.label(f"{settings.mode}: {len(calls)} requests")
        started = time.process_time()
        for call in calls:
            headers = {}
            if call.actor is not None and not call.is_login:
                headers["Authorization"] = f"Bearer {tokens[call.actor]}"
            hits, misses = _cache_counts()
            began = time.perf_counter()
            async with ormtune.capture() as log:
                response = await client.request(
                    call.method, call.path, json=call.body, headers=headers
                )
            seconds = time.perf_counter() - began
            after_hits, after_misses = _cache_counts()
            body = response.json() if response.content else None
            if call.is_login:
                if response.status_code != 200:
                    raise SystemExit(
                        f"demo: logging in user {call.actor} failed in {settings.mode} mode "
                        f"({response.status_code}: {response.text}); the generated data and the "
                        "workload disagree on credentials"
                    )
                assert call.actor is not None
                assert isinstance(body, dict)
                tokens[call.actor] = body["access_token"]
            run.samples.append(
                Sample(
                    response.status_code,
                    body,
                    seconds,
                    log.count,
                    after_hits - hits,
                    after_misses - misses,
                )
            )
            progress.advance()
        run.cpu_seconds = time.process_time() - started
    return run


# --- checking and reporting --------------------------------------------------------------


def _normalised(value: Any, since: datetime) -> Any:
    """``value`` with what legitimately differs between runs masked: tokens, and timestamps
    the run itself wrote (at or after ``since``)."""
    if isinstance(value, dict):
        return {
            key: "<token>" if key in VOLATILE_KEYS else _normalised(item, since)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_normalised(item, since) for item in value]
    if isinstance(value, str) and len(value) >= 19 and value[4:5] == "-" and value[10:11] == "T":
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if moment >= since:
            return "<written during the run>"
    return value


def differences(calls: Sequence[Call], runs: Sequence[ModeRun], since: datetime) -> list[str]:
    """One line per request whose status or body differs between modes."""
    reference = runs[0]
    found = []
    for index, call in enumerate(calls):
        expected = reference.samples[index]
        expected_body = _normalised(expected.body, since)
        for run in runs[1:]:
            sample = run.samples[index]
            body = _normalised(sample.body, since)
            if sample.status != expected.status or body != expected_body:
                found.append(
                    f"request {index} {call.method} {call.path} as user {call.actor}: "
                    f"{reference.mode} returned {expected.status} "
                    f"{json.dumps(expected_body, sort_keys=True)[:300]}, {run.mode} returned "
                    f"{sample.status} {json.dumps(body, sort_keys=True)[:300]}"
                )
    return found


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(frozen=True, slots=True)
class Row:
    endpoint: str
    mode: Mode
    requests: int
    queries: float
    median: float
    p99: float
    speedup: float
    hit_rate: float | None


def rows(calls: Sequence[Call], runs: dict[Mode, list[ModeRun]]) -> list[Row]:
    """Per endpoint (then over all requests), one row per mode over both of its passes.

    Speed-up is naive's median over the mode's median; on the "all requests" row it is
    naive's total time over the mode's total time.
    """
    by_endpoint: dict[str, list[int]] = {}
    for index, call in enumerate(calls):
        by_endpoint.setdefault(call.endpoint, []).append(index)
    result = []
    for endpoint in [e for e in ENDPOINTS if e in by_endpoint] + [TOTAL]:
        indexes = by_endpoint.get(endpoint, range(len(calls)))
        baseline: float | None = None
        for mode in MODES:
            samples = [run.samples[i] for run in runs[mode] for i in indexes]
            times = [sample.seconds for sample in samples]
            central = sum(times) if endpoint == TOTAL else statistics.median(times)
            if baseline is None:
                baseline = central
            lookups = sum(sample.hits + sample.misses for sample in samples)
            hits = sum(sample.hits for sample in samples)
            result.append(
                Row(
                    endpoint,
                    mode,
                    len(samples),
                    sum(sample.queries for sample in samples) / len(samples),
                    statistics.median(times),
                    _percentile(times, 0.99),
                    baseline / central if central else 0.0,
                    hits / lookups if lookups else None,
                )
            )
    return result


def _cells(row: Row) -> list[str]:
    return [
        row.mode,
        f"{row.queries:.1f}",
        f"{row.median * 1000:.2f} ms",
        f"{row.p99 * 1000:.2f} ms",
        f"{row.speedup:.1f}x",
        "-" if row.hit_rate is None else f"{row.hit_rate:.0%}",
    ]


HEADER = ["mode", "queries/req", "median", "p99", "speed-up", "cache hits"]


def text_table(table: Sequence[Row]) -> str:
    lines = []
    widths = [12, 11, 10, 10, 8, 10]
    current = None
    for row in table:
        if row.endpoint != current:
            current = row.endpoint
            lines.append("")
            lines.append(f"{row.endpoint}  ({row.requests} requests per mode)")
            lines.append(
                "  "
                + "  ".join(
                    h.ljust(w) if i == 0 else h.rjust(w)
                    for i, (h, w) in enumerate(zip(HEADER, widths, strict=True))
                )
            )
        cells = _cells(row)
        lines.append(
            "  "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    return "\n".join(lines)


def markdown_table(table: Sequence[Row]) -> str:
    lines = [
        "| endpoint | requests | " + " | ".join(HEADER) + " |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        endpoint = f"**{row.endpoint}**" if row.endpoint == TOTAL else f"`{row.endpoint}`"
        lines.append(f"| {endpoint} | {row.requests} | " + " | ".join(_cells(row)) + " |")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


@contextmanager
def _databases(args: argparse.Namespace) -> Iterator[tuple[Databases, Catalog]]:
    if args.postgres:
        databases, catalog = _postgres_databases(args.postgres, args.users, args.seed)
        try:
            yield databases, catalog
        finally:
            databases.cleanup()
    else:
        with tempfile.TemporaryDirectory(prefix="marketplace-demo-") as workdir:
            yield _sqlite_databases(Path(workdir), args.users, args.seed)


def clear_redis(url: str, prefix: str) -> None:
    """Delete the Redis keys of every cache prefix that starts with ``prefix`` (a run's cache
    entries and versions: ``RedisBackend`` names them ``{cache_prefix}:...``)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{{{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m marketplace.demo",
        description="Run one workload against every endpoint in the naive, tuned and "
        "handwritten modes and print the before/after table.",
    )
    parser.add_argument("--users", type=int, default=500, help="generated users (default 500)")
    parser.add_argument(
        "--requests", type=int, default=360, help="workload requests per pass (default 360)"
    )
    parser.add_argument("--seed", type=int, default=0, help="data and workload seed")
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL server URL (any driver)")
    parser.add_argument("--redis", metavar="URL", help="Redis URL for the tuned mode's cache")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"Markdown file (default {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args(argv)
    if bool(args.postgres) != bool(args.redis):
        parser.error("--postgres and --redis go together (PostgreSQL with the Redis cache)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    backend = "PostgreSQL + Redis" if args.postgres else "SQLite + in-memory cache"
    print(
        f"marketplace demo on {backend}: {args.users} users, {args.requests} workload requests "
        "per run (plus logins), six runs",
        file=sys.stderr,
    )
    began = time.perf_counter()
    since = datetime.now(UTC) - timedelta(seconds=1)
    prefix = f"mp-demo-{os.getpid()}-{uuid.uuid4().hex[:6]}:"
    with _databases(args) as (databases, catalog):
        calls = plan(catalog, requests=args.requests, seed=args.seed)
        progress = Progress(len(calls) * len(ORDER))
        passes = []
        try:
            for mode, number in ORDER:
                settings = Settings(
                    mode=mode,
                    database_url=databases.urls[mode, number],
                    redis_url=args.redis if mode == "tuned" else None,
                    cache_prefix=f"{prefix}{number}:",
                )
                passes.append(asyncio.run(run_mode(settings, calls, progress)))
        finally:
            progress.close()
            if args.redis:
                clear_redis(args.redis, prefix)
    problems = differences(calls, passes, since)
    if problems:
        print(
            f"\nFAILED: the modes returned different responses to {len(problems)} request(s):",
            file=sys.stderr,
        )
        for line in problems[:10]:
            print("  " + line, file=sys.stderr)
        return 1
    statuses = Counter(sample.status for sample in passes[0].samples)
    if any(status >= 500 for status in statuses):
        print(f"\nFAILED: server errors in every mode: {dict(statuses)}", file=sys.stderr)
        return 1
    runs: dict[Mode, list[ModeRun]] = {mode: [] for mode in MODES}
    for run in passes:
        runs[run.mode].append(run)
    table = rows(calls, runs)
    summary_line = (
        f"{len(calls)} requests per mode and pass, two passes "
        f"(status codes: {', '.join(f'{n}x {s}' for s, n in sorted(statuses.items()))}); "
        "responses identical in all three modes. Time in requests (wall / CPU): "
        + ", ".join(
            f"{mode} {sum(sample.seconds for run in runs[mode] for sample in run.samples):.1f} s"
            f" / {sum(run.cpu_seconds for run in runs[mode]):.1f} s"
            for mode in MODES
        )
        + f". Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs."
    )
    print(text_table(table))
    print()
    print(summary_line)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        f"# Marketplace demo: naive vs tuned vs handwritten\n\n"
        f"{backend}; {args.users} generated users; seed {args.seed}; "
        f"ormtune {ormtune.__version__}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n"
        f"Latency is in-process (ASGI client, no sockets); queries counted with "
        f"`ormtune.capture()` around each request. Speed-up is naive's median over the "
        f"mode's median (all requests: total time); cache hits are the tuned mode's query "
        f"cache hits over its lookups.\n\n"
        f"{markdown_table(table)}\n\n{summary_line}\n"
    )
    print(f"table written to {args.output} (took {time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
