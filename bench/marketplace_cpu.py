"""CPU per read request of the marketplace, naive against tuned, on PostgreSQL + Redis.

The load test (``bench/load/``) measures server CPU per request over a whole mix under
locust; this benchmark isolates it per read endpoint, in process and without sockets. Each
mode runs in a worker process of its own (``ormtune.install()`` is process-wide), the app
driven straight through ASGI (no HTTP client: a scope, a body, the response messages), with
the load test's settings (pool of 5 + 5, tuned: autoload, the query cache on Redis, metrics and
the middleware). A worker logs the workload's users in, sends the read requests of
``marketplace.workload.plan`` (writes left out, so a tuned worker's cache is warm after its
first pass) ``--warmup`` times unmeasured, then ``--passes`` times measured, and reports each
request's CPU time (``time.process_time``) per endpoint. Workers alternate between the modes
(naive, tuned, tuned, naive, ...), each on its own copy of one generated database; the report
gives per endpoint the median over every measured request of every worker of that mode.

A last, unmeasured pass counts each request's SQL statements (``ormtune.capture()``) and, in
tuned mode, Redis round trips (a pipeline counts once); the table shows them per endpoint,
with the user and system CPU per request from ``getrusage``.

``--profile FILE`` instead runs one worker of ``--mode`` under cProfile with a CPU clock
(measured passes only; greenlet switches blur its call tree) and writes the stats to FILE;
``--workers 0 --spy FILE`` runs one under ``py-spy record --gil`` (``pip install py-spy``
into ``.venv-bench``) and writes collapsed stacks.

    .venv-bench/bin/python bench/marketplace_cpu.py [--users 2000] [--workers 4]
        [--passes 3] [--postgres URL] [--redis URL] [--profile FILE | --spy FILE] [--mode M]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from marketplace.demo import clear_redis, postgres_copies
from marketplace.workload import READS, Call, plan

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


# --- the worker ----------------------------------------------------------------------------


async def _request(app: Any, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
    """One request straight through the ASGI app: (status, body bytes)."""
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("marketplace", 80),
        "state": {},
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # never: the app reads the body once
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    from marketplace.app import create_app
    from marketplace.settings import Settings

    calls = [Call(**c) for c in json.loads(Path(args.calls).read_text())]
    settings = Settings(
        mode=args.mode,
        database_url=args.database,
        redis_url=args.redis if args.mode == "tuned" else None,
        cache_prefix=args.prefix,
        pool_size=5,
    )
    app = create_app(settings)
    cpu: dict[str, list[float]] = {}
    bodies: list[Any] = []
    profiler = None
    async with app.router.lifespan_context(app):
        tokens: dict[int, str] = {}
        reads = []
        for call in calls:
            if call.is_login:
                status, body = await _request(
                    app,
                    "POST",
                    call.path,
                    {"content-type": "application/json"},
                    json.dumps(call.body).encode(),
                )
                assert status == 200, (status, body)
                tokens[call.actor] = json.loads(body)["access_token"]  # type: ignore[index]
            else:
                reads.append(call)
        usage: list[float] = []
        for number in range(args.warmup + args.passes):
            measured = number >= args.warmup
            if number == args.warmup:
                begin = resource.getrusage(resource.RUSAGE_SELF)
            if measured and args.profile and profiler is None:
                import cProfile

                profiler = cProfile.Profile(time.process_time)  # CPU, not wall
                profiler.enable()
            for call in reads:
                headers = {"authorization": f"Bearer {tokens[call.actor]}"}  # type: ignore[index]
                started = time.process_time()
                status, body = await _request(app, call.method, call.path, headers, b"")
                spent = time.process_time() - started
                if measured:
                    cpu.setdefault(call.endpoint, []).append(spent)
                    if number == args.warmup:
                        bodies.append([status, json.loads(body) if body else None])
        end = resource.getrusage(resource.RUSAGE_SELF)
        usage = [
            end.ru_utime - begin.ru_utime,
            end.ru_stime - begin.ru_stime,
            args.passes * len(reads),
        ]
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        counts = await _count_pass(app, reads, tokens)
    return {"cpu": cpu, "bodies": bodies, "counts": counts, "usage": usage}


async def _count_pass(app: Any, reads: list[Call], tokens: dict[int, str]) -> dict[str, Any]:
    """One more, unmeasured pass that counts each request's SQL statements (ormtune.capture)
    and Redis round trips (counting wrappers on the asyncio client: a command, or a whole
    pipeline)."""
    import redis.asyncio
    import redis.asyncio.client

    import ormtune

    commands = [0]
    original: Any = redis.asyncio.Redis.execute_command
    original_pipeline: Any = redis.asyncio.client.Pipeline.execute

    async def counting(self: Any, *args: Any, **options: Any) -> Any:
        commands[0] += 1
        return await original(self, *args, **options)

    async def counting_pipeline(self: Any, *args: Any, **options: Any) -> Any:
        commands[0] += 1
        return await original_pipeline(self, *args, **options)

    redis.asyncio.Redis.execute_command = counting  # type: ignore[method-assign]
    redis.asyncio.client.Pipeline.execute = counting_pipeline  # type: ignore[method-assign]
    totals: dict[str, list[int]] = {}
    try:
        for call in reads:
            headers = {"authorization": f"Bearer {tokens[call.actor]}"}  # type: ignore[index]
            before = commands[0]
            async with ormtune.capture() as log:
                await _request(app, call.method, call.path, headers, b"")
            total = totals.setdefault(call.endpoint, [0, 0, 0])
            total[0] += 1
            total[1] += log.count
            total[2] += commands[0] - before
    finally:
        redis.asyncio.Redis.execute_command = original  # type: ignore[method-assign]
        redis.asyncio.client.Pipeline.execute = original_pipeline  # type: ignore[method-assign]
    return totals


# --- the driver ----------------------------------------------------------------------------


def _run_worker(
    args: argparse.Namespace,
    mode: str,
    database: str,
    calls: Path,
    out: Path,
    prefix: str,
    profile: str | None = None,
) -> dict[str, Any]:
    spy = (
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--gil",
            "-r",
            "400",
            "-f",
            "raw",
            "-o",
            args.spy,
            "--",
        ]
        if args.spy and profile is None and args.workers == 0
        else []
    )
    command = [
        *spy,
        sys.executable,
        __file__,
        "--worker",
        "--mode",
        mode,
        "--database",
        database,
        "--redis",
        args.redis,
        "--prefix",
        prefix,
        "--calls",
        str(calls),
        "--warmup",
        str(args.warmup),
        "--passes",
        str(args.passes),
        "--out",
        str(out),
    ]
    if profile:
        command += ["--profile", profile]
    subprocess.run(command, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=600, help="plan() size (reads kept)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes per mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--redis", default=DEFAULT_REDIS)
    parser.add_argument("--profile", help="cProfile one worker of --mode into this file")
    parser.add_argument("--mode", default="tuned", choices=("naive", "tuned"))
    parser.add_argument(
        "--spy",
        help="with --workers 0: one worker of --mode under py-spy "
        "(collapsed stacks into this file)",
    )
    # worker side
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--calls", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = asyncio.run(_worker(args))
        Path(args.out).write_text(json.dumps(result))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="marketplace-cpu-"))
    modes = ("naive", "tuned")
    print(f"generating {args.users} users ...", file=sys.stderr)
    urls, drop_all, catalog = postgres_copies(args.postgres, modes, args.users, seed=0)
    prefix = f"mp-cpu-{os.getpid()}-{uuid.uuid4().hex[:6]}:"
    try:
        calls = [
            c
            for c in plan(catalog, requests=args.requests, seed=0)
            if c.is_login or c.endpoint in READS
        ]
        calls_file = workdir / "calls.json"
        calls_file.write_text(
            json.dumps(
                [
                    {"endpoint": c.endpoint, "path": c.path, "actor": c.actor, "body": c.body}
                    for c in calls
                ]
            )
        )
        if args.spy:
            _run_worker(
                args, args.mode, urls[args.mode], calls_file, workdir / "p.json", f"{prefix}p:"
            )
            print(f"stacks written to {args.spy}", file=sys.stderr)
            return 0
        if args.profile:
            _run_worker(
                args,
                args.mode,
                urls[args.mode],
                calls_file,
                workdir / "p.json",
                f"{prefix}p:",
                args.profile,
            )
            print(f"profile written to {args.profile}", file=sys.stderr)
            return 0
        cpu: dict[str, dict[str, list[float]]] = {mode: {} for mode in modes}
        reference: list[Any] | None = None
        counted: dict[str, dict[str, list[int]]] = {}
        usage: dict[str, list[float]] = {mode: [0.0, 0.0, 0] for mode in modes}
        for number in range(args.workers):
            order = modes if number % 2 == 0 else tuple(reversed(modes))
            for mode in order:
                result = _run_worker(
                    args,
                    mode,
                    urls[mode],
                    calls_file,
                    workdir / f"{mode}-{number}.json",
                    f"{prefix}{number}:",
                )
                for endpoint, values in result["cpu"].items():
                    cpu[mode].setdefault(endpoint, []).extend(values)
                counted[mode] = result["counts"]
                for i in range(3):
                    usage[mode][i] += result["usage"][i]
                if reference is None:
                    reference = result["bodies"]
                elif result["bodies"] != reference:
                    print(f"WARNING: {mode} worker {number} answered differently", file=sys.stderr)
                print(
                    f"  worker {number} {mode} done (load {os.getloadavg()[0]:.2f})",
                    file=sys.stderr,
                )
    finally:
        clear_redis(args.redis, prefix)
        drop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nCPU per request, µs (median over {args.workers} workers x {args.passes} passes; "
        f"load average {os.getloadavg()[0]:.2f})"
    )
    print(
        f"{'endpoint':<28} {'n':>5} {'naive':>8} {'tuned':>8} {'naive/tuned':>11}"
        "   SQL/req naive  SQL/req tuned  Redis/req tuned"
    )
    totals = dict.fromkeys(modes, 0.0)
    for endpoint in READS:
        values = {mode: cpu[mode].get(endpoint, []) for mode in modes}
        if not values["naive"]:
            continue
        medians = {mode: statistics.median(values[mode]) * 1e6 for mode in modes}
        for mode in modes:
            totals[mode] += sum(values[mode])
        print(
            f"{endpoint:<28} {len(values['naive']):>5} {medians['naive']:>8.0f} "
            f"{medians['tuned']:>8.0f} {medians['naive'] / medians['tuned']:>10.2f}x"
            f"   {counted['naive'][endpoint][1] / counted['naive'][endpoint][0]:>13.1f}"
            f"  {counted['tuned'][endpoint][1] / counted['tuned'][endpoint][0]:>13.1f}"
            f"  {counted['tuned'][endpoint][2] / counted['tuned'][endpoint][0]:>15.1f}"
        )
    for mode in modes:
        user, system, requests = usage[mode]
        print(
            f"{mode}: user {user / requests * 1e6:.0f} µs + system {system / requests * 1e6:.0f}"
            f" µs per request (getrusage over {requests} measured requests)"
        )
    n = sum(len(v) for v in cpu["naive"].values())
    print(
        f"{'all reads (mean)':<28} {n:>5} {totals['naive'] / n * 1e6:>8.0f} "
        f"{totals['tuned'] / n * 1e6:>8.0f} {totals['naive'] / totals['tuned']:>10.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
