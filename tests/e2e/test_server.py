"""The app under a real uvicorn server (a subprocess on a port the kernel picked, stopped with
SIGTERM afterwards, which must exit cleanly): requests over TCP, and two tuned servers sharing
PostgreSQL and Redis, where a write through one is seen by the next read through the other."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest

from marketplace.settings import Settings
from tests.e2e.facts import Facts
from tests.e2e.harness import TIMEOUT, email, password, samples, serve

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import Backend
    from tests.e2e.harness import Dataset, Server


def login(client: httpx.Client, user: int) -> dict[str, str]:
    response = client.post("/auth/token", json={"email": email(user), "password": password(user)})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def cache_hits(client: httpx.Client, name: str) -> float:
    """Hits of the server's cache ``name`` so far, from its /metrics."""
    found = samples(client.get("/metrics").text)
    return found.get(
        ("ormtune_cache_lookups_total", frozenset({("cache", name), ("outcome", "hit")})), 0.0
    )


@pytest.fixture(scope="module")
def server(small_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One tuned server on a copy of the small data set, for the class below."""
    url = small_dataset.copy(tmp_path_factory.mktemp("uvicorn"))
    with serve(Settings(mode="tuned", database_url=url)) as running:
        yield running


class TestUvicorn:
    @pytest.fixture
    def client(self, server: Server) -> Iterator[httpx.Client]:
        with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as http:
            yield http

    def test_health_and_schema(self, client: httpx.Client) -> None:
        assert client.get("/healthz").json() == {"status": "ok"}
        schema = client.get("/openapi.json").json()
        paths = {
            f"{method.upper()} {path}" for path, ops in schema["paths"].items() for method in ops
        }
        assert {
            "GET /users/{user_id}/payments",
            "GET /payments/history",
            "POST /payments",
            "POST /payments/{payment_id}/confirm",
            "GET /reviews/{user_id}",
            "GET /reviews/by/{user_id}",
            "POST /reviews",
            "GET /profiles/{user_id}",
            "GET /account-details",
            "PUT /account-details",
            "GET /jobs/{job_id}",
            "GET /jobs",
            "POST /jobs",
            "POST /jobs/{job_id}/apply",
            "POST /auth/token",
            "GET /healthz",
        } <= paths

    def test_write_then_read(self, client: httpx.Client) -> None:
        me = login(client, 5)
        posted = client.post("/jobs", headers=me, json={"title": "over TCP", "budget_cents": 1_000})
        assert posted.status_code == 201, posted.text
        job = posted.json()
        for _ in range(3):  # the cache's learn, fill and hit
            assert client.get(f"/jobs/{job['id']}", headers=me).json() == job
        worker = login(client, 6)
        applied = client.post(f"/jobs/{job['id']}/apply", headers=worker, json={"bid_cents": 1})
        assert applied.status_code == 201, applied.text
        after = client.get(f"/jobs/{job['id']}", headers=me).json()
        assert after["applications"] == [applied.json()]

    def test_errors_are_json(self, client: httpx.Client) -> None:
        anonymous = client.get("/account-details")
        assert anonymous.status_code == 401
        assert anonymous.json()["detail"].startswith("not authenticated")
        invalid = client.get("/jobs", params={"limit": 0}, headers=login(client, 1))
        assert invalid.status_code == 422
        assert "detail" in invalid.json()

    def test_metrics(self, client: httpx.Client) -> None:
        me = login(client, 7)
        job = client.get("/jobs/1", headers=me)
        assert job.status_code == 200
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        found = samples(metrics.text)
        route = frozenset({("route", "/jobs/{job_id}")})
        assert found[("ormtune_http_server_request_db_queries_count", route)] >= 1


@pytest.mark.postgresql
def test_two_servers_share_redis(
    postgresql_copy: Backend, redis_url: str, redis_prefix: str
) -> None:
    """Two tuned servers (two processes, as uvicorn workers are) on one database and one Redis
    prefix: after a write returns through one, the next read through the other shows it, even
    though that read was being served from the shared cache."""
    settings = Settings(
        mode="tuned",
        database_url=postgresql_copy.async_url,
        redis_url=redis_url,
        cache_prefix=redis_prefix,
    )
    facts = Facts.of(postgresql_copy.sync_url)
    try:
        client_id, worker, job = facts.payable()
        reviewer, reviewee, reviewed_job = facts.reviewable()
    finally:
        facts.close()
    # one after the other: each server's start invalidates the prefix it shares
    with (
        serve(settings) as first,
        serve(settings) as second,
        httpx.Client(base_url=first.base_url, timeout=TIMEOUT) as one,
        httpx.Client(base_url=second.base_url, timeout=TIMEOUT) as two,
    ):
        assert one.get("/healthz").status_code == two.get("/healthz").status_code == 200
        pay = login(one, client_id)
        cases: list[tuple[str, dict[str, str], str, dict[str, Any]]] = [
            (
                f"/users/{client_id}/payments",
                pay,
                "/payments",
                {"payee_id": worker, "job_id": job, "amount_cents": 77},
            ),
            (
                f"/reviews/{reviewee}",
                login(one, reviewer),
                "/reviews",
                {"reviewee_id": reviewee, "job_id": reviewed_job, "rating": 4},
            ),
        ]
        for (read, headers, write, body), name in zip(
            cases, ("GET /users/{user_id}/payments", "GET /reviews/{user_id}"), strict=True
        ):
            hits = cache_hits(two, name)
            before = [two.get(read, headers=headers).json() for _ in range(4)]
            assert all(body == before[0] for body in before)
            assert cache_hits(two, name) > hits  # the shared cache served the last read
            written = one.post(write, headers=headers, json=body)
            assert written.status_code == 201, written.text
            after = two.get(read, headers=headers).json()
            assert after != before[-1]
            items = after["payments"] if "payments" in after else after["reviews"]
            assert items[0] == written.json()
