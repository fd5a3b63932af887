"""Hit rate on a read-heavy workload: table-level versus fine (row-value) dependencies.

1,000 users, each with a profile and payments. 20,000 operations, users drawn from a Zipf
distribution (s = 1.1, so a few users are hot): 95% reads, half of them a user's payment
list and half a user's profile (both cached with ``ormtune.cache()``), and 5% writes, half a
new payment for a user and half a profile update. The same seeded sequence runs twice on
PostgreSQL, with ``QueryCache(fine_dependencies=False)`` (every write to ``payments``
invalidates every cached payment list) and with fine dependencies (a write to user 8's
payments leaves user 7's cached list alone). Every cached read is compared with the same
read run uncached right after it, so a hit rate is never bought with a wrong answer.

Run: ``.venv-bench/bin/python bench/cache_hitrate.py [--ops N] [--postgres URL]``
"""

from __future__ import annotations

import argparse
import bisect
import random
from typing import Any

from _harness import (
    DEFAULT_POSTGRES,
    command_line,
    environment,
    markdown_table,
    scratch_postgres,
    text_table,
)
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ormtune.backends import MemoryBackend
from ormtune.caching import QueryCache, cache

USERS = 1000


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Profile(Base):
    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    bio: Mapped[str] = mapped_column(String(200))


class Payment(Base):
    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    amount: Mapped[int]


def zipf_sampler(rng: random.Random, n: int, s: float) -> Any:
    weights = [1 / (k**s) for k in range(1, n + 1)]
    total = sum(weights)
    cumulative = []
    running = 0.0
    for w in weights:
        running += w / total
        cumulative.append(running)
    order = list(range(1, n + 1))
    rng.shuffle(order)  # hot users are not simply the lowest ids
    return lambda: order[min(bisect.bisect_left(cumulative, rng.random()), n - 1)]


def workload(ops: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    user = zipf_sampler(rng, USERS, 1.1)
    plan = []
    for _ in range(ops):
        roll = rng.random()
        kind = (
            "read payments" if roll < 0.475
            else "read profile" if roll < 0.95
            else "write payment" if roll < 0.975
            else "write profile"
        )  # fmt: skip
        plan.append((kind, user()))
    return plan


def run(engine: Any, plan: list[tuple[str, int]], fine: bool) -> dict[str, Any]:
    query_cache = QueryCache(MemoryBackend(max_entries=100_000), fine_dependencies=fine)
    wrong = 0
    with query_cache:
        for step, (kind, user_id) in enumerate(plan):
            with Session(engine) as session:
                if kind == "read payments":
                    stmt = select(Payment).where(Payment.user_id == user_id).order_by(Payment.id)
                    got = [(p.id, p.amount) for p in session.scalars(stmt.options(cache()))]
                    session.expunge_all()
                    truth = [(p.id, p.amount) for p in session.scalars(stmt)]
                    wrong += got != truth
                elif kind == "read profile":
                    stmt_p = select(Profile).where(Profile.user_id == user_id)
                    got_p = [(p.id, p.bio) for p in session.scalars(stmt_p.options(cache()))]
                    session.expunge_all()
                    wrong += got_p != [(p.id, p.bio) for p in session.scalars(stmt_p)]
                elif kind == "write payment":
                    session.add(Payment(user_id=user_id, amount=step))
                    session.commit()
                else:
                    profile = session.scalars(
                        select(Profile).where(Profile.user_id == user_id)
                    ).one()
                    profile.bio = f"updated at step {step}"
                    session.commit()
    stats = query_cache.stats
    return {
        "payments": stats["(unnamed)"],
        "overall": stats.overall,
        "wrong": wrong,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    args = parser.parse_args()
    plan = workload(args.ops, args.seed)
    results = {}
    for fine in (False, True):
        with scratch_postgres(args.postgres, "ormtune_hitrate") as url:
            engine = create_engine(url)
            Base.metadata.create_all(engine)
            with Session(engine) as session:
                session.add_all(User(id=u, name=f"user {u}") for u in range(1, USERS + 1))
                session.flush()
                session.add_all(Profile(user_id=u, bio="hello") for u in range(1, USERS + 1))
                session.add_all(
                    Payment(user_id=u, amount=i) for u in range(1, USERS + 1) for i in range(3)
                )
                session.commit()
            results[fine] = run(engine, plan, fine)
            engine.dispose()
    headers = ["dependencies", "hit rate (all reads)", "hits", "misses", "wrong answers"]
    rows = []
    for fine, label in ((False, "table-level"), (True, "fine (row values)")):
        overall = results[fine]["overall"]
        rows.append(
            [
                label,
                f"{overall.hit_rate:.1%}",
                overall.hits,
                overall.misses,
                results[fine]["wrong"],
            ]
        )
    print(text_table(headers, rows))
    print()
    print(markdown_table(headers, rows))
    print()
    print(environment({"ops": str(args.ops), "seed": str(args.seed)}))
    print(f"command: {command_line()}")


if __name__ == "__main__":
    main()
