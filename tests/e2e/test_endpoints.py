"""Every endpoint over HTTP, in every mode (naive, tuned, handwritten), through an httpx client
on the app with its lifespan running; responses are checked against the database itself."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from marketplace.models import Application, Job, Payment, Review, utcnow
from tests.e2e.harness import samples, utc

if TYPE_CHECKING:
    from tests.e2e.facts import Facts
    from tests.e2e.harness import Api


def ref(facts: Facts, user: int) -> dict[str, Any]:
    return {"id": user, "name": facts.name(user)}


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def payment_json(facts: Facts, payment: Payment) -> dict[str, Any]:
    return {
        "id": payment.id,
        "payer": ref(facts, payment.payer_id),
        "payee": ref(facts, payment.payee_id),
        "job": {"id": payment.job_id, "title": facts.job_title(payment.job_id)},
        "amount_cents": payment.amount_cents,
        "status": payment.status,
        "created_at": iso(payment.created_at),
        "confirmed_at": iso(payment.confirmed_at),
    }


def review_json(facts: Facts, review: Review) -> dict[str, Any]:
    return {
        "id": review.id,
        "reviewer": ref(facts, review.reviewer_id),
        "reviewee": ref(facts, review.reviewee_id),
        "job": {"id": review.job_id, "title": facts.job_title(review.job_id)},
        "rating": review.rating,
        "comment": review.comment,
        "created_at": iso(review.created_at),
    }


class TestSystem:
    async def test_healthz(self, api: Api) -> None:
        response = await api.get("/healthz")
        assert response.status_code == 200
        assert utc(response.json()) == {"status": "ok"}

    async def test_metrics(self, api: Api) -> None:
        job = await api.get("/jobs/1", user=1)
        assert job.status_code == 200
        response = await api.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        found = samples(response.text)
        if api.mode != "tuned":
            assert found[("marketplace_info", frozenset({("mode", api.mode)}))] == 1.0
            return
        # ormtune's middleware counted the request's statements, as its header said
        queries = int(job.headers["x-query-count"])
        assert queries > 0
        route = frozenset({("route", "/jobs/{job_id}")})
        assert found[("ormtune_http_server_request_db_queries_sum", route)] == queries
        assert found[("ormtune_http_server_request_db_queries_count", route)] == 1
        # the job, and its applications (a lone load of a cached object: read through the
        # cache too; its client is the requesting user, in the session already)
        miss = frozenset({("cache", "job_detail"), ("outcome", "miss")})
        assert found[("ormtune_cache_lookups_total", miss)] == 2


class TestAuth:
    async def test_login(self, api: Api) -> None:
        before = utcnow()
        response = await api.post(
            "/auth/token", json={"email": "user3@example.com", "password": "password-3"}
        )
        assert response.status_code == 200, response.text
        body = utc(response.json())
        assert set(body) == {"access_token", "token_type", "expires_at"}
        assert body["token_type"] == "bearer"
        ttl = timedelta(seconds=api.settings.token_ttl_seconds)
        expires = datetime.fromisoformat(body["expires_at"])
        assert before + ttl <= expires <= utcnow() + ttl
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        me = await api.client.get("/account-details", headers=headers)
        assert me.status_code == 200
        assert utc(me.json())["user_id"] == 3

    async def test_wrong_password_or_email(self, api: Api) -> None:
        for body in (
            {"email": "user3@example.com", "password": "password-4"},
            {"email": "nobody@example.com", "password": "password-3"},
        ):
            response = await api.post("/auth/token", json=body)
            assert response.status_code == 401
            assert utc(response.json()) == {"detail": "wrong email or password"}


class TestPayments:
    async def test_user_payments(self, api: Api, facts: Facts) -> None:
        payer = facts.busiest(Payment, Payment.payer_id)
        response = await api.get(f"/users/{payer}/payments", user=payer)
        assert response.status_code == 200, response.text
        expected = [payment_json(facts, p) for p in facts.payments_of(payer)[:50]]
        assert expected
        assert utc(response.json()) == {"user_id": payer, "payments": expected}

    async def test_history_pages(self, api: Api, facts: Facts) -> None:
        payee = facts.busiest(Payment, Payment.payee_id)
        items = await api.pages("/payments/history", user=payee, limit=2)
        expected = facts.payments_of(payee)
        assert len(expected) > 2  # more than one page
        assert [item["id"] for item in items] == [p.id for p in expected]
        for item, payment in zip(items, expected, strict=True):
            sent = payment.payer_id == payee
            assert item["direction"] == ("sent" if sent else "received")
            other = payment.payee_id if sent else payment.payer_id
            assert item["counterparty"] == ref(facts, other)
            assert item["job"]["id"] == payment.job_id
            assert item["amount_cents"] == payment.amount_cents

    async def test_pay(self, api: Api, facts: Facts) -> None:
        client, worker, job = facts.payable()
        body = {"payee_id": worker, "job_id": job, "amount_cents": 12_345}
        before = await api.get("/payments/history", user=worker)
        response = await api.post("/payments", user=client, json=body)
        assert response.status_code == 201, response.text
        created = utc(response.json())
        assert created["payer"] == ref(facts, client)
        assert created["payee"] == ref(facts, worker)
        assert created["job"]["id"] == job
        assert (created["amount_cents"], created["status"]) == (12_345, "pending")
        assert created["confirmed_at"] is None
        (stored,) = [p for p in facts.payments_of(worker) if p.id == created["id"]]
        assert payment_json(facts, stored) == created
        after = utc((await api.get("/payments/history", user=worker)).json())["items"]
        assert after[0]["id"] == created["id"]
        assert after[0]["direction"] == "received"
        assert after[1:] == utc(before.json())["items"][: len(after) - 1]

    async def test_confirm(self, api: Api, facts: Facts) -> None:
        pending = facts.pending_payment()
        path = f"/payments/{pending.id}/confirm"
        response = await api.post(path, user=pending.payer_id)
        assert response.status_code == 200, response.text
        confirmed = utc(response.json())
        assert confirmed["status"] == "confirmed"
        assert confirmed["confirmed_at"] is not None
        (stored,) = [p for p in facts.payments_of(pending.payer_id) if p.id == pending.id]
        assert stored.status == "confirmed"
        assert payment_json(facts, stored) == confirmed
        again = await api.post(path, user=pending.payer_id)
        assert again.status_code == 409
        assert utc(again.json()) == {"detail": f"payment {pending.id} is already confirmed"}


class TestReviews:
    async def test_received(self, api: Api, facts: Facts) -> None:
        user = facts.busiest(Review, Review.reviewee_id)
        response = await api.get(f"/reviews/{user}", user=1)
        assert response.status_code == 200, response.text
        reviews = facts.reviews_received(user)
        assert len(reviews) > 1
        assert utc(response.json()) == {
            "user_id": user,
            "count": len(reviews),
            "average_rating": round(sum(r.rating for r in reviews) / len(reviews), 2),
            "reviews": [review_json(facts, r) for r in reviews[:50]],
        }

    async def test_received_none(self, api: Api, facts: Facts) -> None:
        nobody = next(u for u in facts.users() if not facts.reviews_received(u))
        response = await api.get(f"/reviews/{nobody}", user=1)
        assert response.status_code == 200
        assert utc(response.json()) == {
            "user_id": nobody,
            "count": 0,
            "average_rating": None,
            "reviews": [],
        }

    async def test_given(self, api: Api, facts: Facts) -> None:
        user = facts.busiest(Review, Review.reviewer_id)
        response = await api.get(f"/reviews/by/{user}", user=2)
        assert response.status_code == 200, response.text
        reviews = facts.reviews_given(user)
        assert reviews
        assert utc(response.json()) == {
            "user_id": user,
            "reviews": [review_json(facts, r) for r in reviews[:50]],
        }

    async def test_write(self, api: Api, facts: Facts) -> None:
        reviewer, reviewee, job = facts.reviewable()
        received = utc((await api.get(f"/reviews/{reviewee}", user=reviewer)).json())
        body = {"reviewee_id": reviewee, "job_id": job, "rating": 2, "comment": "late"}
        response = await api.post("/reviews", user=reviewer, json=body)
        assert response.status_code == 201, response.text
        created = utc(response.json())
        (stored,) = [r for r in facts.reviews_given(reviewer) if r.id == created["id"]]
        assert review_json(facts, stored) == created
        assert (created["rating"], created["comment"]) == (2, "late")
        now = utc((await api.get(f"/reviews/{reviewee}", user=reviewer)).json())
        assert now["count"] == received["count"] + 1
        assert now["reviews"][0] == created
        given = utc((await api.get(f"/reviews/by/{reviewer}", user=reviewee)).json())
        assert given["reviews"][0] == created
        again = await api.post("/reviews", user=reviewer, json=body)
        assert again.status_code == 409


class TestAccounts:
    async def test_profile(self, api: Api, facts: Facts) -> None:
        response = await api.get("/profiles/4", user=1)
        assert response.status_code == 200, response.text
        body = utc(response.json())
        assert body["user_id"] == 4
        assert body["name"] == facts.name(4)
        assert body["role"] == facts.role(4) == "worker"
        assert len(body["skills"]) == 3
        assert set(body) == {
            "user_id",
            "name",
            "role",
            "headline",
            "bio",
            "skills",
            "city",
            "hourly_rate_cents",
            "member_since",
        }

    async def test_account_details(self, api: Api, facts: Facts) -> None:
        response = await api.get("/account-details", user=5)
        assert response.status_code == 200, response.text
        stored = facts.account(5)
        assert stored is not None
        assert utc(response.json()) == {
            "user_id": 5,
            "holder_name": stored.holder_name,
            "iban": stored.iban,
            "bic": stored.bic,
            "currency": stored.currency,
            "updated_at": iso(stored.updated_at),
        }

    async def test_update_account_details(self, api: Api, facts: Facts) -> None:
        assert (await api.get("/account-details", user=5)).status_code == 200
        body = {
            "holder_name": "Ada Lovelace",
            "iban": "GB29NWBK60161331926819",
            "bic": "NWBKGB2L",
            "currency": "GBP",
        }
        response = await api.put("/account-details", user=5, json=body)
        assert response.status_code == 200, response.text
        updated = utc(response.json())
        assert {key: updated[key] for key in body} == body
        assert updated["user_id"] == 5
        stored = facts.account(5)
        assert stored is not None
        assert stored.iban == body["iban"]
        now = await api.get("/account-details", user=5)
        assert utc(now.json()) == updated
        other = await api.get("/account-details", user=7)
        assert utc(other.json())["iban"] != body["iban"]


class TestJobs:
    async def test_job(self, api: Api, facts: Facts) -> None:
        job = facts.busiest(Application, Application.job_id)
        response = await api.get(f"/jobs/{job}", user=2)
        assert response.status_code == 200, response.text
        body = utc(response.json())
        assert body["id"] == job
        assert body["client"] == ref(facts, facts.job_client(job))
        applicants = facts.applicants(job)
        assert len(applicants) > 1
        assert [a["worker"] for a in body["applications"]] == [ref(facts, w) for w in applicants]
        assert all(a["job_id"] == job for a in body["applications"])

    async def test_list_pages(self, api: Api, facts: Facts) -> None:
        every = await api.pages("/jobs", user=1, limit=7)
        assert [job["id"] for job in every] == facts.jobs()
        open_jobs = await api.pages("/jobs", user=1, limit=3, status="open")
        assert [job["id"] for job in open_jobs] == facts.jobs("open")
        assert {job["status"] for job in open_jobs} == {"open"}
        client = facts.job_client(facts.jobs()[0])
        mine = await api.pages("/jobs", user=1, limit=2, client_id=client)
        assert {job["client"]["id"] for job in mine} == {client}
        assert [job["id"] for job in mine] == [
            j for j in facts.jobs() if facts.job_client(j) == client
        ]

    async def test_post(self, api: Api, facts: Facts) -> None:
        body = {"title": "Paint a fence", "description": "white", "budget_cents": 20_000}
        response = await api.post("/jobs", user=3, json=body)
        assert response.status_code == 201, response.text
        job = utc(response.json())
        assert {key: job[key] for key in body} == body
        assert (job["status"], job["client"], job["applications"]) == (
            "open",
            ref(facts, 3),
            [],
        )
        assert facts.jobs()[0] == job["id"] == facts.max_id(Job)
        first = utc((await api.get("/jobs", user=4, params={"limit": 1})).json())["items"][0]
        assert first["id"] == job["id"]
        detail = await api.get(f"/jobs/{job['id']}", user=4)
        assert utc(detail.json()) == job

    async def test_apply(self, api: Api, facts: Facts) -> None:
        worker, job = facts.unapplied()
        before = utc((await api.get(f"/jobs/{job}", user=worker)).json())
        body = {"cover_letter": "hire me", "bid_cents": 4_200}
        response = await api.post(f"/jobs/{job}/apply", user=worker, json=body)
        assert response.status_code == 201, response.text
        application = utc(response.json())
        assert application["worker"] == ref(facts, worker)
        assert (application["job_id"], application["bid_cents"]) == (job, 4_200)
        assert facts.applicants(job)[-1] == worker
        after = utc((await api.get(f"/jobs/{job}", user=worker)).json())
        assert after["applications"] == [*before["applications"], application]
        again = await api.post(f"/jobs/{job}/apply", user=worker, json=body)
        assert again.status_code == 409
