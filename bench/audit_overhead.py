"""The audit log's cost on a write workload, and list_and_count's query count.

One run, in a fresh session: 50 users created one by one (unit of work), 50 of them renamed
(unit of work), 200 payments by ``create_many`` (bulk INSERT), one ``update_many`` (bulk UPDATE
of 100 payments), one ``delete_where`` (bulk soft delete of 50 payments), then COMMIT. Two
variants share the process and the models (soft delete and audit columns on in both): plain,
and with ``record_audit_log()`` on the variant's sessionmaker. Rounds are interleaved in a
rotating order; the report gives medians, the ratio, and statements per run (the log's extra
statements are its cost on a database across a network).

Then: ``Repository.list_and_count`` on 100 users with a declared collection load, against the
hand-written list + count + lazy loop, as query counts.

Run from the repository root::

    .venv-bench/bin/python bench/audit_overhead.py            # PostgreSQL and SQLite
    .venv-bench/bin/python bench/audit_overhead.py --quick
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, String, create_engine, func, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

sys.path.insert(0, str(Path(__file__).parent))

import _harness

import ormtune
from ormtune.integrity import AuditLogMixin, AuditMixin, SoftDeleteMixin, record_audit_log
from ormtune.repository import Repository

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


class Base(DeclarativeBase):
    pass


class User(SoftDeleteMixin, AuditMixin, Base):
    __tablename__ = "bench_audit_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    payments: Mapped[list[Payment]] = relationship(order_by="Payment.id")


class Payment(SoftDeleteMixin, AuditMixin, Base):
    __tablename__ = "bench_audit_payments"
    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int]
    status: Mapped[str] = mapped_column(String(20), default="new")
    user_id: Mapped[int] = mapped_column(ForeignKey("bench_audit_users.id"), index=True)


class AuditLog(AuditLogMixin, Base):
    __tablename__ = "bench_audit_log"


_ids = itertools.count(1)


def workload(factory: sessionmaker[Session]) -> None:
    base = next(_ids) * 1000
    with factory() as session:
        users = Repository(session, User)
        payments = Repository(session, Payment)
        for i in range(50):
            users.create(id=base + i, name=f"user {i}")
        for i in range(50):
            users.update(base + i, name=f"renamed {i}")
        payments.create_many(
            [{"id": base + i, "amount": i, "user_id": base + i % 50} for i in range(200)]
        )
        payments.update_many({"status": "paid"}, Payment.id >= base, Payment.id < base + 100)
        payments.delete_where(Payment.id >= base + 150, Payment.id < base + 200)
        session.commit()


def statements(factory: sessionmaker[Session]) -> int:
    with ormtune.capture() as log:
        workload(factory)
    return log.count


def measure(engine: Engine, label: str, rounds: int) -> list[list[object]]:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    plain = sessionmaker(engine)
    audited = sessionmaker(engine)
    registration = record_audit_log(AuditLog, target=audited)
    try:
        counts = {"plain": statements(plain), "audit log": statements(audited)}
        times = _harness.interleaved(
            {"plain": lambda: workload(plain), "audit log": lambda: workload(audited)}, rounds
        )
        with Session(engine) as session:
            logged = session.scalar(select(func.count()).select_from(AuditLog))
    finally:
        registration.close()
        Base.metadata.drop_all(engine)
    base = _harness.median(times["plain"])
    # per audited run: 50 inserts + 50 updates + 200 inserts + 100 updates + 50 soft deletes
    runs = rounds + 2  # the warm-up and the counted run are audited too
    assert logged == 450 * runs, (logged, runs)
    return [
        [
            label,
            name,
            counts[name],
            f"{_harness.median(times[name]) * 1000:.1f}",
            f"{_harness.median(times[name]) / base:.3f}",
        ]
        for name in ("plain", "audit log")
    ]


def list_and_count_queries(engine: Engine) -> list[list[object]]:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            repo = Repository(session, User)
            repo.create_many([{"id": i, "name": f"u{i}"} for i in range(1, 101)])
            Repository(session, Payment).create_many(
                [{"id": i, "amount": i, "user_id": 1 + i % 100} for i in range(300)]
            )
            session.commit()
        rows: list[list[object]] = []
        for page in (20, 100):
            with Session(engine) as session, ormtune.capture() as log:
                items, total = Repository(session, User, load=[User.payments]).list_and_count(
                    limit=page
                )
                assert total == 100
                assert sum(len(u.payments) for u in items) == 3 * page
            rows.append(["list_and_count, load=[User.payments]", page, log.count])
            with Session(engine) as session, ormtune.capture() as log:
                users = session.scalars(select(User).order_by(User.id).limit(page)).all()
                session.scalar(select(func.count()).select_from(User))
                assert sum(len(u.payments) for u in users) == 3 * page
            rows.append(["hand-written list + count + lazy loop", page, log.count])
        return rows
    finally:
        Base.metadata.drop_all(engine)


def main() -> None:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=_harness.DEFAULT_POSTGRES)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 rounds: a smoke run")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = create_engine(f"sqlite:///{tmp}/bench.db")
        rows += measure(sqlite, "sqlite", rounds)
        sqlite.dispose()
    with _harness.scratch_postgres(args.postgres, "ormtune_bench_audit") as url:
        postgres = create_engine(url)
        rows += measure(postgres, "postgresql", rounds)
        counts = list_and_count_queries(postgres)
        postgres.dispose()
    headers = ["backend", "variant", "statements/run", "median ms", "ratio"]
    print(_harness.text_table(headers, rows))
    print()
    print(_harness.text_table(["read", "page size", "queries"], counts))
    print(f"\n{_harness.environment({'rounds': str(rounds)})}\ncommand: {_harness.command_line()}")
    print()
    print(_harness.markdown_table(headers, rows))
    print()
    print(_harness.markdown_table(["read", "page size", "queries"], counts))


if __name__ == "__main__":
    main()
