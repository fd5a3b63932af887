"""A deterministic data set: the same seed and scale give the same rows, on every database.

::

    python -m marketplace.data --users 1000 --database-url sqlite+aiosqlite:///marketplace.db

User ``i`` (ids from 1) has the email ``user{i}@example.com`` and the password
``password-{i}``; odd ids are clients, even ids workers. Every user has a profile and account
details; clients post jobs (about 30% closed), workers apply (up to five per job; the lower a
worker's id, the more often: a few have hundreds of applications, payments and reviews),
clients pay up to two applicants per job (60% confirmed, the rest pending), and each side of
a confirmed payment may review the other. The database is migrated first and emptied of
marketplace rows; rows go in with multi-row INSERTs in one transaction (1,000 users: about
9,000 rows).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import itertools
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select, text

from marketplace.db import run_on_connection, upgrade
from marketplace.models import (
    AccountDetails,
    Application,
    AuthToken,
    Base,
    Job,
    Payment,
    Profile,
    Review,
    User,
)
from marketplace.security import hash_password

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy import Connection, Table

__all__ = ["DataSummary", "generate", "main"]

EPOCH = datetime(2026, 1, 1)
CHUNK = 2_000

FIRST = "Ada Alan Barbara Claude Dana Edsger Frances Grace Hedy Ivan Joan Ken Linus Margaret"
LAST = "Lovelace Turing Liskov Shannon Scott Dijkstra Allen Hopper Lamarr Sutherland Clarke"
SKILLS = "python,sql,design,writing,translation,react,devops,data,testing,mobile,seo,video"
CITIES = "Lisbon Berlin Nairobi Osaka Lima Oslo Austin Pune Accra Lyon Quito Perth".split()
TITLES = "Build Fix Design Translate Write Review Migrate Test Optimise Document".split()
THINGS = "website API database logo article app dashboard pipeline report shop".split()
COMMENTS = ("Great work", "On time, clear communication", "Would hire again", "Fine", "Slow")


@dataclass(frozen=True, slots=True)
class DataSummary:
    """What :func:`generate` wrote: counts and the ids a workload needs."""

    users: int
    seed: int
    clients: list[int]
    workers: list[int]
    jobs: list[int]
    open_jobs: list[int]
    # payer id -> the ids of that payer's pending payments (each confirmable once)
    pending_payments: dict[int, list[int]]
    # job id -> the workers who applied (a payment's payee must be one of them)
    applicants: dict[int, list[int]]
    rows: dict[str, int] = field(default_factory=dict)

    def password(self, user_id: int) -> str:
        return f"password-{user_id}"

    def email(self, user_id: int) -> str:
        return f"user{user_id}@example.com"


def _salt(seed: int, user_id: int) -> bytes:
    return hashlib.sha256(f"marketplace-salt:{seed}:{user_id}".encode()).digest()[:16]


def _password_hashes(seed: int, users: int) -> list[str]:
    """Every user's password hash; PBKDF2 releases the GIL, so threads use every core."""

    def one(user_id: int) -> str:
        return hash_password(f"password-{user_id}", salt=_salt(seed, user_id))

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(one, range(1, users + 1), chunksize=256))


def _distinct(
    rng: random.Random, items: list[int], cumulative: list[float], count: int
) -> list[int]:
    """``count`` distinct items drawn with the given cumulative weights, in draw order."""
    count = min(count, len(items))
    chosen: dict[int, None] = {}
    while len(chosen) < count:
        chosen.update(
            dict.fromkeys(rng.choices(items, cum_weights=cumulative, k=count - len(chosen)))
        )
    return list(chosen)


def _rows(seed: int, users: int) -> tuple[dict[Table, list[dict[str, Any]]], DataSummary]:
    rng = random.Random(seed)
    hashes = _password_hashes(seed, users)
    first, last, skills = FIRST.split(), LAST.split(), SKILLS.split(",")
    tables: dict[Table, list[dict[str, Any]]] = {}
    user_rows = tables[User.__table__] = []  # type: ignore[index]
    profile_rows = tables[Profile.__table__] = []  # type: ignore[index]
    account_rows = tables[AccountDetails.__table__] = []  # type: ignore[index]
    clients: list[int] = []
    workers: list[int] = []
    for i in range(1, users + 1):
        role = "client" if i % 2 else "worker"
        (clients if role == "client" else workers).append(i)
        name = f"{rng.choice(first)} {rng.choice(last)}"
        joined = EPOCH + timedelta(minutes=i)
        user_rows.append(
            {
                "id": i,
                "email": f"user{i}@example.com",
                "name": name,
                "role": role,
                "password_hash": hashes[i - 1],
                "created_at": joined,
            }
        )
        profile_rows.append(
            {
                "id": i,
                "user_id": i,
                "headline": f"{role.title()} from {rng.choice(CITIES)}",
                "bio": f"{name} has been on the marketplace since {joined:%B %Y}.",
                "skills": ",".join(sorted(rng.sample(skills, 3))),
                "city": rng.choice(CITIES),
                "hourly_rate_cents": rng.randrange(1_500, 15_000, 50),
            }
        )
        account_rows.append(
            {
                "id": i,
                "user_id": i,
                "holder_name": name,
                "iban": f"DE{i % 97:02d}{i:018d}",
                "bic": "MARKDEFFXXX",
                "currency": rng.choice(("EUR", "USD", "GBP")),
                "updated_at": joined,
            }
        )
    job_rows = tables[Job.__table__] = []  # type: ignore[index]
    application_rows = tables[Application.__table__] = []  # type: ignore[index]
    payment_rows = tables[Payment.__table__] = []  # type: ignore[index]
    review_rows = tables[Review.__table__] = []  # type: ignore[index]
    open_jobs: list[int] = []
    pending: dict[int, list[int]] = {}
    applicants: dict[int, list[int]] = {}
    moment = EPOCH + timedelta(minutes=users + 1)

    def tick() -> datetime:
        nonlocal moment
        moment += timedelta(seconds=rng.randrange(1, 600))
        return moment

    # Activity is skewed as on real marketplaces: the lower a worker's id, the more often they
    # apply (weight 1 / rank ** 0.8), so a few workers have hundreds of applications,
    # payments and reviews, and most have a handful.
    popularity = list(itertools.accumulate(1 / rank**0.8 for rank in range(1, len(workers) + 1)))
    for client in clients:
        for _ in range(rng.randint(1, 4)):
            job_id = len(job_rows) + 1
            status = "closed" if rng.random() < 0.3 else "open"
            if status == "open":
                open_jobs.append(job_id)
            job_rows.append(
                {
                    "id": job_id,
                    "client_id": client,
                    "title": f"{rng.choice(TITLES)} a {rng.choice(THINGS)}",
                    "description": f"Job {job_id}: details on request.",
                    "budget_cents": rng.randrange(5_000, 500_000, 100),
                    "status": status,
                    "created_at": tick(),
                }
            )
            chosen = _distinct(rng, workers, popularity, rng.randint(0, 5))
            applicants[job_id] = sorted(chosen)
            for worker in chosen:
                application_rows.append(
                    {
                        "id": len(application_rows) + 1,
                        "job_id": job_id,
                        "worker_id": worker,
                        "cover_letter": "I can do this.",
                        "bid_cents": rng.randrange(5_000, 500_000, 100),
                        "created_at": tick(),
                    }
                )
            for worker in chosen[: rng.randint(0, 2)]:
                payment_id = len(payment_rows) + 1
                confirmed = rng.random() < 0.6
                created = tick()
                payment_rows.append(
                    {
                        "id": payment_id,
                        "payer_id": client,
                        "payee_id": worker,
                        "job_id": job_id,
                        "amount_cents": rng.randrange(1_000, 200_000, 100),
                        "status": "confirmed" if confirmed else "pending",
                        "created_at": created,
                        "confirmed_at": created + timedelta(hours=1) if confirmed else None,
                    }
                )
                if not confirmed:
                    pending.setdefault(client, []).append(payment_id)
                    continue
                for reviewer, reviewee, chance in ((client, worker, 0.7), (worker, client, 0.5)):
                    if rng.random() < chance:
                        review_rows.append(
                            {
                                "id": len(review_rows) + 1,
                                "reviewer_id": reviewer,
                                "reviewee_id": reviewee,
                                "job_id": job_id,
                                "rating": rng.randint(1, 5),
                                "comment": rng.choice(COMMENTS),
                                "created_at": tick(),
                            }
                        )
    summary = DataSummary(
        users=users,
        seed=seed,
        clients=clients,
        workers=workers,
        jobs=[row["id"] for row in job_rows],
        open_jobs=open_jobs,
        pending_payments=pending,
        applicants=applicants,
        rows={table.name: len(rows) for table, rows in tables.items()},
    )
    return tables, summary


def _after_load(connection: Connection, tables: Sequence[Table]) -> None:
    """Sequences past the explicit ids (PostgreSQL does not move a serial's sequence; MariaDB
    and SQLite do), and fresh planner statistics: a bulk load leaves none until autovacuum
    gets to it, and the first queries would be planned blind."""
    dialect = connection.dialect.name
    for table in tables:
        if dialect == "postgresql":
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table.name}"
                )
            )
            connection.execute(text(f"ANALYZE {table.name}"))
        elif dialect in ("mysql", "mariadb"):
            connection.execute(text(f"ANALYZE TABLE {table.name}")).all()


def _load(connection: Connection, tables: dict[Table, list[dict[str, Any]]]) -> None:
    for table in reversed(Base.metadata.sorted_tables):
        connection.execute(delete(table))
    for table, rows in tables.items():
        for start in range(0, len(rows), CHUNK):
            connection.execute(insert(table), rows[start : start + CHUNK])
    _after_load(connection, Base.metadata.sorted_tables)
    users = connection.scalar(select(func.count()).select_from(User.__table__))
    if users != len(tables[User.__table__]):  # type: ignore[index]
        raise RuntimeError(f"expected {len(tables[User.__table__])} users, found {users}")  # type: ignore[index]


def generate(database_url: str, *, users: int, seed: int = 0) -> DataSummary:
    """Migrate ``database_url``, empty the marketplace's tables and fill them with the data set
    for ``users`` users and ``seed``; returns what it wrote.

    Rows written here bypass the application, so a shared (Redis) query cache of an earlier
    run must not be reused: the app invalidates its cache prefix when it starts.
    """
    if not 1 <= users <= 1_000_000:
        raise ValueError(f"users must be between 1 and 1,000,000, not {users}")
    tables, summary = _rows(seed, users)
    tables[AuthToken.__table__] = []  # type: ignore[index]
    upgrade(database_url)
    run_on_connection(database_url, lambda connection: _load(connection, tables))
    return summary


def _count(text: str) -> int:
    """``1000``, ``1k``, ``100K`` -> a number of users."""
    factor = 1000 if text[-1:] in ("k", "K") else 1
    try:
        return int(text[:-1] if factor > 1 else text) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of users: {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m marketplace.data", description="Generate the marketplace's data set."
    )
    parser.add_argument(
        "--users",
        "--scale",
        type=_count,
        default=1000,
        help="how many users: 1000, 1k, 10k, 100k (default 1000)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--database-url",
        default="sqlite+aiosqlite:///marketplace.db",
        help="where (default: sqlite+aiosqlite:///marketplace.db)",
    )
    args = parser.parse_args(argv)
    began = time.perf_counter()
    summary = generate(args.database_url, users=args.users, seed=args.seed)
    rows = ", ".join(f"{n} {table}" for table, n in summary.rows.items())
    print(f"generated {rows} in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
