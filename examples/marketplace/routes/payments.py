"""Payments: a user's payments, the payment history, paying for a job, confirming."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import or_

from marketplace.deps import CurrentUser, PathId, Repos, Session
from marketplace.errors import responses
from marketplace.models import Payment, User, utcnow
from marketplace.repositories import (
    ApplicationRepository,
    JobListRepository,
    PaymentHistoryRepository,
    PaymentRepository,
    UserPaymentsRepository,
)
from marketplace.schemas import PaymentIn, PaymentOut, PaymentPage, UserPayments
from marketplace.views import history_item, payment_out

router = APIRouter(tags=["payments"])

LATEST = 50


@router.get("/users/{user_id}/payments", responses=responses(_403="not your payments"))
async def user_payments(
    user_id: PathId, user: CurrentUser, session: Session, repos: Repos
) -> UserPayments:
    """The latest payments a user sent or received (yours only), newest first."""
    if user_id != user.id:
        raise HTTPException(403, "you can only see your own payments")
    payments = repos(UserPaymentsRepository, session)
    sent = await payments.list(filters={"payer_id": user_id}, limit=LATEST)
    received = await payments.list(filters={"payee_id": user_id}, limit=LATEST)
    latest = sorted({p.id: p for p in [*sent, *received]}.values(), key=lambda p: -p.id)
    return UserPayments(user_id=user_id, payments=[await payment_out(p) for p in latest[:LATEST]])


@router.get("/payments/history", responses=responses())
async def payment_history(
    user: CurrentUser,
    session: Session,
    repos: Repos,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=500)] = None,
) -> PaymentPage:
    """Your payments, both ways, with the other party and the job, newest first; pass the
    page's ``next`` as ``after`` for the following page."""
    page = await repos(PaymentHistoryRepository, session).page(
        or_(Payment.payer_id == user.id, Payment.payee_id == user.id), limit=limit, after=after
    )
    return PaymentPage(
        items=[await history_item(p, user) for p in page.items], next=page.next_cursor
    )


@router.post(
    "/payments",
    status_code=201,
    responses=responses(
        _403="not the job's client",
        _404="no such job or payee",
        _422="invalid input, or the payee did not apply to the job",
    ),
)
async def create_payment(
    body: PaymentIn, user: CurrentUser, session: Session, repos: Repos
) -> PaymentOut:
    """Pay a worker who applied to one of your jobs; the payment is pending until you confirm."""
    job = await repos(JobListRepository, session).get_or_none(body.job_id)
    if job is None:
        raise HTTPException(404, f"no job {body.job_id}")
    if job.client_id != user.id:
        raise HTTPException(403, "only the job's client pays for it")
    if body.payee_id == user.id:
        raise HTTPException(422, "you cannot pay yourself")
    payee = await session.get(User, body.payee_id)
    if payee is None:
        raise HTTPException(404, f"no user {body.payee_id}")
    applied = await repos(ApplicationRepository, session).exists(
        filters={"job_id": job.id, "worker_id": body.payee_id}
    )
    if not applied:
        raise HTTPException(422, f"user {body.payee_id} has not applied to job {job.id}")
    payment = await repos(PaymentRepository, session).create(
        payer_id=user.id,
        payee_id=payee.id,
        job_id=job.id,
        amount_cents=body.amount_cents,
        status="pending",
        created_at=utcnow(),
    )
    await session.commit()
    return await payment_out(payment)


@router.post(
    "/payments/{payment_id}/confirm",
    responses=responses(_403="not the payer", _404="no such payment", _409="already confirmed"),
)
async def confirm_payment(payment_id: PathId, user: CurrentUser, session: Session) -> PaymentOut:
    """Confirm a pending payment you made."""
    payment = await session.get(Payment, payment_id, with_for_update=True)
    if payment is None:
        raise HTTPException(404, f"no payment {payment_id}")
    if payment.payer_id != user.id:
        raise HTTPException(403, "only the payer confirms a payment")
    if payment.status == "confirmed":
        raise HTTPException(409, f"payment {payment_id} is already confirmed")
    payment.status = "confirmed"
    payment.confirmed_at = utcnow()
    await session.commit()
    return await payment_out(payment)
