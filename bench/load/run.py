"""The marketplace under load: locust (headless) against two uvicorn processes on PostgreSQL
and Redis, naive vs tuned, at stepped concurrency.

    make load                       # or, in .venv-bench with bench/load/requirements.txt:
    PYTHONPATH=examples python bench/load/run.py --steps 50,200,1000 --step-seconds 45

For each mode it copies a freshly generated database (``CREATE DATABASE ... TEMPLATE``), starts
two uvicorn processes on separate ports (one process each, sharing PostgreSQL and, in tuned
mode, Redis), and for each step runs locust with that many simulated users (the read-heavy mix
of marketplace.workload.Mix; bench/load/locustfile.py). Statistics are reset once every user
has spawned and logged in, so a step's figures cover its steady state. Per step it reports
throughput (all requests and the read endpoints alone), latency percentiles, errors, the cache
hit rate (ormtune's stats in each server), SQL statements per second (counted in each server by
one SQLAlchemy listener, identical in both modes), PostgreSQL transactions per second
(pg_stat_database), the consistency violations the workload found across the two servers,
and the load average. Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from marketplace.data import generate
from marketplace.db import upgrade
from marketplace.demo import clear_redis
from marketplace.workload import READS, catalog_from_database, catalog_to_dict

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True, slots=True)
class StepResult:
    mode: str
    mix: str
    users: int
    seconds: float
    requests: int
    failures: int
    rps: float
    read_rps: float
    p50: float
    p95: float
    p99: float
    read_p95: float
    served: int
    cpu_ms_per_request: float
    hit_rate: float | None
    statements_per_second: float
    transactions_per_second: float
    checks: int
    violations: int
    conflicts: int
    load: tuple[float, float, float]
    errors: dict[str, int]


def _get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _wait_healthy(base: str, process: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server for {base} exited with {process.returncode}")
        try:
            _get_json(f"{base}/healthz")
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{base}/healthz did not answer within {timeout:.0f} s")


@contextmanager
def servers(
    mode: str, database_url: str, redis_url: str, prefix: str, ports: Sequence[int], log: Path
) -> Iterator[list[str]]:
    """Two uvicorn processes (one each) serving the app in ``mode``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "examples"), str(HERE)]),
        "MARKETPLACE_MODE": mode,
        "MARKETPLACE_DATABASE_URL": database_url,
        "MARKETPLACE_REDIS_URL": redis_url if mode == "tuned" else "",
        "MARKETPLACE_CACHE_PREFIX": prefix,
    }
    processes = []
    bases = []
    try:
        for port in ports:
            command = [
                str(BIN / "python"), "-m", "uvicorn", "loadapp:app",
                "--host", "127.0.0.1", "--port", str(port),
                "--loop", "uvloop", "--http", "httptools",
                "--no-access-log", "--log-level", "warning",
            ]  # fmt: skip
            with log.open("ab") as output:
                processes.append(
                    subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
                )
            bases.append(f"http://127.0.0.1:{port}")
            PIDS[bases[-1]] = processes[-1].pid
        for base, process in zip(bases, processes, strict=True):
            _wait_healthy(base, process)
        yield bases
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# base URL -> the pid of the uvicorn process serving it
PIDS: dict[str, int] = {}


def _cpu_seconds(bases: Sequence[str]) -> float:
    """User + system CPU time the servers' processes have used (Linux /proc)."""
    total = 0
    for base in bases:
        fields = Path(f"/proc/{PIDS[base]}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _counters(bases: Sequence[str]) -> dict[str, int]:
    total = {"statements": 0, "cache_hits": 0, "cache_misses": 0, "requests": 0}
    for base in bases:
        # a saturated server answers it after the requests queued before it
        data = _get_json(f"{base}/_load/counters", timeout=300)
        for key in total:
            total[key] += int(data[key])
    return total


def _pg_stats(admin: Any, database: str) -> dict[str, int]:
    with admin.connect() as connection:
        row = connection.execute(
            text(
                "select xact_commit + xact_rollback as xacts, tup_returned, tup_fetched "
                "from pg_stat_database where datname = :name"
            ),
            {"name": database},
        ).one()
    return {"xacts": int(row.xacts), "tup_returned": int(row.tup_returned)}


def _read_stats(prefix: Path) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    with (prefix.parent / f"{prefix.name}_stats.csv").open() as file:
        stats = {row["Name"]: row for row in csv.DictReader(file)}
    errors: dict[str, int] = {}
    failures = prefix.parent / f"{prefix.name}_failures.csv"
    if failures.exists():
        with failures.open() as file:
            for row in csv.DictReader(file):
                key = f"{row['Method']} {row['Name']}: {row['Error'][:120]}"
                errors[key] = errors.get(key, 0) + int(row["Occurrences"])
    return stats, errors


def run_step(
    mode: str,
    users: int,
    seconds: int,
    bases: Sequence[str],
    catalog_file: Path,
    workdir: Path,
    admin: Any,
    database: str,
    wait: str,
    mix: str = "mixed",
) -> StepResult:
    name = f"{mode}-{users}" if mix == "mixed" else f"{mode}-{mix}-{users}-{time.time_ns()}"
    prefix = workdir / name
    report = workdir / f"{name}-consistency.json"
    spawn_rate = max(10, users // 10)
    command = [
        str(BIN / "locust"), "-f", str(HERE / "locustfile.py"), "--headless",
        "--users", str(users), "--spawn-rate", str(spawn_rate),
        "--run-time", f"{seconds + users // spawn_rate + 5}s", "--reset-stats",
        "--host", bases[0], "--csv", str(prefix), "--only-summary",
        "--stop-timeout", "10", "--exit-code-on-error", "0", "--loglevel", "WARNING",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "examples"),
        "LOAD_SERVERS": ",".join(bases),
        "LOAD_CATALOG": str(catalog_file),
        "LOAD_REPORT": str(report),
        "LOAD_WAIT": wait,
        "LOAD_MIX": mix,
    }
    # Counters are read when the ramp-up ends (when locust resets its statistics) and at the
    # end, so every figure covers the same steady-state window.
    log = workdir / f"{name}-locust.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        time.sleep(users / spawn_rate + 5)
        before, pg_before = _counters(bases), _pg_stats(admin, database)
        cpu_before, started = _cpu_seconds(bases), time.monotonic()
        load_samples = []
        while process.poll() is None:
            time.sleep(1)
            load_samples.append(os.getloadavg())
        # Read at once when locust ends: the servers' counters then cover the window (plus
        # what was still queued at its end, at the same rate, as the servers are saturated
        # or idle; the rate divides by the time between the two readings).
        after, pg_after = _counters(bases), _pg_stats(admin, database)
        cpu_after, ended = _cpu_seconds(bases), time.monotonic()
    if process.returncode != 0:
        raise SystemExit(f"locust failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    elapsed = ended - started
    stats, errors = _read_stats(prefix)
    total = stats["Aggregated"]
    reads = [row for name, row in stats.items() if name in READS]
    consistency = json.loads(report.read_text())
    lookups = (after["cache_hits"] - before["cache_hits"]) + (
        after["cache_misses"] - before["cache_misses"]
    )
    read_requests = sum(int(row["Request Count"]) for row in reads)
    read_p95 = _weighted_p95(reads)
    middle = load_samples[len(load_samples) // 2] if load_samples else os.getloadavg()
    return StepResult(
        mode=mode,
        mix=mix,
        users=users,
        seconds=elapsed,
        requests=int(total["Request Count"]),
        failures=int(total["Failure Count"]),
        rps=float(total["Requests/s"]),
        read_rps=sum(float(row["Requests/s"]) for row in reads) if read_requests else 0.0,
        p50=float(total["50%"]),
        p95=float(total["95%"]),
        p99=float(total["99%"]),
        read_p95=read_p95,
        served=after["requests"] - before["requests"],
        cpu_ms_per_request=1000
        * (cpu_after - cpu_before)
        / max(1, after["requests"] - before["requests"]),
        hit_rate=(after["cache_hits"] - before["cache_hits"]) / lookups if lookups else None,
        statements_per_second=(after["statements"] - before["statements"]) / elapsed,
        transactions_per_second=(pg_after["xacts"] - pg_before["xacts"]) / elapsed,
        checks=int(consistency["checks"]),
        violations=int(consistency["violations"]),
        conflicts=int(consistency["conflicts"]),
        load=middle,
        errors=errors,
    )


def _weighted_p95(rows: Sequence[dict[str, str]]) -> float:
    """An upper bound of the read endpoints' joint p95: the largest per-endpoint p95."""
    return max((float(row["95%"]) for row in rows if int(row["Request Count"])), default=0.0)


def table(results: Sequence[StepResult]) -> str:
    lines = [
        "| mode | users | requests | req/s | read req/s | p50 | p95 | p99 | errors "
        "| cache hit rate | SQL statements/s | PG xact/s | server CPU/request "
        "| stale reads (checks) | load avg (1 min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        hit = "-" if r.hit_rate is None else f"{r.hit_rate:.1%}"
        lines.append(
            f"| {r.mode} | {r.users:,} | {r.requests:,} | {r.rps:.0f} | {r.read_rps:.0f} "
            f"| {r.p50:.0f} ms | {r.p95:.0f} ms | {r.p99:.0f} ms | {r.failures} | {hit} "
            f"| {r.statements_per_second:,.0f} | {r.transactions_per_second:,.0f} "
            f"| {r.cpu_ms_per_request:.1f} ms "
            f"| {r.violations} ({r.checks}) | {r.load[0]:.1f} |"
        )
    return "\n".join(lines)


def capacity_table(results: Sequence[StepResult]) -> str:
    """The closed-loop rounds (no think time): each mix's throughput per mode, the median over
    rounds, and tuned against naive."""
    lines = [
        "| mix | mode | users | rounds | req/s (median) | req/s (each round) | p50 | p95 "
        "| errors | cache hit rate | server CPU/request | tuned / naive |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    medians: dict[tuple[str, str], float] = {}
    groups: dict[tuple[str, str], list[StepResult]] = {}
    for r in results:
        groups.setdefault((r.mix, r.mode), []).append(r)
    for (mix, mode), rounds in groups.items():
        medians[(mix, mode)] = statistics.median(r.rps for r in rounds)
    for (mix, mode), rounds in groups.items():
        rates = [r.rps for r in rounds]
        median = medians[(mix, mode)]
        naive = medians.get((mix, "naive"))
        ratio = f"{median / naive:.2f}x" if naive and mode != "naive" else "-"
        hits = [r.hit_rate for r in rounds if r.hit_rate is not None]
        hit = f"{statistics.median(hits):.1%}" if hits else "-"
        lines.append(
            f"| {mix} | {mode} | {rounds[0].users} | {len(rounds)} | {median:,.0f} "
            f"| {' / '.join(f'{rate:,.0f}' for rate in rates)} "
            f"| {statistics.median(r.p50 for r in rounds):.0f} ms "
            f"| {statistics.median(r.p95 for r in rounds):.0f} ms "
            f"| {sum(r.failures for r in rounds)} | {hit} "
            f"| {statistics.median(r.cpu_ms_per_request for r in rounds):.2f} ms | {ratio} |"
        )
    return "\n".join(lines)


def _prepare(server: URL, users: int, seed: int, template: str) -> dict[str, Any]:
    admin = create_engine(server.set(drivername="postgresql+psycopg", database="postgres"),
                          isolation_level="AUTOCOMMIT")  # fmt: skip
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{template}"'))
    admin.dispose()
    url = server.set(drivername="postgresql+asyncpg", database=template)
    rendered = url.render_as_string(hide_password=False)
    upgrade(rendered)
    generate(rendered, users=users, seed=seed)
    return catalog_to_dict(catalog_from_database(rendered))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--users", type=int, default=2000, help="generated marketplace users")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="naive,tuned")
    parser.add_argument("--steps", default="50,200,1000", help="simulated users per step")
    parser.add_argument("--step-seconds", type=int, default=45, help="steady state per step")
    parser.add_argument("--wait", default="0.5,1.5", help="think time per user, min,max s")
    parser.add_argument(
        "--capacity", type=int, default=0,
        help="after the steps, closed-loop rounds (no think time) with this many users",
    )  # fmt: skip
    parser.add_argument("--capacity-mixes", default="reads,ping", help="reads, writes, mixed, ping")
    parser.add_argument("--capacity-rounds", type=int, default=3)
    parser.add_argument("--capacity-seconds", type=int, default=20)
    parser.add_argument("--ports", default="8101,8102", help="the first mode's; +2 per mode")
    parser.add_argument("--output", type=Path, default=ROOT / "bench/results/load.md")
    args = parser.parse_args(argv)
    server = make_url(args.postgres)
    tag = f"mp_load_{uuid.uuid4().hex[:6]}"
    template = f"{tag}_template"
    ports = [int(port) for port in args.ports.split(",")]
    steps = [int(step) for step in args.steps.split(",") if step]
    results: list[StepResult] = []
    capacity: list[StepResult] = []
    admin = create_engine(server.set(drivername="postgresql+psycopg", database="postgres"),
                          isolation_level="AUTOCOMMIT")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="marketplace-load-") as directory:
        workdir = Path(directory)
        print(f"generating {args.users} users into {template}", file=sys.stderr)
        catalog_file = workdir / "catalog.json"
        catalog_file.write_text(json.dumps(_prepare(server, args.users, args.seed, template)))
        modes = args.modes.split(",")
        try:
            with contextlib.ExitStack() as stack:
                bases_of = {}
                for index, mode in enumerate(modes):
                    database = f"{tag}_{mode}"
                    with admin.connect() as connection:
                        connection.execute(
                            text(f'CREATE DATABASE "{database}" TEMPLATE "{template}"')
                        )
                    url = server.set(drivername="postgresql+asyncpg", database=database)
                    bases_of[mode] = stack.enter_context(
                        servers(
                            mode, url.render_as_string(hide_password=False), args.redis,
                            f"{tag}-{mode}", [port + 2 * index for port in ports],
                            workdir / f"servers-{mode}.log",
                        )
                    )  # fmt: skip
                # Modes alternate within each step, so a change in the machine's load during
                # the run weighs on both alike; the idle mode's servers wait meanwhile.
                for users in steps:
                    for mode in modes:
                        print(f"{mode}: {users} users for {args.step_seconds} s", file=sys.stderr)
                        result = run_step(
                            mode, users, args.step_seconds, bases_of[mode], catalog_file,
                            workdir, admin, f"{tag}_{mode}", args.wait,
                        )  # fmt: skip
                        results.append(result)
                        print(table([result]).splitlines()[-1], file=sys.stderr)
                        for error, count in sorted(result.errors.items()):
                            print(f"    {count}x {error}", file=sys.stderr)
                # Capacity: closed loops, rounds interleaved (mix by mix, mode by mode).
                for round_number in range(args.capacity_rounds if args.capacity else 0):
                    for mix in args.capacity_mixes.split(","):
                        for mode in modes:
                            print(f"capacity round {round_number + 1}: {mode} {mix}, "
                                  f"{args.capacity} users", file=sys.stderr)  # fmt: skip
                            result = run_step(
                                mode, args.capacity, args.capacity_seconds, bases_of[mode],
                                catalog_file, workdir, admin, f"{tag}_{mode}", "0,0", mix,
                            )  # fmt: skip
                            capacity.append(result)
                            print(capacity_table([result]).splitlines()[-1], file=sys.stderr)
        finally:
            with admin.connect() as connection:
                for name in [template, *(f"{tag}_{m}" for m in modes)]:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
            clear_redis(args.redis, tag)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*.log"):
                kept = args.output.parent / f"load-{log.name}"
                shutil.copyfile(log, kept)
                print(f"kept {kept}", file=sys.stderr)
    output = table(results) if results else ""
    if capacity:
        output += "\n\nCapacity (closed loop, no think time):\n\n" + capacity_table(capacity)
    print(output)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(output + "\n")
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
