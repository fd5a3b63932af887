"""Tuned mode's query cache end to end, on SQLite with the in-memory cache and on PostgreSQL
with Redis (a key prefix of the test's own, deleted afterwards): a repeated read is served from
the cache, and after a write through the API the next read is fresh — with no hand-written
invalidation in the app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
import redis

import ormtune
from marketplace.settings import Settings
from tests.e2e.facts import Facts
from tests.e2e.harness import open_api, samples

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from tests.conftest import Backend
    from tests.e2e.harness import Api

    Budget = Any


@pytest.fixture(
    params=["sqlite-memory", pytest.param("postgresql-redis", marks=pytest.mark.postgresql)]
)
def tuned(request: pytest.FixtureRequest, database_url: str) -> Iterator[Settings]:
    """Tuned-mode settings: SQLite + the in-memory cache, or PostgreSQL + Redis."""
    if request.param == "sqlite-memory":
        yield Settings(mode="tuned", database_url=database_url)
        return
    db: Backend = request.getfixturevalue("postgresql_copy")
    redis_url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    yield Settings(
        mode="tuned", database_url=db.async_url, redis_url=redis_url, cache_prefix=prefix
    )


@pytest_asyncio.fixture
async def cached_api(tuned: Settings) -> AsyncIterator[Api]:
    async with open_api(tuned) as running:
        yield running


@pytest.fixture
def truth(tuned: Settings) -> Iterator[Facts]:
    found = Facts.of(tuned.database_url)
    yield found
    found.close()


async def reads(api: Api, path: str, user: int, times: int = 3) -> list[tuple[int, Any]]:
    """``times`` reads of ``path``: (statements, JSON body) of each."""
    result = []
    for _ in range(times):
        with ormtune.capture() as log:
            response = await api.get(path, user=user)
        assert response.status_code == 200, response.text
        result.append((log.count, response.json()))
    return result


async def warm(api: Api, user: int) -> None:
    """Make ``user``'s token lookup a cache hit (learn, fill, hit)."""
    for _ in range(3):
        assert (await api.get("/jobs/2147483647", user=user)).status_code == 404


async def cache_hits(api: Api, name: str) -> float:
    """Hits of the app's cache ``name`` so far, from its own /metrics."""
    response = await api.get("/metrics")
    assert response.status_code == 200
    key = ("ormtune_cache_lookups_total", frozenset({("cache", name), ("outcome", "hit")}))
    return samples(response.text).get(key, 0.0)


PAYMENTS = "GET /users/{user_id}/payments"


async def served_from_cache(api: Api, path: str, user: int, name: str) -> Any:
    """Read ``path`` until the app's cache ``name`` serves it (at most three reads: learn,
    fill, hit); returns the body. Tuned mode caches these routes' whole responses, named
    ``GET <route>``."""
    bodies = []
    for _ in range(3):
        before = await cache_hits(api, name)
        ((_, body),) = await reads(api, path, user, times=1)
        bodies.append(body)
        if await cache_hits(api, name) > before:
            assert all(other == body for other in bodies)
            return body
    raise AssertionError(f"three reads of {path} and the cache {name!r} never served one")


@pytest.mark.parametrize("path", ["/profiles/3", "/account-details"])
async def test_repeated_read_runs_no_query(
    cached_api: Api, tuned: Settings, path: str, assert_num_queries: Budget
) -> None:
    await warm(cached_api, 3)
    await reads(cached_api, path, 3, times=2)
    with assert_num_queries(0):
        response = await cached_api.get(path, user=3)
    assert response.status_code == 200
    if tuned.redis_url is not None:  # the entries are in Redis, under the test's own prefix
        client = redis.Redis.from_url(tuned.redis_url)
        try:
            entries = list(client.scan_iter(match=f"{{{tuned.cache_prefix}}}:e:*", count=1000))
        finally:
            client.close()
        assert entries


async def test_account_details_after_update(cached_api: Api, truth: Facts) -> None:
    await warm(cached_api, 3)
    before = await served_from_cache(cached_api, "/account-details", 3, "GET /account-details")
    body = {
        "holder_name": "New Name",
        "iban": "FR1420041010050500013M02606",
        "bic": "PSSTFRPP",
        "currency": "EUR",
    }
    assert (await cached_api.put("/account-details", user=3, json=body)).status_code == 200
    ((count, after),) = await reads(cached_api, "/account-details", 3, times=1)
    assert count > 0
    assert after != before
    assert {key: after[key] for key in body} == body
    stored = truth.account(3)
    assert stored is not None
    assert stored.iban == after["iban"]


async def test_user_payments_after_payment_and_confirmation(cached_api: Api, truth: Facts) -> None:
    client, worker, job = truth.payable()
    path = f"/users/{client}/payments"
    await warm(cached_api, client)
    before = await served_from_cache(cached_api, path, client, PAYMENTS)
    body = {"payee_id": worker, "job_id": job, "amount_cents": 31_337}
    created = await cached_api.post("/payments", user=client, json=body)
    assert created.status_code == 201, created.text
    new = created.json()
    ((_, after),) = await reads(cached_api, path, client, times=1)
    assert after["payments"][0] == new
    assert after["payments"][1:] == before["payments"][: len(after["payments"]) - 1]

    await served_from_cache(cached_api, path, client, PAYMENTS)
    confirmed = await cached_api.post(f"/payments/{new['id']}/confirm", user=client)
    assert confirmed.status_code == 200, confirmed.text
    ((_, final),) = await reads(cached_api, path, client, times=1)
    assert final["payments"][0]["status"] == "confirmed"
    assert final["payments"][0] == confirmed.json()


async def test_reviews_after_review(cached_api: Api, truth: Facts) -> None:
    reviewer, reviewee, job = truth.reviewable()
    path = f"/reviews/{reviewee}"
    await warm(cached_api, reviewer)
    before = await served_from_cache(cached_api, path, reviewer, "GET /reviews/{user_id}")
    body = {"reviewee_id": reviewee, "job_id": job, "rating": 1, "comment": "fresh"}
    created = await cached_api.post("/reviews", user=reviewer, json=body)
    assert created.status_code == 201, created.text
    ((_, after),) = await reads(cached_api, path, reviewer, times=1)
    assert after["count"] == before["count"] + 1
    assert after["reviews"][0] == created.json()


async def test_job_after_application(cached_api: Api, truth: Facts) -> None:
    worker, job = truth.unapplied()
    path = f"/jobs/{job}"
    await warm(cached_api, worker)
    before = await served_from_cache(cached_api, path, worker, "GET /jobs/{job_id}")
    applied = await cached_api.post(f"/jobs/{job}/apply", user=worker, json={"bid_cents": 5})
    assert applied.status_code == 201, applied.text
    ((_, after),) = await reads(cached_api, path, worker, times=1)
    assert after["applications"] == [*before["applications"], applied.json()]
