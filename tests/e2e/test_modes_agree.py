"""The three modes give the same responses: one scripted sequence of reads and writes (and the
demo's seeded workload) runs on a fresh copy of the same data in each mode, and every status
and JSON body must be identical — apart from access tokens and the timestamps of rows the run
itself wrote, which are masked.

Reads are repeated three times before the write that changes them, so in tuned mode the
cache is serving them (learn, fill, hit) when the write lands: a stale read after a write
shows up as a difference from naive mode.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from marketplace.models import Job, Payment, utcnow
from marketplace.settings import Settings
from marketplace.workload import catalog_from_database, plan
from tests.e2e.facts import Facts
from tests.e2e.harness import MODES, open_api, utc

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Backend
    from tests.e2e.harness import Api, Dataset

Step = tuple[str, str, int, dict[str, Any] | None]  # method, path, acting user, body
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def mask(value: Any, since: datetime) -> Any:
    """``value`` with tokens and timestamps from ``since`` on replaced by placeholders."""
    if isinstance(value, dict):
        return {
            key: "<token>" if key == "access_token" else mask(item, since)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask(item, since) for item in value]
    if isinstance(value, str) and ISO.match(value) and datetime.fromisoformat(utc(value)) >= since:
        return "<now>"
    return value


def script(facts: Facts) -> list[Step]:
    """Reads, the write that changes them, the reads again; every endpoint."""
    client = facts.busiest(Payment, Payment.payer_id)
    payer, worker, job = facts.payable()
    pending = facts.pending_payment()
    reviewer, reviewee, reviewed_job = facts.reviewable()
    applicant, open_job = facts.unapplied()
    account = {
        "holder_name": "Grace Hopper",
        "iban": "NL91ABNA0417164300",
        "bic": "ABNANL2A",
        "currency": "EUR",
    }
    steps: list[Step] = [("GET", "/healthz", client, None)]

    def around(reads: list[tuple[str, int]], *writes: Step) -> None:
        for _ in range(3):
            steps.extend(("GET", path, user, None) for path, user in reads)
        steps.extend(writes)
        steps.extend(("GET", path, user, None) for path, user in reads)

    around(
        [(f"/profiles/{client}", worker), ("/account-details", client)],
        ("PUT", "/account-details", client, account),
    )
    around(
        [
            (f"/users/{payer}/payments", payer),
            (f"/users/{worker}/payments", worker),
            ("/payments/history", payer),
            ("/payments/history?limit=3", worker),
        ],
        ("POST", "/payments", payer, {"payee_id": worker, "job_id": job, "amount_cents": 4321}),
    )
    around(
        [
            (f"/users/{pending.payer_id}/payments", pending.payer_id),
            (f"/users/{pending.payee_id}/payments", pending.payee_id),
        ],
        ("POST", f"/payments/{pending.id}/confirm", pending.payer_id, None),
        ("POST", f"/payments/{pending.id}/confirm", pending.payer_id, None),  # 409
    )
    around(
        [(f"/reviews/{reviewee}", worker), (f"/reviews/by/{reviewer}", client)],
        (
            "POST",
            "/reviews",
            reviewer,
            {"reviewee_id": reviewee, "job_id": reviewed_job, "rating": 3, "comment": "ok"},
        ),
    )
    around(
        [(f"/jobs/{open_job}", client), ("/jobs?status=open&limit=5", client)],
        ("POST", f"/jobs/{open_job}/apply", applicant, {"cover_letter": "me", "bid_cents": 999}),
        ("POST", f"/jobs/{open_job}/apply", applicant, {"bid_cents": 999}),  # 409
    )
    around(
        [("/jobs?limit=4", worker), (f"/jobs?client_id={client}&limit=50", worker)],
        ("POST", "/jobs", client, {"title": "New", "description": "d", "budget_cents": 7000}),
    )
    new_job = facts.max_id(Job) + 1
    steps += [
        ("GET", f"/jobs/{new_job}", worker, None),
        ("GET", "/jobs/999999", worker, None),
        ("GET", f"/users/{client}/payments", worker, None),  # 403
        ("POST", "/reviews", worker, {"reviewee_id": 999999, "job_id": 1, "rating": 1}),
    ]
    return steps


async def run(api: Api, steps: list[Step]) -> list[tuple[str, int, Any]]:
    since = utcnow()
    results = []
    for method, path, user, body in steps:
        response = await api.request(method, path, user=user, json=body)
        results.append((f"{method} {path}", response.status_code, mask(response.json(), since)))
    return results


async def scripted(settings: Settings) -> list[tuple[str, int, Any]]:
    """The script, made from the data at ``settings.database_url``, run on a fresh app."""
    facts = Facts.of(settings.database_url)
    try:
        steps = script(facts)
    finally:
        facts.close()
    async with open_api(settings) as api:
        results = await run(api, steps)
        if settings.mode == "tuned":
            stats = api.app.state.runtime.installation.cache.stats
            # the reads before each write were served from the response cache: the comparison
            # with naive mode is what shows the writes invalidated them
            for name in (
                "GET /account-details",
                "GET /users/{user_id}/payments",
                "GET /reviews/{user_id}",
                "GET /jobs/{job_id}",
            ):
                assert stats[name].hits > 0, stats.report()
    return results


def assert_same(expected: list[Any], actual: list[Any], what: str) -> None:
    for want, got in zip(expected, actual, strict=True):
        assert got == want, f"{what} differs at {want[0]}"


async def test_scripted_sequence(small_dataset: Dataset, tmp_path: Path) -> None:
    results = {}
    for mode in MODES:
        (tmp_path / mode).mkdir()
        url = small_dataset.copy(tmp_path / mode)
        results[mode] = await scripted(Settings(mode=mode, database_url=url))
    naive = results["naive"]
    statuses = {status for _, status, _ in naive}
    assert {200, 201, 403, 404, 409} <= statuses, statuses  # the script reached every outcome
    for mode in ("tuned", "handwritten"):
        assert_same(naive, results[mode], f"{mode} mode")


@pytest.mark.postgresql
@pytest.mark.mariadb
async def test_every_database_agrees(
    small_dataset: Dataset,
    tmp_path: Path,
    postgresql_copy: Backend,
    mariadb_data: Backend,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """The script on the same data: naive on SQLite, tuned on PostgreSQL + Redis and tuned on
    MariaDB — the same responses."""
    reference = await scripted(Settings(mode="naive", database_url=small_dataset.copy(tmp_path)))
    others = {
        "tuned, PostgreSQL + Redis": Settings(
            mode="tuned",
            database_url=postgresql_copy.async_url,
            redis_url=redis_url,
            cache_prefix=redis_prefix,
        ),
        "tuned, MariaDB": Settings(mode="tuned", database_url=mariadb_data.async_url),
    }
    for what, settings in others.items():
        assert_same(reference, await scripted(settings), what)


async def test_demo_workload(small_dataset: Dataset, tmp_path: Path) -> None:
    """The demo's own seeded workload (marketplace.workload.plan) gives identical responses."""
    results = {}
    for mode in MODES:
        (tmp_path / mode).mkdir()
        url = small_dataset.copy(tmp_path / mode)
        calls = plan(catalog_from_database(url), requests=60, seed=7)
        since = utcnow()
        async with open_api(Settings(mode=mode, database_url=url)) as api:
            outcome = []
            for call in calls:
                if call.is_login:
                    assert call.actor is not None
                    await api.token(call.actor)
                    continue
                response = await api.request(
                    call.method, call.path, user=call.actor, json=call.body
                )
                outcome.append((call.path, response.status_code, mask(response.json(), since)))
        results[mode] = outcome
    assert len(results["naive"]) >= 55
    assert {status for _, status, _ in results["naive"]} >= {200, 201}
    assert results["tuned"] == results["naive"]
    assert results["handwritten"] == results["naive"]
