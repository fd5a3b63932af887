"""Concurrent writes that race on PostgreSQL (many requests in flight at once on the app's
connection pool): exactly one wins, the others get a 409, and the database agrees."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from marketplace.models import Application, Payment
from marketplace.settings import Settings
from tests.e2e.facts import Facts
from tests.e2e.harness import open_api, utc

if TYPE_CHECKING:
    from collections.abc import Iterator

    from marketplace.settings import Mode
    from tests.conftest import Backend

pytestmark = pytest.mark.postgresql

RACERS = 8


@pytest.fixture
def truth(postgresql_copy: Backend) -> Iterator[Facts]:
    found = Facts.of(postgresql_copy.sync_url)
    yield found
    found.close()


@pytest.mark.parametrize("mode", ["naive", "tuned"])
async def test_confirm_once(mode: Mode, postgresql_copy: Backend, truth: Facts) -> None:
    pending = truth.pending_payment()
    settings = Settings(mode=mode, database_url=postgresql_copy.async_url)
    async with open_api(settings) as api:
        await api.token(pending.payer_id)
        responses = await asyncio.gather(
            *(
                api.post(f"/payments/{pending.id}/confirm", user=pending.payer_id)
                for _ in range(RACERS)
            )
        )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [409] * (RACERS - 1), [r.text for r in responses]
    (winner,) = [r.json() for r in responses if r.status_code == 200]
    (stored,) = [p for p in truth.payments_of(pending.payer_id) if p.id == pending.id]
    assert stored.status == "confirmed"
    assert utc(winner)["confirmed_at"] == stored.confirmed_at.isoformat()  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["naive", "tuned"])
async def test_apply_once(mode: Mode, postgresql_copy: Backend, truth: Facts) -> None:
    worker, job = truth.unapplied()
    before = truth.count(Application)
    settings = Settings(mode=mode, database_url=postgresql_copy.async_url)
    async with open_api(settings) as api:
        await api.token(worker)
        responses = await asyncio.gather(
            *(
                api.post(f"/jobs/{job}/apply", user=worker, json={"bid_cents": 100 + n})
                for n in range(RACERS)
            )
        )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * (RACERS - 1), [r.text for r in responses]
    assert truth.count(Application) == before + 1
    assert truth.applicants(job)[-1] == worker


@pytest.mark.parametrize("mode", ["naive", "tuned"])
async def test_parallel_payments_all_land(
    mode: Mode, postgresql_copy: Backend, truth: Facts
) -> None:
    """Writes that do not conflict all succeed, with distinct ids."""
    client, worker, job = truth.payable()
    before = truth.count(Payment)
    settings = Settings(mode=mode, database_url=postgresql_copy.async_url)
    async with open_api(settings) as api:
        await api.token(client)
        body = {"payee_id": worker, "job_id": job, "amount_cents": 100}
        responses = await asyncio.gather(
            *(api.post("/payments", user=client, json=body) for _ in range(RACERS))
        )
        assert [r.status_code for r in responses] == [201] * RACERS, [r.text for r in responses]
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == RACERS
        listed = await api.get(f"/users/{client}/payments", user=client)
    assert {p["id"] for p in listed.json()["payments"]} >= ids
    assert truth.count(Payment) == before + RACERS
