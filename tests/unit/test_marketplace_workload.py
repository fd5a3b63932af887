"""The marketplace's shared workload (examples/marketplace/workload.py): deterministic, every
endpoint covered, the load test's mix read-heavy, and each verified write's follow-up read."""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from marketplace.data import generate
from marketplace.workload import (
    ENDPOINTS,
    READS,
    Call,
    Catalog,
    Mix,
    Zipf,
    catalog_from_database,
    catalog_from_dict,
    catalog_to_dict,
    follow_up,
    plan,
)

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    path = tmp_path_factory.mktemp("workload") / "data.sqlite"
    url = f"sqlite+aiosqlite:///{path}"
    generate(url, users=120, seed=0)
    return catalog_from_database(url)


def test_the_catalog_reflects_the_generated_data(catalog: Catalog) -> None:
    assert catalog.users == tuple(range(1, 121))
    assert catalog.clients == tuple(range(1, 121, 2))  # odd ids are clients
    assert set(catalog.open_jobs) <= set(catalog.jobs)
    for job, client in ((j, c) for c, jobs in catalog.client_jobs.items() for j in jobs):
        assert client in catalog.clients, job
    assert all(worker in catalog.workers for worker, _ in catalog.applications)
    assert catalog.pending_payments
    assert catalog.reviewable
    assert catalog_from_dict(catalog_to_dict(catalog)) == catalog


def test_plan_is_the_same_for_the_same_seed_and_covers_every_endpoint(catalog: Catalog) -> None:
    first = plan(catalog, requests=300, seed=3)
    assert first == plan(catalog, requests=300, seed=3)
    assert first != plan(catalog, requests=300, seed=4)
    assert set(ENDPOINTS) <= {call.endpoint for call in first}


def test_plan_logs_each_actor_in_before_its_first_call(catalog: Catalog) -> None:
    logged_in: set[int] = set()
    for call in plan(catalog, requests=300, seed=0):
        if call.is_login:
            assert call.actor not in logged_in
            assert call.actor is not None
            logged_in.add(call.actor)
        elif call.actor is not None:
            assert call.actor in logged_in, call


def test_plan_confirms_each_pending_payment_once_by_its_payer(catalog: Catalog) -> None:
    confirms = [c for c in plan(catalog, requests=600, seed=0) if c.endpoint.endswith("confirm")]
    payment_ids = [int(call.path.split("/")[2]) for call in confirms]
    assert len(payment_ids) == len(set(payment_ids))
    for call, payment in zip(confirms, payment_ids, strict=True):
        assert call.actor is not None
        assert payment in catalog.pending_payments[call.actor]


def test_the_load_mix_is_read_heavy_and_acts_only_as_its_user(catalog: Catalog) -> None:
    worker = catalog.workers[0]
    mix = Mix(catalog, worker, seed=1)
    calls = [next(mix) for _ in range(5_000)]
    reads = sum(call.endpoint in READS for call in calls) / len(calls)
    assert 0.86 <= reads <= 0.94
    assert {call.actor for call in calls} == {worker}
    # a worker never posts jobs or pays; a client never applies
    assert not {"POST /jobs", "POST /payments"} & {call.endpoint for call in calls}
    client_calls = [next(Mix(catalog, catalog.clients[0], seed=s)) for s in range(2_000)]
    assert "POST /jobs/{id}/apply" not in {call.endpoint for call in client_calls}


def test_zipf_draws_are_seeded_and_skewed() -> None:
    zipf = Zipf(list(range(1, 1001)), seed=0)
    draws = [zipf.draw(random.Random(7)) for _ in range(3)]
    assert draws == [zipf.draw(random.Random(7)) for _ in range(3)]
    rng = random.Random(0)
    counts = Counter(zipf.draw(rng) for _ in range(20_000))
    hottest = zipf.items[0]
    assert counts[hottest] == max(counts.values())
    assert counts[hottest] > 20 * (20_000 / 1000)  # far above a uniform draw's share


def test_follow_up_reads_check_what_the_write_changed() -> None:
    body = {"holder_name": "A", "iban": "DE00", "bic": "X", "currency": "EUR"}
    put = Call("PUT /account-details", "/account-details", 7, body)
    check = follow_up(put, {**body, "user_id": 7})
    assert check is not None
    assert check.call == Call("GET /account-details", "/account-details", 7)
    assert check.shows({**body, "user_id": 7, "updated_at": "2026-01-01T00:00:00Z"})
    assert not check.shows({**body, "currency": "USD"})

    apply = Call("POST /jobs/{id}/apply", "/jobs/12/apply", 8, {"bid_cents": 100})
    check = follow_up(apply, {"id": 99, "job_id": 12})
    assert check is not None
    assert check.call.path == "/jobs/12"
    assert check.shows({"id": 12, "applications": [{"id": 98}, {"id": 99}]})
    assert not check.shows({"id": 12, "applications": [{"id": 98}]})

    payment = Call("POST /payments", "/payments", 1, {"payee_id": 2})
    check = follow_up(payment, {"id": 5})
    assert check is not None
    assert check.shows({"items": [{"id": 5}], "next": None})
    assert not check.shows({"items": [{"id": 4}], "next": None})

    assert follow_up(Call("POST /jobs", "/jobs", 1, {}), {"id": 3}) is None


def test_catalog_round_trips_through_json(catalog: Catalog, tmp_path: Path) -> None:
    import json

    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog_to_dict(catalog)))
    assert catalog_from_dict(json.loads(path.read_text())) == catalog
