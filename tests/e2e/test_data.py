"""The data generator: deterministic (the same seed and scale give the same rows), and its
summary describes the rows it wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool

from marketplace.models import Base, Job, Payment, User
from tests.e2e.harness import make_dataset

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.harness import Dataset


def rows(path: Path) -> dict[str, list[Any]]:
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return {
                table.name: [
                    tuple(row)
                    for row in connection.execute(select(table).order_by(*table.primary_key))
                ]
                for table in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def test_same_seed_same_rows(small_dataset: Dataset, tmp_path: Path) -> None:
    again = make_dataset(tmp_path, small_dataset.users)
    assert again.summary == small_dataset.summary
    assert rows(again.path) == rows(small_dataset.path)
    (tmp_path / "seed1").mkdir()
    other = make_dataset(tmp_path / "seed1", small_dataset.users, seed=1)
    assert rows(other.path) != rows(small_dataset.path)


def test_summary_matches_rows(small_dataset: Dataset) -> None:
    summary, found = small_dataset.summary, rows(small_dataset.path)
    users = {row[0]: row for row in found["users"]}
    role = User.__table__.c.keys().index("role")
    assert len(users) == summary.users == 20
    assert sorted([*summary.clients, *summary.workers]) == sorted(users)
    assert all(users[i][role] == "client" for i in summary.clients)
    assert all(users[i][role] == "worker" for i in summary.workers)
    jobs = {row[0]: row for row in found["jobs"]}
    status = Job.__table__.c.keys().index("status")
    assert sorted(summary.jobs) == sorted(jobs)
    assert sorted(summary.open_jobs) == sorted(
        j for j, row in jobs.items() if row[status] == "open"
    )
    columns = Payment.__table__.c.keys()
    pending: dict[int, list[int]] = {}
    for row in found["payments"]:
        if row[columns.index("status")] == "pending":
            pending.setdefault(row[columns.index("payer_id")], []).append(row[0])
    assert summary.pending_payments == pending
    assert len(found["account_details"]) == len(found["profiles"]) == summary.users
    assert summary.rows == {table: len(found[table]) for table in summary.rows}
