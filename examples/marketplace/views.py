"""Rows to response bodies, written the natural way: follow the relationships.

Under ``AsyncSession`` a relationship that is not loaded yet is read with
``await obj.awaitable_attrs.rel`` (SQLAlchemy's idiom; a bare attribute access would need a
greenlet). What that costs is the mode's business: a query per object (``naive``), one query
per relationship for the whole result (``tuned``: ormtune's autoload), or nothing because the
repository loaded it eagerly (``handwritten``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from marketplace.schemas import (
    AccountDetailsOut,
    ApplicationOut,
    HistoryItem,
    JobDetail,
    JobRef,
    JobSummary,
    PaymentOut,
    ProfileOut,
    ReviewOut,
    UserRef,
)

if TYPE_CHECKING:
    from marketplace.models import AccountDetails, Application, Job, Payment, Profile, Review, User

__all__ = [
    "account_details_out",
    "application_out",
    "history_item",
    "job_detail",
    "job_summary",
    "payment_out",
    "profile_out",
    "review_out",
    "user_ref",
]


def user_ref(user: User) -> UserRef:
    return UserRef(id=user.id, name=user.name)


def job_ref(job: Job) -> JobRef:
    return JobRef(id=job.id, title=job.title)


async def payment_out(payment: Payment) -> PaymentOut:
    payer = await payment.awaitable_attrs.payer
    payee = await payment.awaitable_attrs.payee
    job = await payment.awaitable_attrs.job
    return PaymentOut(
        id=payment.id,
        payer=user_ref(payer),
        payee=user_ref(payee),
        job=job_ref(job),
        amount_cents=payment.amount_cents,
        status=payment.status,  # type: ignore[arg-type]
        created_at=payment.created_at,
        confirmed_at=payment.confirmed_at,
    )


async def history_item(payment: Payment, me: User) -> HistoryItem:
    direction: Literal["sent", "received"] = "sent" if payment.payer_id == me.id else "received"
    other = await (
        payment.awaitable_attrs.payee if direction == "sent" else payment.awaitable_attrs.payer
    )
    job = await payment.awaitable_attrs.job
    return HistoryItem(
        id=payment.id,
        direction=direction,
        counterparty=user_ref(other),
        job=job_ref(job),
        amount_cents=payment.amount_cents,
        status=payment.status,  # type: ignore[arg-type]
        created_at=payment.created_at,
        confirmed_at=payment.confirmed_at,
    )


async def review_out(review: Review) -> ReviewOut:
    reviewer = await review.awaitable_attrs.reviewer
    reviewee = await review.awaitable_attrs.reviewee
    job = await review.awaitable_attrs.job
    return ReviewOut(
        id=review.id,
        reviewer=user_ref(reviewer),
        reviewee=user_ref(reviewee),
        job=job_ref(job),
        rating=review.rating,
        comment=review.comment,
        created_at=review.created_at,
    )


async def profile_out(profile: Profile) -> ProfileOut:
    user = await profile.awaitable_attrs.user
    return ProfileOut(
        user_id=user.id,
        name=user.name,
        role=user.role,
        headline=profile.headline,
        bio=profile.bio,
        skills=[s for s in profile.skills.split(",") if s],
        city=profile.city,
        hourly_rate_cents=profile.hourly_rate_cents,
        member_since=user.created_at,
    )


def account_details_out(details: AccountDetails) -> AccountDetailsOut:
    return AccountDetailsOut(
        user_id=details.user_id,
        holder_name=details.holder_name,
        iban=details.iban,
        bic=details.bic,
        currency=details.currency,
        updated_at=details.updated_at,
    )


async def application_out(application: Application) -> ApplicationOut:
    worker = await application.awaitable_attrs.worker
    return ApplicationOut(
        id=application.id,
        job_id=application.job_id,
        worker=user_ref(worker),
        cover_letter=application.cover_letter,
        bid_cents=application.bid_cents,
        created_at=application.created_at,
    )


async def job_summary(job: Job) -> JobSummary:
    client = await job.awaitable_attrs.client
    return JobSummary(
        id=job.id,
        title=job.title,
        status=job.status,  # type: ignore[arg-type]
        budget_cents=job.budget_cents,
        client=user_ref(client),
        created_at=job.created_at,
    )


async def job_detail(job: Job) -> JobDetail:
    client = await job.awaitable_attrs.client
    applications = await job.awaitable_attrs.applications
    return JobDetail(
        id=job.id,
        title=job.title,
        description=job.description,
        status=job.status,  # type: ignore[arg-type]
        budget_cents=job.budget_cents,
        client=user_ref(client),
        created_at=job.created_at,
        applications=[await application_out(a) for a in applications],
    )
