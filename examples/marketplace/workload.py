"""The marketplace's workload, as data: the demo and the load test send the same requests.

A workload is a sequence of :class:`Call` objects (method, path, acting user, JSON body), built
from the ids of a generated database (:func:`catalog_from_database`). Two builders share one set of
per-endpoint request makers:

* :func:`plan` — the demo's fixed list: every endpoint, a seeded order, the same list for the
  same data and seed (so every mode runs exactly the same requests);
* :class:`Mix` — an endless read-heavy stream for the load test (about 90% reads), one per
  simulated user, seeded per user.

Users are drawn from a Zipf distribution (a few users are read far more often than the rest,
as on a real marketplace); :class:`Zipf` is seeded and deterministic. A write that the load test
can verify has a :func:`follow_up` read: after the write returns through one server, the same
client reads the changed resource through the other and checks it shows the write.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from marketplace.db import run_on_connection
from marketplace.models import Application, Job, Payment, Review, User

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from sqlalchemy import Connection

__all__ = [
    "ENDPOINTS",
    "READS",
    "WRITES",
    "Call",
    "Catalog",
    "Check",
    "Mix",
    "Zipf",
    "catalog_from_database",
    "catalog_from_dict",
    "catalog_to_dict",
    "follow_up",
    "login",
    "plan",
]

Json = dict[str, Any]

# Every endpoint the workload sends, as "METHOD /route/template" (the table's row names).
READS = (
    "GET /users/{id}/payments",
    "GET /payments/history",
    "GET /reviews/{user_id}",
    "GET /reviews/by/{user_id}",
    "GET /profiles/{user_id}",
    "GET /account-details",
    "GET /jobs/{id}",
    "GET /jobs",
)
WRITES = (
    "POST /payments",
    "POST /payments/{id}/confirm",
    "POST /reviews",
    "PUT /account-details",
    "POST /jobs",
    "POST /jobs/{id}/apply",
)
LOGIN = "POST /auth/token"
HEALTH = "GET /healthz"
ENDPOINTS = (LOGIN, *READS, *WRITES, HEALTH)

# The load test's read-heavy mix: relative weights (reads sum to 90, writes to 10).
READ_WEIGHTS: Mapping[str, int] = {
    "GET /users/{id}/payments": 12,
    "GET /payments/history": 10,
    "GET /reviews/{user_id}": 14,
    "GET /reviews/by/{user_id}": 8,
    "GET /profiles/{user_id}": 16,
    "GET /account-details": 6,
    "GET /jobs/{id}": 14,
    "GET /jobs": 10,
}
WRITE_WEIGHTS: Mapping[str, int] = {
    "POST /payments": 2,
    "POST /payments/{id}/confirm": 1,
    "POST /reviews": 2,
    "PUT /account-details": 2,
    "POST /jobs": 1,
    "POST /jobs/{id}/apply": 2,
}


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request: ``endpoint`` is its route template (``"GET /jobs/{id}"``), ``path``
    the concrete path with its query string, ``actor`` the user whose bearer token it carries
    (None: anonymous). A login call's ``actor`` is the user it logs in."""

    endpoint: str
    path: str
    actor: int | None
    body: Json | None = None

    @property
    def method(self) -> str:
        return self.endpoint.split(" ", 1)[0]

    @property
    def is_write(self) -> bool:
        return self.endpoint in WRITES

    @property
    def is_login(self) -> bool:
        return self.endpoint == LOGIN


@dataclass(frozen=True, slots=True)
class Catalog:
    """The ids a workload draws from (see :func:`catalog_from_database`)."""

    clients: tuple[int, ...]
    workers: tuple[int, ...]
    jobs: tuple[int, ...]
    open_jobs: tuple[int, ...]
    pending_payments: Mapping[int, tuple[int, ...]]  # payer -> pending payment ids
    client_jobs: Mapping[int, tuple[int, ...]] = field(default_factory=dict)  # client -> jobs
    # reviewer -> (reviewee, job) pairs it may still review (parties of a paid job)
    reviewable: Mapping[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    applications: frozenset[tuple[int, int]] = frozenset()  # existing (worker, job) pairs

    @property
    def users(self) -> tuple[int, ...]:
        return tuple(sorted((*self.clients, *self.workers)))


def catalog_from_database(database_url: str) -> Catalog:
    """The ids the workload draws from, read from a generated database (any URL the app
    takes), in id order: the same data always gives the same catalog."""
    return run_on_connection(database_url, _read_catalog)


def _read_catalog(connection: Connection) -> Catalog:
    users = connection.execute(select(User.id, User.role).order_by(User.id)).all()
    jobs = connection.execute(select(Job.id, Job.client_id, Job.status).order_by(Job.id)).all()
    payments = connection.execute(
        select(
            Payment.id, Payment.payer_id, Payment.payee_id, Payment.job_id, Payment.status
        ).order_by(Payment.id)
    ).all()
    reviewed = {
        (row.reviewer_id, row.reviewee_id, row.job_id)
        for row in connection.execute(select(Review.reviewer_id, Review.reviewee_id, Review.job_id))
    }
    applications = connection.execute(select(Application.worker_id, Application.job_id)).all()
    pending: dict[int, list[int]] = {}
    reviewable: dict[int, list[tuple[int, int]]] = {}
    for payment in payments:
        if payment.status == "pending":
            pending.setdefault(payment.payer_id, []).append(payment.id)
            continue
        parties = ((payment.payer_id, payment.payee_id), (payment.payee_id, payment.payer_id))
        for me, them in parties:
            if (me, them, payment.job_id) not in reviewed:
                reviewable.setdefault(me, []).append((them, payment.job_id))
    client_jobs: dict[int, list[int]] = {}
    for job in jobs:
        client_jobs.setdefault(job.client_id, []).append(job.id)
    return Catalog(
        clients=tuple(user.id for user in users if user.role == "client"),
        workers=tuple(user.id for user in users if user.role == "worker"),
        jobs=tuple(job.id for job in jobs),
        open_jobs=tuple(job.id for job in jobs if job.status == "open"),
        pending_payments={payer: tuple(ids) for payer, ids in pending.items()},
        client_jobs={client: tuple(ids) for client, ids in client_jobs.items()},
        reviewable={who: tuple(pairs) for who, pairs in reviewable.items()},
        applications=frozenset((row.worker_id, row.job_id) for row in applications),
    )


def catalog_to_dict(catalog: Catalog) -> dict[str, Any]:
    """``catalog`` as JSON-ready data (the load test hands it to its simulated users)."""
    return {
        "clients": list(catalog.clients),
        "workers": list(catalog.workers),
        "jobs": list(catalog.jobs),
        "open_jobs": list(catalog.open_jobs),
        "pending_payments": {str(k): list(v) for k, v in catalog.pending_payments.items()},
        "client_jobs": {str(k): list(v) for k, v in catalog.client_jobs.items()},
        "reviewable": {str(k): [list(p) for p in v] for k, v in catalog.reviewable.items()},
        "applications": [list(pair) for pair in catalog.applications],
    }


def catalog_from_dict(data: Mapping[str, Any]) -> Catalog:
    """The inverse of :func:`catalog_to_dict`."""
    return Catalog(
        clients=tuple(data["clients"]),
        workers=tuple(data["workers"]),
        jobs=tuple(data["jobs"]),
        open_jobs=tuple(data["open_jobs"]),
        pending_payments={int(k): tuple(v) for k, v in data["pending_payments"].items()},
        client_jobs={int(k): tuple(v) for k, v in data["client_jobs"].items()},
        reviewable={
            int(k): tuple((int(a), int(b)) for a, b in v) for k, v in data["reviewable"].items()
        },
        applications=frozenset((int(a), int(b)) for a, b in data["applications"]),
    )


def login(user: int) -> Call:
    """The token request of generated user ``user`` (see marketplace.data)."""
    body = {"email": f"user{user}@example.com", "password": f"password-{user}"}
    return Call(LOGIN, "/auth/token", user, body)


class Zipf:
    """Seeded draws from ``items`` with probability proportional to ``1 / rank ** s``.

    Ranks are a seeded permutation of the items, so the hot users are spread over the id range
    rather than being the lowest ids.
    """

    def __init__(self, items: Sequence[int], *, s: float = 1.1, seed: int = 0) -> None:
        if not items:
            raise ValueError("Zipf needs at least one item to draw from")
        ranked = list(items)
        random.Random(seed).shuffle(ranked)
        self.items = tuple(ranked)
        self._cumulative = list(
            itertools.accumulate(1.0 / rank**s for rank in range(1, len(ranked) + 1))
        )

    def draw(self, rng: random.Random) -> int:
        point = rng.random() * self._cumulative[-1]
        return self.items[min(bisect.bisect_right(self._cumulative, point), len(self.items) - 1)]


def _pick(
    rng: random.Random, ordered: list[int], work: Mapping[int, Sequence[object]]
) -> int | None:
    """A random user among the first ten of ``ordered`` who still have ``work`` left."""
    while ordered and not work.get(ordered[0]):
        ordered.pop(0)
    candidates = [user for user in ordered[:10] if work.get(user)]
    return rng.choice(candidates) if candidates else None


class _Makers:
    """One request maker per endpoint; each returns None when the catalog cannot serve it
    (for example no pending payment left for that payer)."""

    def __init__(self, catalog: Catalog, seed: int, *, sessions: int | None = None) -> None:
        self.catalog = catalog
        # what is read: Zipf over every user and job
        self.users = Zipf(catalog.users, seed=seed)
        self.jobs = Zipf(catalog.jobs, seed=seed + 3)
        self.open_jobs = Zipf(catalog.open_jobs or catalog.jobs, seed=seed + 4)
        # who acts when no actor is given: Zipf over `sessions` users (all if None)
        active = set(self.users.items[:sessions] if sessions else catalog.users)
        clients = [user for user in catalog.clients if user in active] or catalog.clients
        workers = [user for user in catalog.workers if user in active] or catalog.workers
        self.actors = Zipf(sorted(active), seed=seed + 5)
        self.clients = Zipf(clients, seed=seed + 1)
        self.workers = Zipf(workers, seed=seed + 2)
        self._pending = {payer: list(ids) for payer, ids in catalog.pending_payments.items()}
        # active ones first, then the others once the active ones have nothing left to do
        payers = sorted(self._pending, key=lambda payer: (payer not in active, payer))
        self._payers = payers
        self._applied: set[tuple[int, int]] = set(catalog.applications)
        self._applicants: dict[int, list[int]] = {}
        for worker, job in sorted(catalog.applications):
            self._applicants.setdefault(job, []).append(worker)
        self._client_set = frozenset(catalog.clients)
        self._worker_set = frozenset(catalog.workers)
        self._reviewable = {who: list(pairs) for who, pairs in catalog.reviewable.items()}
        self._reviewers = sorted(self._reviewable, key=lambda who: (who not in active, who))
        self._sequence = itertools.count(1)
        self.by_endpoint: dict[str, Callable[[random.Random, int | None], Call | None]] = {
            "GET /users/{id}/payments": self.user_payments,
            "GET /payments/history": self.payment_history,
            "GET /reviews/{user_id}": self.reviews_received,
            "GET /reviews/by/{user_id}": self.reviews_given,
            "GET /profiles/{user_id}": self.profile,
            "GET /account-details": self.account_details,
            "GET /jobs/{id}": self.job,
            "GET /jobs": self.job_list,
            "POST /payments": self.create_payment,
            "POST /payments/{id}/confirm": self.confirm_payment,
            "POST /reviews": self.create_review,
            "PUT /account-details": self.update_account_details,
            "POST /jobs": self.create_job,
            "POST /jobs/{id}/apply": self.apply,
            HEALTH: self.health,
        }

    # Actors: with no `actor` given (the demo), one of the right role is drawn; a given actor
    # (the load test's simulated user is one marketplace user) is used when it has the role
    # the call needs, and the call is skipped (None) otherwise.
    def _client(self, rng: random.Random, actor: int | None) -> int | None:
        if actor is None:
            return self.clients.draw(rng)
        return actor if actor in self._client_set else None

    def _worker(self, rng: random.Random, actor: int | None) -> int | None:
        if actor is None:
            return self.workers.draw(rng)
        return actor if actor in self._worker_set else None

    def _anyone(self, rng: random.Random, actor: int | None) -> int:
        return actor if actor is not None else self.actors.draw(rng)

    def user_payments(self, rng: random.Random, actor: int | None) -> Call:
        # a user's own payments only (another user's answer 403)
        target = self._anyone(rng, actor)
        return Call("GET /users/{id}/payments", f"/users/{target}/payments", target)

    def payment_history(self, rng: random.Random, actor: int | None) -> Call:
        return Call("GET /payments/history", "/payments/history", self._anyone(rng, actor))

    def reviews_received(self, rng: random.Random, actor: int | None) -> Call:
        target = self.users.draw(rng)
        return Call("GET /reviews/{user_id}", f"/reviews/{target}", self._anyone(rng, actor))

    def reviews_given(self, rng: random.Random, actor: int | None) -> Call:
        target = self.users.draw(rng)
        return Call("GET /reviews/by/{user_id}", f"/reviews/by/{target}", self._anyone(rng, actor))

    def profile(self, rng: random.Random, actor: int | None) -> Call:
        target = self.users.draw(rng)
        return Call("GET /profiles/{user_id}", f"/profiles/{target}", self._anyone(rng, actor))

    def account_details(self, rng: random.Random, actor: int | None) -> Call:
        return Call("GET /account-details", "/account-details", self._anyone(rng, actor))

    def job(self, rng: random.Random, actor: int | None) -> Call:
        return Call("GET /jobs/{id}", f"/jobs/{self.jobs.draw(rng)}", self._anyone(rng, actor))

    def job_list(self, rng: random.Random, actor: int | None) -> Call:
        limit = rng.choice((10, 20))
        query = rng.choice((f"?status=open&limit={limit}", f"?limit={limit}"))
        return Call("GET /jobs", f"/jobs{query}", self._anyone(rng, actor))

    def create_payment(self, rng: random.Random, actor: int | None) -> Call | None:
        payer = self._client(rng, actor)
        if payer is None:
            return None
        jobs = [job for job in self.catalog.client_jobs.get(payer, ()) if self._applicants.get(job)]
        if not jobs:
            return None
        job = rng.choice(jobs)
        payee = rng.choice(self._applicants[job])  # only a worker who applied can be paid
        body = {"payee_id": payee, "job_id": job, "amount_cents": rng.randint(1_000, 50_000)}
        return Call("POST /payments", "/payments", payer, body)

    def confirm_payment(self, rng: random.Random, actor: int | None) -> Call | None:
        payer = actor if actor is not None else _pick(rng, self._payers, self._pending)
        if payer is None:
            return None
        pending = self._pending.get(payer)
        if not pending:
            return None
        payment = pending.pop(0)
        return Call("POST /payments/{id}/confirm", f"/payments/{payment}/confirm", payer)

    def create_review(self, rng: random.Random, actor: int | None) -> Call | None:
        reviewer = actor if actor is not None else _pick(rng, self._reviewers, self._reviewable)
        if reviewer is None:
            return None
        options = self._reviewable.get(reviewer)
        if not options:
            return None
        reviewee, job = options.pop(0)
        number = next(self._sequence)
        body = {
            "reviewee_id": reviewee,
            "job_id": job,
            "rating": rng.randint(1, 5),
            "comment": f"review {number} by {reviewer}",
        }
        return Call("POST /reviews", "/reviews", reviewer, body)

    def update_account_details(self, rng: random.Random, actor: int | None) -> Call:
        owner = self._anyone(rng, actor)
        number = next(self._sequence)
        body = {
            "holder_name": f"Holder {owner}",
            "iban": f"DE{number % 100:02d}{owner:010d}{number:010d}",
            "bic": "DEUTDEFF" + ("500" if number % 2 else ""),
            "currency": rng.choice(("EUR", "USD", "GBP")),
        }
        return Call("PUT /account-details", "/account-details", owner, body)

    def create_job(self, rng: random.Random, actor: int | None) -> Call | None:
        client = self._client(rng, actor)
        if client is None:
            return None
        number = next(self._sequence)
        body = {
            "title": f"job {number} of client {client}",
            "description": "posted by the workload",
            "budget_cents": rng.randint(5_000, 500_000),
        }
        return Call("POST /jobs", "/jobs", client, body)

    def apply(self, rng: random.Random, actor: int | None) -> Call | None:
        worker = self._worker(rng, actor)
        if worker is None:
            return None
        job = self.open_jobs.draw(rng)
        for _ in range(50):  # a job this worker has not applied to yet
            if (worker, job) not in self._applied:
                break
            job = self.open_jobs.draw(rng)
        else:
            return None
        self._applied.add((worker, job))
        body = {"cover_letter": f"worker {worker} applies", "bid_cents": rng.randint(5_000, 90_000)}
        return Call("POST /jobs/{id}/apply", f"/jobs/{job}/apply", worker, body)

    def health(self, rng: random.Random, actor: int | None) -> Call:
        return Call(HEALTH, "/healthz", None)


def plan(catalog: Catalog, *, requests: int, seed: int = 0, sessions: int = 40) -> list[Call]:
    """The demo's workload: ``requests`` calls over every endpoint, in a seeded order.

    Each endpoint gets an equal share (so every row of the table has as many samples). What is
    read (profiles, reviews, jobs) is Zipf-distributed over all users and jobs; who acts is
    Zipf-distributed over ``sessions`` users (logged-in users active at once), and a login
    call comes before the first call of each acting user. The same catalog, size and seed
    always give the same list.
    """
    rng = random.Random(seed)
    makers = _Makers(catalog, seed, sessions=sessions)
    endpoints = [*READS, *WRITES, HEALTH]
    per_endpoint = max(1, requests // len(endpoints))
    slots = [endpoint for endpoint in endpoints for _ in range(per_endpoint)]
    rng.shuffle(slots)
    calls: list[Call] = []
    logged_in: set[int] = set()
    for endpoint in slots:
        call = makers.by_endpoint[endpoint](rng, None)
        if call is None:
            continue
        if call.actor is not None and call.actor not in logged_in:
            logged_in.add(call.actor)
            calls.append(login(call.actor))
        calls.append(call)
    return calls


class Mix:
    """The load test's endless stream for one simulated user acting as ``actor``: 90% reads
    and 10% writes (``READ_WEIGHTS`` / ``WRITE_WEIGHTS`` within each), targets Zipf-distributed.

    Read or write is drawn first, then the endpoint; a write this user cannot make (a worker
    posting a job, no pending payment left to confirm) is replaced by another write, so the
    share of writes stays 10% whatever the user's role (``PUT /account-details`` is always
    possible).
    """

    def __init__(self, catalog: Catalog, actor: int, *, seed: int) -> None:
        self.actor = actor
        self._rng = random.Random(seed)
        # The Zipf ranking is the same for every simulated user (seed 0): they share hot users.
        self._makers = _Makers(catalog, 0)
        self._classes = [_Weighted(READ_WEIGHTS), _Weighted(WRITE_WEIGHTS)]
        reads, writes = sum(READ_WEIGHTS.values()), sum(WRITE_WEIGHTS.values())
        self._read_share = reads / (reads + writes)

    def __iter__(self) -> Iterator[Call]:
        return self

    def __next__(self) -> Call:
        endpoints = self._classes[self._rng.random() >= self._read_share]
        while True:
            call = self._makers.by_endpoint[endpoints.draw(self._rng)](self._rng, self.actor)
            if call is not None:
                return call


class _Weighted:
    """Seeded weighted draws of endpoint names."""

    def __init__(self, weights: Mapping[str, int]) -> None:
        self._names = list(weights)
        self._cumulative = list(itertools.accumulate(weights.values()))

    def draw(self, rng: random.Random) -> str:
        return self._names[
            bisect.bisect_right(self._cumulative, rng.random() * self._cumulative[-1])
        ]


@dataclass(frozen=True, slots=True)
class Check:
    """A read that must show a write: ``call`` is the read, ``shows(body)`` is True when the
    read's JSON body reflects the write, ``what`` describes it for a violation report."""

    call: Call
    shows: Callable[[Any], bool]
    what: str


def _items(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("items", "payments", "reviews", "applications"):
            if isinstance(body.get(key), list):
                return list(body[key])
    return []


def follow_up(call: Call, response: Any) -> Check | None:
    """The read that must show ``call``'s write (given the write's JSON response), or None for
    a write this workload does not verify."""
    actor = call.actor
    if call.endpoint == "PUT /account-details" and call.body is not None:
        expected = dict(call.body)
        read = Call("GET /account-details", "/account-details", actor)
        return Check(
            read,
            lambda body: (
                isinstance(body, dict) and all(body.get(k) == v for k, v in expected.items())
            ),
            f"account details of user {actor} = {expected}",
        )
    new_id = response.get("id") if isinstance(response, dict) else None
    if new_id is None:
        return None
    if call.endpoint == "POST /payments":
        read = Call("GET /payments/history", "/payments/history", actor)
        return Check(
            read,
            lambda body: any(item.get("id") == new_id for item in _items(body)),
            f"payment {new_id} in the history of user {actor}",
        )
    if call.endpoint == "POST /reviews" and call.body is not None:
        reviewee = call.body["reviewee_id"]
        read = Call("GET /reviews/{user_id}", f"/reviews/{reviewee}", actor)
        return Check(
            read,
            lambda body: any(item.get("id") == new_id for item in _items(body)),
            f"review {new_id} among the reviews of user {reviewee}",
        )
    if call.endpoint == "POST /jobs/{id}/apply":
        job = call.path.split("/")[2]
        read = Call("GET /jobs/{id}", f"/jobs/{job}", actor)
        return Check(
            read,
            lambda body: any(item.get("id") == new_id for item in _items(body)),
            f"application {new_id} on job {job}",
        )
    return None
