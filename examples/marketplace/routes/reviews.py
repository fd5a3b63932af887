"""Reviews: received (with the average rating), given, and writing one."""

from fastapi import APIRouter, HTTPException
from sqlalchemy import and_, func, or_, select

from marketplace.deps import CurrentUser, PathId, Repos, Session
from marketplace.errors import responses
from marketplace.models import Job, Payment, Review, utcnow
from marketplace.repositories import (
    PaymentRepository,
    ReviewsGivenRepository,
    ReviewsReceivedRepository,
    UserRepository,
)
from marketplace.schemas import ReviewIn, ReviewOut, ReviewsGiven, ReviewsReceived
from marketplace.views import review_out

router = APIRouter(tags=["reviews"])

LATEST = 50
_NO_USER = responses(_404="no such user")


@router.get("/reviews/{user_id}", responses=_NO_USER)
async def reviews_received(
    user_id: PathId, _: CurrentUser, session: Session, repos: Repos
) -> ReviewsReceived:
    """The reviews a user received (the latest 50, with their reviewers), their number and
    the average rating."""
    reviewee = await repos(UserRepository, session).get_or_none(user_id)
    if reviewee is None:
        raise HTTPException(404, f"no user {user_id}")
    reviews = await repos(ReviewsReceivedRepository, session).list(
        filters={"reviewee_id": user_id}, limit=LATEST
    )
    totals = (
        select(func.count(Review.id), func.coalesce(func.sum(Review.rating), 0))
        .where(Review.reviewee_id == user_id)
        .options(*repos.options(ReviewsReceivedRepository))
    )
    count, rating_sum = (await session.execute(totals)).one()
    return ReviewsReceived(
        user_id=reviewee.id,
        count=count,
        average_rating=round(rating_sum / count, 2) if count else None,
        reviews=[await review_out(r) for r in reviews],
    )


@router.get("/reviews/by/{user_id}", responses=_NO_USER)
async def reviews_given(
    user_id: PathId, _: CurrentUser, session: Session, repos: Repos
) -> ReviewsGiven:
    """The reviews a user wrote (the latest 50), with whom they reviewed."""
    reviewer = await repos(UserRepository, session).get_or_none(user_id)
    if reviewer is None:
        raise HTTPException(404, f"no user {user_id}")
    reviews = await repos(ReviewsGivenRepository, session).list(
        filters={"reviewer_id": user_id}, limit=LATEST
    )
    return ReviewsGiven(user_id=reviewer.id, reviews=[await review_out(r) for r in reviews])


@router.post(
    "/reviews",
    status_code=201,
    responses=responses(
        _403="no confirmed payment between you two for this job",
        _404="no such user or job",
        _409="you already reviewed this user for this job",
    ),
)
async def create_review(
    body: ReviewIn, user: CurrentUser, session: Session, repos: Repos
) -> ReviewOut:
    """Review the other party of a job you paid for or were paid for (once per job)."""
    if body.reviewee_id == user.id:
        raise HTTPException(422, "you cannot review yourself")
    reviewee = await repos(UserRepository, session).get_or_none(body.reviewee_id)
    if reviewee is None:
        raise HTTPException(404, f"no user {body.reviewee_id}")
    job = await session.get(Job, body.job_id)
    if job is None:
        raise HTTPException(404, f"no job {body.job_id}")
    me, them = user.id, reviewee.id
    paid = await repos(PaymentRepository, session).exists(
        Payment.job_id == body.job_id,
        Payment.status == "confirmed",
        or_(
            and_(Payment.payer_id == me, Payment.payee_id == them),
            and_(Payment.payer_id == them, Payment.payee_id == me),
        ),
    )
    if not paid:
        raise HTTPException(403, "you can only review someone you had a confirmed payment with")
    review = await repos(ReviewsGivenRepository, session).create(
        reviewer_id=me,
        reviewee_id=them,
        job_id=job.id,
        rating=body.rating,
        comment=body.comment,
        created_at=utcnow(),
    )
    await session.commit()
    return await review_out(review)
