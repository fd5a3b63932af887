"""Query budgets per endpoint: in tuned mode a request costs the same number of statements at
20 users as at 200 (where the subject user has far more payments, reviews and applications),
while the same code in naive mode costs more as the data grows (control against treatment).

The subject is the first client; :meth:`Facts.enrich` gives it three new jobs and, per worker,
an application, a payment and a review each way (60 rows at 20 users, that is 10 workers;
150 rows at 200 users, 100 workers), so its responses name 10 workers at the small scale and
up to 50 at the large one. Each request is counted on a fresh app after the bearer token's
lookup is warm (three requests: the cache learns a statement shape, fills, then hits).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

import ormtune
from marketplace.models import Payment
from marketplace.settings import Settings
from tests.e2e.facts import Facts
from tests.e2e.harness import Api, open_api

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import httpx

    from marketplace.settings import Mode
    from ormtune.testing import QueryBudget
    from tests.e2e.harness import Dataset

    Budget = Callable[[int], QueryBudget]


@dataclass(frozen=True)
class Scale:
    """An enriched copy of a data set and the subjects of its requests."""

    users: int
    template: Path
    client: int
    jobs: list[int]  # the client's three new jobs (every worker applied to each)
    worker: int  # a worker who applied to jobs[0]
    pending: int  # a pending payment of the client
    unapplied: tuple[int, int]  # (worker, open job) with no application yet
    reviewable: tuple[int, int, int]  # (reviewer, reviewee, job): confirmed payment, no review

    def copy(self, directory: Path) -> str:
        target = directory / f"budget-{self.users}.db"
        shutil.copyfile(self.template, target)
        return f"sqlite+aiosqlite:///{target}"


def enriched(dataset: Dataset, directory: Path, rows: int) -> Scale:
    template = directory / f"enriched-{dataset.users}.db"
    shutil.copyfile(dataset.path, template)
    facts = Facts.of(f"sqlite:///{template}")
    try:
        client = facts.users("client")[0]
        jobs = facts.enrich(client, rows)
        pending = facts.scalar(
            select(Payment.id)
            .where(Payment.payer_id == client, Payment.status == "pending")
            .order_by(Payment.id.desc())
            .limit(1)
        )
        return Scale(
            users=dataset.users,
            template=template,
            client=client,
            jobs=jobs,
            worker=facts.applicants(jobs[0])[0],
            pending=int(pending),
            unapplied=facts.unapplied(),
            reviewable=facts.reviewable(),
        )
    finally:
        facts.close()


@pytest.fixture(scope="module")
def scales(
    small_dataset: Dataset, large_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Scale, Scale]:
    directory = tmp_path_factory.mktemp("budgets")
    return enriched(small_dataset, directory, 60), enriched(large_dataset, directory, 150)


@dataclass(frozen=True)
class Call:
    """One request of an endpoint at a scale: method, path, acting user, JSON body."""

    method: str
    path: str
    user: int
    body: dict[str, Any] | None = None


READS: dict[str, Callable[[Scale], Call]] = {
    "GET /users/{id}/payments": lambda s: Call("GET", f"/users/{s.client}/payments", s.client),
    "GET /payments/history": lambda s: Call("GET", "/payments/history", s.client),
    "GET /reviews/{user_id}": lambda s: Call("GET", f"/reviews/{s.client}", s.client),
    "GET /reviews/by/{user_id}": lambda s: Call("GET", f"/reviews/by/{s.client}", s.client),
    "GET /profiles/{user_id}": lambda s: Call("GET", f"/profiles/{s.client}", s.client),
    "GET /account-details": lambda s: Call("GET", "/account-details", s.client),
    "GET /jobs/{id}": lambda s: Call("GET", f"/jobs/{s.jobs[0]}", s.client),
    "GET /jobs": lambda s: Call("GET", "/jobs?status=open&limit=20", s.client),
}
WRITES: dict[str, Callable[[Scale], Call]] = {
    "POST /jobs": lambda s: Call(
        "POST", "/jobs", s.client, {"title": "budget", "description": "", "budget_cents": 900}
    ),
    "POST /jobs/{id}/apply": lambda s: Call(
        "POST", f"/jobs/{s.unapplied[1]}/apply", s.unapplied[0], {"bid_cents": 1_000}
    ),
    "POST /payments": lambda s: Call(
        "POST",
        "/payments",
        s.client,
        {"payee_id": s.worker, "job_id": s.jobs[0], "amount_cents": 700},
    ),
    "POST /payments/{id}/confirm": lambda s: Call(
        "POST", f"/payments/{s.pending}/confirm", s.client
    ),
    "POST /reviews": lambda s: Call(
        "POST",
        "/reviews",
        s.reviewable[0],
        {"reviewee_id": s.reviewable[1], "job_id": s.reviewable[2], "rating": 5},
    ),
    "PUT /account-details": lambda s: Call(
        "PUT",
        "/account-details",
        s.client,
        {
            "holder_name": "B. Udget",
            "iban": "DE89370400440532013000",
            "bic": "COBADEFFXXX",
            "currency": "EUR",
        },
    ),
}

# Statements per write request (tuned: the token lookup is warm), the same at both scales.
TUNED = {
    "POST /jobs": 2,
    "POST /jobs/{id}/apply": 2,
    "POST /payments": 4,
    "POST /payments/{id}/confirm": 4,
    "POST /reviews": 4,
    "PUT /account-details": 2,
}
# Handwritten and tuned counts are structural (one statement per query or batch); naive
# depends on how many distinct rows a response names, and is only compared.
HANDWRITTEN = {
    "GET /users/{id}/payments": 3,
    "GET /payments/history": 2,
    "GET /reviews/{user_id}": 3,
    "GET /reviews/by/{user_id}": 2,
    "GET /profiles/{user_id}": 2,
    "GET /account-details": 2,
    "GET /jobs/{id}": 3,
    "GET /jobs": 2,
    "POST /jobs": 3,
    "POST /jobs/{id}/apply": 3,
    "POST /payments": 5,
    "POST /payments/{id}/confirm": 5,
    "POST /reviews": 5,
    "PUT /account-details": 3,
}
# Endpoints whose response lists the subject's rows: naive mode loads each row's related
# users and jobs one by one, so it costs more at the larger scale.
GROWS = {
    "GET /users/{id}/payments",
    "GET /payments/history",
    "GET /reviews/{user_id}",
    "GET /reviews/by/{user_id}",
    "GET /jobs/{id}",
    "GET /jobs",  # more distinct clients on the page
}
# Three requests in a row in tuned mode. A query by primary key (session.get) is stored on
# its first miss; any other is stored on its second (the first teaches the cache which tables
# it reads); from then on it is a hit. What the view then follows lazily (payer, payee, job,
# reviewer...) is batched by autoload, and those batches are cached with the query that loaded
# the objects, as is a relationship of a single cached object (one job's applications). Every
# read endpoint is cached in tuned mode, and its whole response once its queries are: a warm
# read runs nothing.
TUNED_SEQUENCE = {
    "GET /users/{id}/payments": (4, 4, 0),
    "GET /payments/history": (3, 3, 0),
    "GET /reviews/{user_id}": (4, 4, 0),
    "GET /reviews/by/{user_id}": (3, 3, 0),
    "GET /profiles/{user_id}": (1, 1, 0),
    "GET /account-details": (1, 1, 0),
    "GET /jobs/{id}": (3, 2, 0),
    "GET /jobs": (2, 2, 0),
}
STATUS = {"GET": 200, "PUT": 200, "POST /payments/{id}/confirm": 200}


def expected_status(endpoint: str) -> int:
    return STATUS.get(endpoint, STATUS.get(endpoint.split(" ")[0], 201))


async def warm(api: Api, user: int) -> None:
    """Log ``user`` in and, in tuned mode, make its token's lookup a cache hit."""
    await api.token(user)
    if api.mode == "tuned":
        for _ in range(3):
            response = await api.get("/jobs/2147483647", user=user)
            assert response.status_code == 404, response.text


async def send(api: Api, call: Call) -> httpx.Response:
    return await api.request(call.method, call.path, user=call.user, json=call.body)


async def count(mode: Mode, scale: Scale, directory: Path, endpoint: str, call: Call) -> int:
    """Statements of one request of ``endpoint`` on a fresh app in ``mode``."""
    async with open_api(Settings(mode=mode, database_url=scale.copy(directory))) as api:
        await warm(api, call.user)
        with ormtune.capture() as log:
            response = await send(api, call)
        assert response.status_code == expected_status(endpoint), response.text
        return log.count


async def counts_of(
    endpoint: str,
    calls: dict[str, Callable[[Scale], Call]],
    scales: tuple[Scale, Scale],
    directory: Path,
    modes: tuple[Mode, ...],
) -> dict[str, list[int]]:
    """Statements of one request of ``endpoint`` per mode, at the small and the large scale."""
    counts: dict[str, list[int]] = {mode: [] for mode in modes}
    for mode in modes:
        for scale in scales:
            counts[mode].append(
                await count(mode, scale, directory, endpoint, calls[endpoint](scale))
            )
    return counts


@pytest.mark.parametrize("endpoint", list(READS))
async def test_read_budget(
    endpoint: str, scales: tuple[Scale, Scale], tmp_path: Path, assert_num_queries: Budget
) -> None:
    """Tuned: the same statement counts at both scales, for a cold cache and for the same
    read repeated (the cache's learn, fill and hit), with the same response every time.
    Naive (the control): more statements at the larger scale where the response lists more
    rows. Handwritten: exact and flat too."""
    for scale in scales:
        call = READS[endpoint](scale)
        settings = Settings(mode="tuned", database_url=scale.copy(tmp_path))
        async with open_api(settings) as api:
            await warm(api, call.user)
            bodies = []
            for expected in TUNED_SEQUENCE[endpoint]:
                with assert_num_queries(expected):
                    response = await send(api, call)
                assert response.status_code == 200, response.text
                bodies.append(response.json())
            assert bodies[0] == bodies[1] == bodies[2]

    counts = await counts_of(endpoint, READS, scales, tmp_path, ("naive", "handwritten"))
    assert counts["handwritten"] == [HANDWRITTEN[endpoint]] * 2, counts
    small, large = counts["naive"]
    if endpoint in GROWS:
        assert small < large, f"naive mode should cost more with more data: {counts}"
        assert large > TUNED_SEQUENCE[endpoint][0], counts
    else:
        assert small == large, counts


@pytest.mark.parametrize("endpoint", list(WRITES))
async def test_write_budget(endpoint: str, scales: tuple[Scale, Scale], tmp_path: Path) -> None:
    counts = await counts_of(endpoint, WRITES, scales, tmp_path, ("tuned", "handwritten"))
    assert counts == {"tuned": [TUNED[endpoint]] * 2, "handwritten": [HANDWRITTEN[endpoint]] * 2}
