"""POST /auth/token: email and password for an expiring bearer token."""

from datetime import timedelta

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import select

from marketplace.deps import Session, runtime
from marketplace.errors import responses
from marketplace.models import AuthToken, User, utcnow
from marketplace.schemas import LoginIn, TokenOut
from marketplace.security import hash_secret, new_secret, verify_password

router = APIRouter(tags=["auth"])


@router.post("/auth/token", responses=responses(_401="wrong email or password"))
async def login(body: LoginIn, request: Request, session: Session) -> TokenOut:
    """Exchange an email and password for a bearer token (valid for the configured TTL)."""
    user = await session.scalar(select(User).where(User.email == body.email.strip().lower()))
    if user is None or not verify_password(body.password, user.password_hash):
        raise HTTPException(401, "wrong email or password", headers={"WWW-Authenticate": "Bearer"})
    secret = new_secret()
    now = utcnow()
    expires_at = now + timedelta(seconds=runtime(request).settings.token_ttl_seconds)
    token = AuthToken(
        user_id=user.id, secret_hash=hash_secret(secret), created_at=now, expires_at=expires_at
    )
    session.add(token)
    await session.commit()
    return TokenOut(access_token=f"{token.id}.{secret}", expires_at=expires_at)
