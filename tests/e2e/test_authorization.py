"""Authentication, authorization and error responses, in every mode: 401 without a valid
token, 403 for what is someone else's, only your own account details and payments, and 404,
409 and 422 as JSON ``{"detail": ...}`` — never a 500."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest

from marketplace.models import Payment

if TYPE_CHECKING:
    import httpx

    from tests.e2e.facts import Facts
    from tests.e2e.harness import Api

# Every endpoint that needs a token, with a body that would be valid.
PROTECTED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/users/1/payments", None),
    ("GET", "/payments/history", None),
    ("POST", "/payments", {"payee_id": 2, "job_id": 1, "amount_cents": 100}),
    ("POST", "/payments/1/confirm", None),
    ("GET", "/reviews/1", None),
    ("GET", "/reviews/by/1", None),
    ("POST", "/reviews", {"reviewee_id": 2, "job_id": 1, "rating": 5}),
    ("GET", "/profiles/1", None),
    ("GET", "/account-details", None),
    (
        "PUT",
        "/account-details",
        {
            "holder_name": "X",
            "iban": "DE89370400440532013000",
            "bic": "COBADEFF",
            "currency": "EUR",
        },
    ),
    ("GET", "/jobs/1", None),
    ("GET", "/jobs", None),
    ("POST", "/jobs", {"title": "t", "budget_cents": 100}),
    ("POST", "/jobs/1/apply", {"bid_cents": 100}),
]


def assert_error(response: httpx.Response, status: int, detail: str | None = None) -> Any:
    """``response`` is the JSON error ``status``; returns its detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail"}
    if detail is not None:
        assert body["detail"] == detail
    return body["detail"]


class TestAuthentication:
    async def test_no_token(self, api: Api) -> None:
        for method, path, body in PROTECTED:
            response = await api.client.request(method, path, json=body)
            detail = assert_error(response, 401)
            assert detail == "not authenticated: send Authorization: Bearer <token>", path
            assert response.headers["www-authenticate"] == "Bearer"

    @pytest.mark.parametrize(
        "header",
        [
            "Bearer nonsense",
            "Bearer 1.",
            "Bearer 99999.abcdefghijklmnopqrstuvwxyz",  # no such token id
            "Bearer 1.abcdefghijklmnopqrstuvwxyz0123",  # a token id with another secret
            "Bearer 99999999999.abcdefghijklmnopqrstuvwxyz",  # an id no column can hold
        ],
    )
    async def test_bad_token(self, api: Api, header: str) -> None:
        await api.token(1)  # token 1 exists
        for method, path, body in PROTECTED[::4]:
            response = await api.client.request(
                method, path, json=body, headers={"Authorization": header}
            )
            assert_error(response, 401, "invalid token")

    async def test_other_scheme(self, api: Api) -> None:
        token = await api.token(1)
        response = await api.client.get("/account-details", headers={"Authorization": token})
        assert_error(response, 401)
        basic = await api.client.get(
            "/account-details", headers={"Authorization": f"Basic {token}"}
        )
        assert_error(basic, 401)

    async def test_headers_are_read_as_the_application_reads_them(self, api: Api) -> None:
        """Tuned mode answers warm reads before the routing: its token check reads the header
        as the application's does (FastAPI strips what follows the scheme; a tab is no
        separator), so a cached read is answered as the application would answer it."""
        token = await api.token(1)
        for _ in range(4):  # learn, fill, hit
            good = await api.client.get("/profiles/2", headers={"Authorization": f"Bearer {token}"})
            assert good.status_code == 200
        for header, status in [(f"Bearer  {token}", 200), (f"Bearer\t{token}", 401)]:
            response = await api.client.get("/profiles/2", headers={"Authorization": header})
            assert response.status_code == status, header

    async def test_tampered_secret(self, api: Api) -> None:
        token = await api.token(1)
        token_id, secret = token.split(".", 1)
        flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
        response = await api.client.get(
            "/account-details", headers={"Authorization": f"Bearer {token_id}.{flipped}"}
        )
        assert_error(response, 401, "invalid token")
        good = await api.get("/account-details", user=1)
        assert good.status_code == 200

    async def test_expired_token(self, api: Api, facts: Facts) -> None:
        token = await api.token(3)
        assert facts.expire_tokens(3) == 1  # as if its time had passed, before its first use
        response = await api.client.get(
            "/account-details", headers={"Authorization": f"Bearer {token}"}
        )
        assert_error(response, 401, "token expired: get a new one from POST /auth/token")
        # another user's token is unaffected
        assert (await api.get("/account-details", user=5)).status_code == 200


class TestOwnDataOnly:
    async def test_account_details_are_your_own(self, api: Api, facts: Facts) -> None:
        for user in (1, 2, 3):
            response = await api.get("/account-details", user=user)
            assert response.status_code == 200
            stored = facts.account(user)
            assert stored is not None
            assert (response.json()["user_id"], response.json()["iban"]) == (user, stored.iban)

    async def test_update_changes_only_your_own(self, api: Api, facts: Facts) -> None:
        other = facts.account(2)
        assert other is not None
        body = {
            "holder_name": "Me",
            "iban": "DE44500105175407324931",
            "bic": "INGDDEFFXXX",
            "currency": "EUR",
            "user_id": 2,
        }
        # a user_id in the body is not accepted (extra fields are rejected)
        assert_error(await api.put("/account-details", user=1, json=body), 422)
        del body["user_id"]
        assert (await api.put("/account-details", user=1, json=body)).status_code == 200
        after = facts.account(2)
        assert after is not None
        assert after.iban == other.iban
        mine = facts.account(1)
        assert mine is not None
        assert mine.iban == body["iban"]

    async def test_someone_elses_payments(self, api: Api, facts: Facts) -> None:
        payer = facts.busiest(Payment, Payment.payer_id)
        response = await api.get(f"/users/{payer}/payments", user=payer + 2)
        assert_error(response, 403, "you can only see your own payments")

    async def test_history_is_your_own(self, api: Api, facts: Facts) -> None:
        for user in facts.users()[:6]:
            items = await api.pages("/payments/history", user=user, limit=50)
            assert [item["id"] for item in items] == [p.id for p in facts.payments_of(user)]


class TestForbidden:
    async def test_confirm_someone_elses_payment(self, api: Api, facts: Facts) -> None:
        pending = facts.pending_payment()
        other_client = next(c for c in facts.users("client") if c != pending.payer_id)
        for intruder in (pending.payee_id, other_client):
            response = await api.post(f"/payments/{pending.id}/confirm", user=intruder)
            assert_error(response, 403, "only the payer confirms a payment")
        assert facts.pending_payment().id == pending.id  # still pending
        mine = await api.post(f"/payments/{pending.id}/confirm", user=pending.payer_id)
        assert mine.status_code == 200

    async def test_pay_for_someone_elses_job(self, api: Api, facts: Facts) -> None:
        client, worker, job = facts.payable()
        intruder = next(c for c in facts.users("client") if c != client)
        before = facts.count(Payment)
        body = {"payee_id": worker, "job_id": job, "amount_cents": 100}
        response = await api.post("/payments", user=intruder, json=body)
        assert_error(response, 403, "only the job's client pays for it")
        assert facts.count(Payment) == before

    async def test_roles(self, api: Api, facts: Facts) -> None:
        worker, job = facts.unapplied()
        post = await api.post("/jobs", user=worker, json={"title": "x", "budget_cents": 100})
        assert_error(post, 403, "only clients post jobs")
        client = facts.users("client")[0]
        apply = await api.post(f"/jobs/{job}/apply", user=client, json={"bid_cents": 100})
        assert_error(apply, 403, "only workers apply to jobs")

    async def test_review_without_a_confirmed_payment(self, api: Api, facts: Facts) -> None:
        pending = facts.pending_payment()
        body = {"reviewee_id": pending.payee_id, "job_id": pending.job_id, "rating": 1}
        response = await api.post("/reviews", user=pending.payer_id, json=body)
        assert_error(response, 403)


class TestNotFound:
    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("GET", "/jobs/999999", None),
            ("POST", "/jobs/999999/apply", {"bid_cents": 100}),
            ("GET", "/profiles/999999", None),
            ("GET", "/reviews/999999", None),
            ("GET", "/reviews/by/999999", None),
            ("POST", "/payments/999999/confirm", None),
            ("POST", "/payments", {"payee_id": 2, "job_id": 999999, "amount_cents": 100}),
            ("POST", "/reviews", {"reviewee_id": 999999, "job_id": 1, "rating": 3}),
            ("POST", "/reviews", {"reviewee_id": 2, "job_id": 999999, "rating": 3}),
        ],
    )
    async def test_unknown_ids(
        self, api: Api, method: str, path: str, body: dict[str, Any] | None
    ) -> None:
        user = 2 if path.endswith("/apply") else 1  # a worker applies, a client pays
        response = await api.request(method, path, user=user, json=body)
        assert "999999" in assert_error(response, 404)

    async def test_unknown_payee(self, api: Api, facts: Facts) -> None:
        client, _, job = facts.payable()
        body = {"payee_id": 999999, "job_id": job, "amount_cents": 100}
        assert_error(await api.post("/payments", user=client, json=body), 404, "no user 999999")


class TestConflict:
    async def test_apply_to_a_closed_job(self, api: Api, facts: Facts) -> None:
        worker, job = facts.unapplied("closed")
        response = await api.post(f"/jobs/{job}/apply", user=worker, json={"bid_cents": 100})
        assert_error(response, 409, f"job {job} is closed")


class TestInvalidInput:
    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("POST", "/auth/token", {"email": "user1@example.com"}),
            ("POST", "/auth/token", {"email": "x", "password": "p"}),
            ("POST", "/auth/token", {"email": "user1@example.com", "password": "a\x00b"}),
            ("POST", "/auth/token", ["user1@example.com", "password-1"]),
            ("POST", "/jobs", {"title": "", "budget_cents": 100}),
            ("POST", "/jobs", {"title": "t", "budget_cents": 0}),
            ("POST", "/jobs", {"title": "t", "budget_cents": "lots"}),
            ("POST", "/jobs", {"title": "t\x00", "budget_cents": 100}),
            ("POST", "/jobs", {"title": "t", "budget_cents": 100, "status": "closed"}),
            ("POST", "/jobs", {"title": "t", "budget_cents": 2**63}),
            ("POST", "/payments", {"payee_id": 2, "job_id": 1, "amount_cents": -5}),
            ("POST", "/payments", {"payee_id": 0, "job_id": 1, "amount_cents": 5}),
            ("POST", "/payments", {"payee_id": 2, "job_id": 2**31, "amount_cents": 5}),
            ("POST", "/payments", {"payee_id": 1, "job_id": 1, "amount_cents": 5}),  # yourself
            ("POST", "/reviews", {"reviewee_id": 2, "job_id": 1, "rating": 6}),
            ("POST", "/reviews", {"reviewee_id": 1, "job_id": 1, "rating": 5}),  # yourself
            ("PUT", "/account-details", {"holder_name": "X", "iban": "no", "bic": "no"}),
            ("GET", "/jobs?limit=0", None),
            ("GET", "/jobs?limit=101", None),
            ("GET", "/jobs?status=done", None),
            ("GET", "/jobs?after=not-a-cursor", None),
            ("GET", "/payments/history?after=%00", None),
            ("GET", "/jobs/0", None),
            ("GET", "/jobs/2147483648", None),
            ("GET", "/jobs/abc", None),
        ],
    )
    async def test_rejected(
        self, api: Api, method: str, path: str, body: dict[str, Any] | list[str] | None
    ) -> None:
        response = await api.request(method, path, user=1, json=body)
        assert_error(response, 422)

    async def test_tampered_cursor(self, api: Api) -> None:
        # A well-formed cursor whose values the keyset cannot take: the library's
        # InvalidCursorError, answered as 422 (the app adds no handling of its own).
        first = await api.request("GET", "/jobs?limit=2", user=1)
        assert first.status_code == 200
        cursor = first.json()["next"]
        signature, values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        for bad in (2**70, None, True, "7"):
            raw = json.dumps([signature, [bad, *values[1:]]]).encode()
            tampered = base64.urlsafe_b64encode(raw).decode().rstrip("=")
            response = await api.request("GET", f"/jobs?after={tampered}", user=1)
            assert_error(response, 422)

    async def test_malformed_json(self, api: Api) -> None:
        for content in (b"{not json", b'{"email": "\xff"}'):  # the second is not UTF-8 text
            response = await api.client.post(
                "/auth/token", content=content, headers={"content-type": "application/json"}
            )
            assert_error(response, 422)
