"""Profiles (public) and account details (the owner's only)."""

from fastapi import APIRouter, HTTPException

from marketplace.deps import CurrentUser, PathId, Repos, Session
from marketplace.errors import responses
from marketplace.models import utcnow
from marketplace.repositories import AccountDetailsRepository, ProfileRepository
from marketplace.schemas import AccountDetailsIn, AccountDetailsOut, ProfileOut
from marketplace.views import account_details_out, profile_out

router = APIRouter(tags=["accounts"])


@router.get("/profiles/{user_id}", responses=responses(_404="no such profile"))
async def profile(user_id: PathId, _: CurrentUser, session: Session, repos: Repos) -> ProfileOut:
    """A user's public profile."""
    found = await repos(ProfileRepository, session).list(filters={"user_id": user_id}, limit=1)
    if not found:
        raise HTTPException(404, f"no profile for user {user_id}")
    return await profile_out(found[0])


@router.get("/account-details", responses=responses(_404="none set yet"))
async def account_details(user: CurrentUser, session: Session, repos: Repos) -> AccountDetailsOut:
    """Your payout account details."""
    found = await repos(AccountDetailsRepository, session).list(
        filters={"user_id": user.id}, limit=1
    )
    if not found:
        raise HTTPException(404, "no account details yet: PUT /account-details sets them")
    return account_details_out(found[0])


@router.put("/account-details", responses=responses())
async def update_account_details(
    body: AccountDetailsIn, user: CurrentUser, session: Session, repos: Repos
) -> AccountDetailsOut:
    """Set your payout account details."""
    accounts = repos(AccountDetailsRepository, session)
    found = await accounts.list(filters={"user_id": user.id}, limit=1)
    values = body.model_dump()
    if found:
        details = await accounts.update(found[0], **values, updated_at=utcnow())
    else:
        details = await accounts.create(user_id=user.id, **values, updated_at=utcnow())
    await session.commit()
    return account_details_out(details)
