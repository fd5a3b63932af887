"""What unused-eager detection costs: per read of a tracked relationship, and on a whole loop.

``detect(unused_eager=True)`` switches each relationship a query loaded eagerly to a
read-noting attribute while the block is open. Two measurements, interleaved rounds, medians:

* one read of ``user.payments`` (already loaded), with the relationship's attribute plain and
  switched (tracking on), 100,000 reads per round;
* the naive loop of bench/autoload.py with ``selectinload(User.payments)`` (100 users, 5
  payments each, every collection read) on in-memory SQLite, where the ORM's own work is all the
  work: no detection, ``detect("log")``, and ``detect("log", unused_eager=True)``.

    .venv-bench/bin/python bench/unused_eager.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, selectinload

sys.path.insert(0, str(Path(__file__).parent))

import _harness
from autoload import User, naive_loop, seed

from ormtune.nplusone import detect

USERS = 100
READS = 100_000
ROUNDS = 200


def per_read() -> list[list[object]]:
    engine = create_engine("sqlite://")
    seed(engine, 10)
    statement = select(User).order_by(User.id).options(selectinload(User.payments))

    def reads() -> None:
        with Session(engine) as session:
            user = session.scalars(statement).first()
            for _ in range(READS):
                user.payments  # type: ignore[union-attr]  # noqa: B018

    def tracked() -> None:
        # The block's query switches User.payments to the read-noting attribute.
        with detect("log", unused_eager=True):
            reads()

    times = _harness.interleaved({"off": reads, "on": tracked}, rounds=ROUNDS // 4)
    off, on = _harness.median(times["off"]), _harness.median(times["on"])
    # The query and the block around the reads cost the same few hundred microseconds in
    # both variants, next to 100,000 reads.
    return [
        ["read of a loaded relationship, detection off", f"{off / READS * 1e9:.0f} ns", "1.00"],
        [
            "read of a loaded relationship, unused_eager=True",
            f"{on / READS * 1e9:.0f} ns",
            f"{on / off:.2f}",
        ],
    ]


def loop() -> list[list[object]]:
    engine = create_engine("sqlite://")
    seed(engine, USERS)
    options = (selectinload(User.payments),)

    def plain() -> int:
        return naive_loop(engine, USERS, options)

    def detected() -> int:
        with detect("log"):
            return plain()

    def unused_eager() -> int:
        with detect("log", unused_eager=True):
            return plain()

    times = _harness.interleaved(
        {"no detection": plain, 'detect("log")': detected, "unused_eager=True": unused_eager},
        rounds=ROUNDS,
    )
    medians = {name: _harness.median(values) for name, values in times.items()}
    base = medians["no detection"]
    return [
        [f"selectinload loop, {name}", f"{median * 1000:.2f} ms", f"{median / base:.3f}"]
        for name, median in medians.items()
    ]


def main() -> None:
    rows = per_read() + loop()
    print(_harness.text_table(["what", "median", "vs first"], rows))
    load = "/".join(f"{value:.1f}" for value in os.getloadavg())
    extra = {"rounds": str(ROUNDS), "load average": load}
    print(f"\n{_harness.environment(extra)}\ncommand: {_harness.command_line()}")


if __name__ == "__main__":
    main()
