"""N+1 loops: plain lazy loading, hand-written selectinload / joinedload, and ormtune.autoload();
and the cost of N+1 detection.

The naive loop (for each user, read ``user.payments``; for each payment, read ``payment.user``)
runs at N = 10, 100 and 1,000 users on PostgreSQL, in a fresh session each time, under every
loading strategy; rounds are interleaved and the report gives queries per run and the median
time, with autoload's ratios against hand-written selectinload and plain lazy loading. Each
strategy runs in processes of its own (``--replicas``, 3 by default, whose runs are pooled),
set up once (ormtune installed at start-up, as an application does), and the timed runs are
interleaved across all those processes in a rotating order, one at a time.

Then the same loop runs with ``ormtune.nplusone.detect("log")`` on and off (findings go to a
``NullHandler``: records are made, nothing is printed), plain and with selectinload, paired
within one process: identical processes differed from one another by up to 1.49x here (each
has its own PostgreSQL backend, placed on the two cores as the scheduler likes), more than the
10% target, so on and off share one process and its connection. A process runs pairs of
halves, ``runs`` loops with detection off and ``runs`` with it on (``install("log")``, each
run a ``detect("log")`` block, then ``uninstall()``), in alternating order; a half's time is
the median of its runs (10 at N = 10, 3 from N = 34), each pair gives one ratio, and the
verdict is the median over ``--pairs`` pairs (a third as many at N = 1,000) in each of three
processes. An A/A control pairs "off" with "off" the same way, to show how far a pair strays
by chance.
``--detection processes`` times on and off in separate processes instead, with the spread
between identical processes (the design of the tables up to the tenth session).

Run from the repository root::

    .venv/bin/python bench/autoload.py
    .venv/bin/python bench/autoload.py --quick
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, String, create_engine, insert, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

sys.path.insert(0, str(Path(__file__).parent))

import _harness

import ormtune
from ormtune.nplusone import detect, install, uninstall

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.orm.interfaces import ORMOption

PAYMENTS_EACH = 5
TARGET_VS_SELECTIN = 1.15
TARGET_DETECTION = 1.10
TARGET_VS_LAZY_AT_100 = 3.0


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "bench_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    payments: Mapped[list[Payment]] = relationship(back_populates="user", order_by="Payment.id")


class Payment(Base):
    __tablename__ = "bench_payments"
    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int]
    user_id: Mapped[int] = mapped_column(ForeignKey("bench_users.id"), index=True)
    user: Mapped[User] = relationship(back_populates="payments")


def seed(engine: Engine, users: int) -> None:
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(User), [{"id": i, "name": f"user {i}"} for i in range(1, users + 1)])
        conn.execute(
            insert(Payment),
            [
                {"id": i * PAYMENTS_EACH + j, "amount": j + 1, "user_id": i}
                for i in range(1, users + 1)
                for j in range(PAYMENTS_EACH)
            ],
        )


def naive_loop(engine: Engine, users: int, options: tuple[ORMOption, ...]) -> int:
    """The code people write: loop over users, their payments, and each payment's user."""
    total = 0
    with Session(engine) as session:
        query = select(User).order_by(User.id).limit(users).options(*options)
        for user in session.scalars(query).unique():
            for payment in user.payments:
                total += payment.amount + len(payment.user.name)
    return total


@dataclass(frozen=True)
class Strategy:
    name: str
    options: tuple[ORMOption, ...] = ()
    autoload: bool = False


STRATEGIES = [
    Strategy("plain lazy"),
    Strategy("selectinload", (selectinload(User.payments),)),
    Strategy("joinedload", (joinedload(User.payments),)),
    Strategy("autoload", autoload=True),
]


def runner(url: URL, users: int, strategy: Strategy) -> Callable[[], Callable[[], int]]:
    """A factory run in the variant's own process: engine (and autoload) set up once."""

    def factory() -> Callable[[], int]:
        engine = create_engine(url)
        if strategy.autoload:
            ormtune.autoload()  # installed at start-up, as an application does
        return lambda: naive_loop(engine, users, strategy.options)

    return factory


def detected(factory: Callable[[], Callable[[], int]]) -> Callable[[], Callable[[], int]]:
    """The same variant with N+1 detection on: installed once, and a detect() block per run
    (one unit of work, as a request or a test opens one)."""

    def detected_factory() -> Callable[[], int]:
        install("log")
        run = factory()

        def run_detected() -> int:
            with detect("log"):
                return run()

        return run_detected

    return detected_factory


@dataclass(frozen=True)
class PairDesign:
    """How detection on is paired with off: ``pairs`` pairs in each of ``processes`` processes
    (a third as many from N = 1,000, where one run takes a few hundred ms), ``runs`` runs of
    the loop per half (None: about 50 ms of loop, and at least 3)."""

    pairs: int = 30
    processes: int = 3
    runs: int | None = None

    def pairs_for(self, users: int) -> int:
        return self.pairs if users < 1_000 else max(3, self.pairs // 3)


def _timed(run: Callable[[], object], times: int) -> float:
    """The median time of ``times`` runs: one run that stalls (a collection of the cyclic
    garbage collector, a scheduling hiccup) does not decide the pair, as it did with one run
    per half at N >= 100."""
    durations = []
    for _ in range(times):
        started = time.perf_counter()
        run()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


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
    url: URL,
    users: int,
    strategy: Strategy,
    design: PairDesign,
    *,
    control: bool,
) -> list[float]:
    """Every pair's ratio, from ``design.processes`` processes run one after another."""
    context = multiprocessing.get_context("fork")
    ratios: list[float] = []
    runs = design.runs or runs_for(users)
    for _ in range(design.processes):
        parent, child = context.Pipe()
        process = context.Process(
            target=_process,
            args=(child, url, users, strategy, design.pairs_for(users), runs, control),
        )
        process.start()
        ratios += parent.recv()
        process.join()
    return ratios


def runs_for(users: int) -> int:
    # 10 runs per half at N = 10 (about 50 ms), 3 from N = 34 on.
    return max(3, 100 // users)


def detection_paired_rows(
    url: URL, users: int, design: PairDesign
) -> tuple[list[list[object]], str]:
    """Detection on against off, paired within each process (see :func:`_pairs`), and the A/A
    control that shows how far a pair strays by chance: the rows and the verdict at ``users``.
    """
    rows: list[list[object]] = []
    worst = 0.0
    for strategy in STRATEGIES[:2]:  # plain lazy (N+1s found) and selectinload (none)
        ratios = paired(url, users, strategy, design, control=False)
        control = paired(url, users, strategy, design, control=True)
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
    verdict = (
        f"detection at N={users}, paired: worst median on/off {worst:.3f} "
        f"({'ok' if worst <= TARGET_DETECTION else 'MISSED'}: at most {TARGET_DETECTION})"
    )
    return rows, verdict


PAIRED_HEADERS = [
    "N users",
    "loop",
    "pairs",
    "on/off (median)",
    "quartiles",
    "A/A off/off (median)",
    "A/A quartiles",
]


def detection_overhead(
    url: URL, users: int, rounds: int, replicas: int
) -> tuple[list[list[object]], str]:
    """Detection on against off, each in ``replicas`` processes of its own: identical processes
    differ by a few percent from one another (memory layout, scheduling), as much as the 10%
    target at N = 10 with one process each, so each variant's median is over all its processes'
    runs, and the spread of the "off" processes' own medians is reported as the resolution."""
    factories: dict[str, Callable[[], Callable[[], int]]] = {}
    for strategy in STRATEGIES[:2]:  # plain lazy (N+1s found) and selectinload (none)
        factory = runner(url, users, strategy)
        for replica in range(replicas):
            factories[f"{strategy.name} #{replica}"] = factory
            factories[f"{strategy.name} + detect #{replica}"] = detected(factory)
    times = _harness.interleaved_processes(factories, rounds)
    rows: list[list[object]] = []
    ratios = []
    spreads = []
    for strategy in STRATEGIES[:2]:
        off_runs = [times[f"{strategy.name} #{r}"] for r in range(replicas)]
        on_runs = [times[f"{strategy.name} + detect #{r}"] for r in range(replicas)]
        off = _harness.median([run for runs in off_runs for run in runs])
        on = _harness.median([run for runs in on_runs for run in runs])
        process_medians = [_harness.median(runs) for runs in off_runs]
        spread = max(process_medians) / min(process_medians)
        ratios.append(on / off)
        spreads.append(spread)
        rows.append(
            [
                users,
                strategy.name,
                f"{off * 1000:.2f}",
                f"{on * 1000:.2f}",
                f"{on / off:.3f}",
                f"{spread:.3f}",
            ]
        )
    worst = max(ratios)
    verdict = (
        f"detection at N={users}, separate processes: worst ratio on/off {worst:.3f} "
        f"(identical processes differed by up to {max(spreads):.3f}x in this run; the verdict "
        f"on the {TARGET_DETECTION} target is the paired design's, --detection paired)"
    )
    return rows, verdict


def count_queries(engine: Engine, users: int, strategy: Strategy) -> tuple[int, int]:
    scope = ormtune.autoload() if strategy.autoload else None
    try:
        with ormtune.capture(engine) as log:
            result = naive_loop(engine, users, strategy.options)
    finally:
        if scope is not None:
            scope.close()
    return log.count, result


def quiet_findings() -> None:
    """Send N+1 findings to a ``NullHandler``: "log" mode still makes its records (part of what
    it costs), and nothing is printed."""
    quiet = logging.getLogger("ormtune.nplusone")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False


def main() -> None:
    quiet_findings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=_harness.DEFAULT_POSTGRES)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--replicas",
        type=int,
        default=3,
        help="processes per strategy and per detection variant (their runs are pooled)",
    )
    parser.add_argument(
        "--detection",
        choices=("paired", "processes"),
        default="paired",
        help="detection on against off paired in each process (the verdict), or in separate "
        "processes (the design of the seventh to tenth sessions' tables)",
    )
    parser.add_argument(
        "--pairs", type=int, default=30, help="pairs per process for the paired detection"
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds: a smoke run")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    sizes = [int(size) for size in args.sizes.split(",")]

    headers = ["N users", "strategy", "queries", "median ms", "vs selectinload", "vs plain lazy"]
    rows: list[list[object]] = []
    verdicts: list[str] = []
    with _harness.scratch_postgres(args.postgres, "ormtune_bench_autoload") as url:
        engine = create_engine(url)
        try:
            seed(engine, max(sizes))
            for users in sizes:
                counts = {s.name: count_queries(engine, users, s) for s in STRATEGIES}
                results = {result for _, result in counts.values()}
                assert len(results) == 1, f"strategies disagree on the result: {counts}"
                engine.dispose()  # no pooled connection crosses into the worker processes
                runs = {
                    f"{s.name} #{replica}": runner(url, users, s)
                    for s in STRATEGIES
                    for replica in range(args.replicas)
                }
                times = _harness.interleaved_processes(runs, rounds)
                medians = {
                    s.name: _harness.median(
                        [t for r in range(args.replicas) for t in times[f"{s.name} #{r}"]]
                    )
                    for s in STRATEGIES
                }
                rows += [
                    [
                        users,
                        name,
                        counts[name][0],
                        f"{medians[name] * 1000:.2f}",
                        f"{medians[name] / medians['selectinload']:.2f}x",
                        f"{medians[name] / medians['plain lazy']:.2f}x",
                    ]
                    for name in medians
                ]
                auto, selectin = counts["autoload"][0], counts["selectinload"][0]
                ratio = medians["autoload"] / medians["selectinload"]
                speedup = medians["plain lazy"] / medians["autoload"]
                verdicts.append(
                    f"N={users}: autoload {auto} queries vs selectinload {selectin} "
                    f"({'ok' if auto <= selectin + 1 else 'MISSED'}: at most +1); "
                    f"time {ratio:.2f}x selectinload "
                    f"({'ok' if ratio <= TARGET_VS_SELECTIN else 'MISSED'}: at most "
                    f"{TARGET_VS_SELECTIN}x); {speedup:.1f}x faster than plain lazy"
                    + (
                        f" ({'ok' if speedup >= TARGET_VS_LAZY_AT_100 else 'MISSED'}: at least "
                        f"{TARGET_VS_LAZY_AT_100}x at N=100)"
                        if users == 100
                        else ""
                    )
                )
            detection_rows: list[list[object]] = []
            if args.detection == "paired":
                detection_headers = PAIRED_HEADERS
                engine.dispose()  # no pooled connection crosses into the worker processes
                design = PairDesign(pairs=3 if args.quick else args.pairs)
                for users in sizes:
                    more_rows, verdict = detection_paired_rows(url, users, design)
                    detection_rows += more_rows
                    verdicts.append(verdict)
            else:
                detection_headers = [
                    "N users",
                    "loop",
                    "detect off ms",
                    "detect on ms",
                    "on/off",
                    "spread of off processes",
                ]
                for users in sizes:
                    more_rows, verdict = detection_overhead(url, users, rounds, args.replicas)
                    detection_rows += more_rows
                    verdicts.append(verdict)
        finally:
            engine.dispose()

    print(_harness.text_table(headers, rows))
    print()
    print(_harness.text_table(detection_headers, detection_rows))
    print()
    print("\n".join(verdicts))
    environment = _harness.environment(
        {"rounds": str(rounds), "processes per variant": str(args.replicas)}
    )
    print(f"\n{environment}\ncommand: {_harness.command_line()}")
    if args.markdown:
        args.markdown.write_text(
            _harness.markdown_table(headers, rows)
            + "\n\n"
            + _harness.markdown_table(detection_headers, detection_rows)
            + "\n\n"
            + "\n".join(f"- {line}" for line in verdicts)
            + f"\n\n{environment}\n"
        )


if __name__ == "__main__":
    main()
