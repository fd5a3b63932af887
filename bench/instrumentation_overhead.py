"""Requests per second of a Starlette endpoint running 5 queries on PostgreSQL, with and without
ormtune's instrumentation (middleware + metrics + JSON logging at INFO).

Four uvicorn servers run side by side, each in a process of its own and set up once as an
application is: plain; with only ormtune's statement hooks and an observer that does nothing
(the floor any per-statement hook pays); with the least of the same signals written by hand
without ormtune (``by_hand``: statement timing, request metrics and one JSON line per request
with SQLAlchemy's events, prometheus_client and ``logging``); and fully instrumented. A load
generator on loopback (asyncio, HTTP/1.1 keep-alive, ``--concurrency`` connections) drives one
server at a time for ``--seconds``, in an order that rotates every round; the report gives
medians over rounds, ratios to plain, and each server's own CPU time per request (from /proc),
which the load generator's and PostgreSQL's share of the two cores does not enter. Every
response is checked (status 200, the 5 rows' checksum), and at the end the instrumented
server's own request counter and log must cover every request it answered, so a broken
instrumentation cannot pass as a fast one.

Target (issue 6): instrumented / plain requests per second >= 0.95.

    .venv-bench/bin/python bench/instrumentation_overhead.py            # 6 rounds of 6 s each
    .venv-bench/bin/python bench/instrumentation_overhead.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    DEFAULT_POSTGRES,
    command_line,
    environment,
    markdown_table,
    median,
    scratch_postgres,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import Engine
    from starlette.requests import Request
    from starlette.responses import Response

VARIANTS = ("plain", "listeners", "by-hand", "by-hand-log", "by-hand-metrics", "instrumented")
DEFAULT_VARIANTS = "plain,listeners,by-hand,instrumented"
LABELS = {
    "plain": "plain",
    "listeners": "statement hooks + no-op observer",
    "by-hand": "the least of the same signals, by hand (no ormtune)",
    "by-hand-log": "by hand: only the JSON line per request",
    "by-hand-metrics": "by hand: only the request and statement metrics",
    "instrumented": "middleware + metrics + JSON logs (INFO)",
}
BY_HAND_PARTS = {
    "by-hand": frozenset({"metrics", "log"}),
    "by-hand-log": frozenset({"log"}),
    "by-hand-metrics": frozenset({"metrics"}),
}
ROWS = 1000
QUERIES = 5
EXPECTED = sum(range(1, 6)) * 2  # the checksum of the 5 rows each request reads (ids 1-5)


# -- the server -------------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int]


def serve(variant: str, port: int, url: str, log_path: str, workload: str) -> None:
    """Run the benchmark app (one variant, one workload) under uvicorn until terminated."""
    import uvicorn
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    engine = create_async_engine(url, pool_size=20, max_overflow=0)
    sessions = async_sessionmaker(engine)

    async def core(request: Request) -> Response:
        total = 0
        async with engine.connect() as conn:
            for key in range(1, QUERIES + 1):
                value = await conn.execute(
                    text("select id, value from bench_items where id = :id"), {"id": key}
                )
                total += value.one()[1]
        return PlainTextResponse(str(total))

    async def orm(request: Request) -> Response:
        total = 0
        async with sessions() as session:
            for key in range(1, QUERIES + 1):
                # select(), not session.get(): the identity map must not answer the 2nd time.
                found = await session.scalars(select(Item).where(Item.id == key))
                total += found.one().value
                session.expunge_all()
        return PlainTextResponse(str(total))

    item = orm if workload == "orm" else core

    routes: list[Route | Mount] = [Route("/items/{group}", item)]
    app: Any
    if variant == "plain":
        app = Starlette(routes=routes)
    elif variant == "listeners":
        from ormtune.querylog import QueryEvent, observe

        class Nothing:
            def on_query(self, event: QueryEvent) -> None:
                return

        # Only ormtune's statement hooks and an observer that does nothing: the price of
        # any per-statement hook.
        observe(Nothing(), engine)
        app = Starlette(routes=routes)
    elif variant in BY_HAND_PARTS:
        app = by_hand(
            Starlette(routes=routes),
            engine.sync_engine,
            f"{log_path}.{variant}",
            BY_HAND_PARTS[variant],
        )
    else:
        from ormtune.instrumentation import JsonFormatter, OrmtuneMiddleware, instrument
        from ormtune.instrumentation import metrics_app as make_metrics_app

        instrumentation = instrument(engine, slow_query_threshold=0.5)
        routes.append(Mount("/metrics", make_metrics_app()))
        starlette = Starlette(routes=routes)
        starlette.add_middleware(OrmtuneMiddleware, metrics=instrumentation.metrics)
        app = starlette
        handler = logging.FileHandler(log_path)
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger("ormtune")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def by_hand(app: Any, engine: Engine, log_path: str, parts: frozenset[str]) -> Any:
    """The least of what issue 6 asks for, written by hand in the usual way with the usual
    tools and no ormtune: SQLAlchemy's ``before/after_cursor_execute`` timing each statement
    into a prometheus_client histogram by operation, a pure ASGI middleware counting and timing
    requests by route, method and status class, a queries-per-request histogram, and one JSON
    line per request through ``logging``. No request id, response headers, exemplars, table or
    database labels, pool metrics or slow-query log: a floor for the HTTP figure, not a peer.
    ``parts`` keeps the metrics, the log line, or both, to show what each costs alone."""
    import json
    from contextvars import ContextVar

    from prometheus_client import Counter, Histogram
    from sqlalchemy import event

    requests = Counter("byhand_http_requests", "Requests.", ["route", "method", "status"])
    durations = Histogram(
        "byhand_http_request_duration_seconds", "Request time.", ["route", "method", "status"]
    )
    per_request = Histogram(
        "byhand_db_queries_per_request",
        "Statements per request.",
        ["route"],
        buckets=(1, 2, 5, 10, 20, 50, 100),
    )
    statements = Histogram("byhand_db_query_duration_seconds", "Statement time.", ["operation"])
    tally: ContextVar[list[float] | None] = ContextVar("byhand_tally", default=None)

    def started(*args: Any) -> None:
        args[4].byhand_started = time.perf_counter()

    def finished(*args: Any) -> None:
        statement, context = args[2], args[4]
        elapsed = time.perf_counter() - context.byhand_started
        statements.labels(statement.split(None, 1)[0].lower()).observe(elapsed)
        counts = tally.get()
        if counts is not None:
            counts[0] += 1
            counts[1] += elapsed

    metrics = "metrics" in parts
    if metrics:
        event.listen(engine, "before_cursor_execute", started)
        event.listen(engine, "after_cursor_execute", finished)

    class JsonLines(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            fields = {"time": record.created, "level": record.levelname, "message": record.msg}
            return json.dumps({**fields, **record.__dict__["fields"]})

    logger = logging.getLogger("byhand.request")
    handler = logging.FileHandler(log_path)
    handler.setFormatter(JsonLines())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if "log" in parts else logging.WARNING)
    logger.propagate = False

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        counts = [0, 0.0]
        token = tally.set(counts)
        began = time.perf_counter()
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            tally.reset(token)
            elapsed = time.perf_counter() - began
            route = scope.get("route")
            template = route.path if route is not None else "unmatched"
            if metrics:
                labels = (template, scope["method"], f"{status // 100}xx")
                requests.labels(*labels).inc()
                durations.labels(*labels).observe(elapsed)
                per_request.labels(template).observe(counts[0])
            logger.info(
                "request",
                extra={
                    "fields": {
                        "route": template,
                        "method": scope["method"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "queries": counts[0],
                        "db_ms": round(counts[1] * 1000, 3),
                    }
                },
            )

    return middleware


# -- the load generator -----------------------------------------------------------------------

REQUEST = b"GET /items/%d HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n"
_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


async def _client(port: int, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.perf_counter() < deadline:
            writer.write(REQUEST % (done % 50))
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response: {head[:80]!r}")
            match = _LENGTH.search(head)
            if match is None:
                raise RuntimeError("response without Content-Length")
            body = await reader.readexactly(int(match.group(1)))
            if int(body) != EXPECTED:
                raise RuntimeError(f"wrong checksum {body!r}")
            done += 1
    finally:
        writer.close()
        await writer.wait_closed()
    counts.append(done)


async def _load(port: int, seconds: float, concurrency: int) -> int:
    counts: list[int] = []
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(_client(port, deadline, counts) for _ in range(concurrency)))
    return sum(counts)


def load(port: int, seconds: float, concurrency: int) -> tuple[float, int]:
    """Requests per second over ``seconds`` and the number of requests answered."""
    started = time.perf_counter()
    answered = asyncio.run(_load(port, seconds, concurrency))
    return answered / (time.perf_counter() - started), answered


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_up(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {process.returncode}")
        try:
            load(port, 0.05, 1)
            return
        except OSError:
            time.sleep(0.1)  # polling a server that is starting, with a deadline
    raise RuntimeError(f"the server on port {port} did not come up in {timeout} s")


def instrumented_count(port: int) -> float:
    """The instrumented server's own count of answered /items requests, from /metrics."""
    import httpx

    body = httpx.get(f"http://127.0.0.1:{port}/metrics/", timeout=10).text
    pattern = re.compile(
        r'^ormtune_http_server_request_duration_seconds_count\{[^}]*route="/items/\{group\}"'
        r"[^}]*\} (\S+)$",
        re.MULTILINE,
    )
    return sum(float(value) for value in pattern.findall(body))


# -- the run ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres", default=os.environ.get("ORMTUNE_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s: a smoke run")
    parser.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help="comma-separated servers to compare, plain always among them "
        f"(of: {', '.join(VARIANTS)})",
    )
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    parser.add_argument(
        "--workload",
        choices=("core", "orm"),
        default="core",
        help="core: 5 text() selects on one connection (the least work per query, so the "
        "worst case for relative overhead); orm: 5 select(Item) in an AsyncSession",
    )
    args = parser.parse_args(argv)
    args.variants = ["plain"] + [v for v in args.variants.split(",") if v and v != "plain"]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose among {', '.join(VARIANTS)}")
    if args.quick:
        args.rounds, args.seconds = 2, 2.0
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.url, args.log, args.workload)
        return
    with (
        scratch_postgres(args.postgres, "ormtune_bench_http") as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        setup = create_engine(url)
        with setup.begin() as conn:
            conn.execute(text("create table bench_items (id integer primary key, value integer)"))
            conn.execute(
                text("insert into bench_items select i, i * 2 from generate_series(1, :n) i"),
                {"n": ROWS},
            )
        setup.dispose()
        async_url = url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
        log_path = os.path.join(tmp, "requests.log")
        ports = {variant: 18651 + n for n, variant in enumerate(args.variants)}
        servers = {
            variant: subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve",
                    variant,
                    "--port",
                    str(port),
                    "--url",
                    async_url,
                    "--log",
                    log_path,
                    "--workload",
                    args.workload,
                ],
            )
            for variant, port in ports.items()
        }
        try:
            for variant, port in ports.items():
                wait_until_up(port, servers[variant])
                load(port, 1.0, args.concurrency)  # warm-up: connections, caches
            rates: dict[str, list[float]] = {variant: [] for variant in ports}
            cpu: dict[str, list[float]] = {variant: [] for variant in ports}
            answered = dict.fromkeys(ports, 0)
            names = list(ports)
            for round_number in range(args.rounds):
                shift = round_number % len(names)
                order = names[shift:] + names[:shift]
                for variant in order:
                    before = cpu_seconds(servers[variant].pid)
                    rate, count = load(ports[variant], args.seconds, args.concurrency)
                    used = cpu_seconds(servers[variant].pid) - before
                    rates[variant].append(rate)
                    cpu[variant].append(used / count * 1e6)
                    answered[variant] += count
                    print(
                        f"round {round_number + 1}: {variant:12} {rate:8.1f} req/s "
                        f"{cpu[variant][-1]:7.0f} server CPU us/request",
                        flush=True,
                    )
            # Each instrumented server's own count of what it answered (log lines, and the
            # request counter of ormtune's metrics): a broken server cannot pass as a fast one.
            counted: dict[str, tuple[float, int]] = {}
            for variant in ports:
                if variant == "instrumented":
                    with open(log_path) as log:
                        logged = sum(1 for line in log if '"/items/{group}"' in line)
                    counted[variant] = (instrumented_count(ports[variant]), logged)
                elif variant in BY_HAND_PARTS and "log" in BY_HAND_PARTS[variant]:
                    with open(f"{log_path}.{variant}") as log:
                        logged = sum(1 for line in log if '"/items/{group}"' in line)
                    counted[variant] = (float(logged), logged)
        finally:
            for server in servers.values():
                server.terminate()
                server.wait(30)
    plain, cpu_plain = median(rates["plain"]), median(cpu["plain"])
    rows = []
    for variant in args.variants:
        rate, used = median(rates[variant]), median(cpu[variant])
        paired = median([v / p for v, p in zip(rates[variant], rates["plain"], strict=True)])
        rows.append(
            [
                LABELS[variant],
                f"{rate:.1f}",
                f"{min(rates[variant]):.1f}",
                f"{max(rates[variant]):.1f}",
                f"{rate / plain:.3f}",
                f"{paired:.3f}",
                f"{used:.0f}",
                f"{used - cpu_plain:+.0f}",
            ]
        )
    print()
    print(f"Command: `{command_line()}`")
    settings = {
        "rounds": str(args.rounds),
        "seconds": str(args.seconds),
        "concurrency": str(args.concurrency),
        "workload": args.workload,
        "CPUs": str(os.cpu_count()),
    }
    print(f"({environment(settings)})")
    print()
    headers = ["variant", "median req/s", "min", "max", "ratio", "paired ratio"]
    headers += ["server CPU µs/request", "Δ CPU µs/request"]
    print(markdown_table(headers, rows))
    print()
    # The warm-up requests count too, so the servers' counts are at least what was timed.
    for variant, (own_count, lines) in counted.items():
        print(
            f"{variant} server counted {own_count:.0f} /items requests and logged {lines} lines; "
            f"{answered[variant]} were answered in timed rounds (plus warm-up)"
        )
        if own_count < answered[variant] or lines < answered[variant]:
            raise SystemExit(f"the {variant} server missed requests: its figures are not valid")
    if "instrumented" in rates:
        ratio = median(rates["instrumented"]) / plain
        print(f"target (ratio >= 0.95): {'met' if ratio >= 0.95 else 'MISSED'}")


if __name__ == "__main__":
    main()
