"""What every request gets: a session, the repositories of the app's mode, the current user."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from marketplace.models import User, utcnow
from marketplace.repositories import Repositories, TokenRepository
from marketplace.schemas import MAX_INT
from marketplace.security import hash_secret, parse_token
from ormtune import Identity

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from marketplace.settings import Settings
    from ormtune import Installation

__all__ = [
    "CurrentUser",
    "PathId",
    "Repos",
    "Runtime",
    "Session",
    "identify",
    "runtime",
]


@dataclass(slots=True)
class Runtime:
    """What the lifespan sets up for one application instance."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    repositories: Repositories
    installation: Installation | None


def runtime(request: Request) -> Runtime:
    found: Runtime | None = getattr(request.app.state, "runtime", None)
    if found is None:
        raise RuntimeError("the application has not started: run it inside its lifespan")
    return found


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with runtime(request).sessions() as session:
        yield session


async def _repositories(request: Request) -> Repositories:
    # async although it awaits nothing: FastAPI runs a plain ``def`` dependency in a worker
    # thread, and that hop cost about 0.6 ms of CPU per request here (every mode alike)
    return runtime(request).repositories


Session = Annotated[AsyncSession, Depends(_session)]
Repos = Annotated[Repositories, Depends(_repositories)]
PathId = Annotated[int, Path(ge=1, le=MAX_INT)]

_bearer = HTTPBearer(auto_error=False, description="a token from POST /auth/token")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def _current_user(
    session: Session,
    repos: Repos,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None:
        raise _unauthorized("not authenticated: send Authorization: Bearer <token>")
    parsed = parse_token(credentials.credentials)
    if parsed is None:
        raise _unauthorized("invalid token")
    token_id, secret = parsed
    token = await repos(TokenRepository, session).get_or_none(token_id)
    if token is None or not hmac.compare_digest(token.secret_hash, hash_secret(secret)):
        raise _unauthorized("invalid token")
    if token.expires_at <= utcnow():
        raise _unauthorized("token expired: get a new one from POST /auth/token")
    user: User = await token.awaitable_attrs.user
    return user


CurrentUser = Annotated[User, Depends(_current_user)]


async def identify(scope: Any) -> Identity | None:
    """Whose bearer token a request carries, for ormtune's response cache (tuned mode): the
    same checks as ``CurrentUser``, through the same cached token lookup."""
    header = ""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":  # the first, as HTTPBearer reads it
            header = value.decode("latin-1")
            break
    scheme, credentials = get_authorization_scheme_param(header)  # HTTPBearer's own reading
    if scheme.lower() != "bearer":
        return None
    parsed = parse_token(credentials)
    if parsed is None:
        return None
    token_id, secret = parsed
    found: Runtime | None = getattr(scope["app"].state, "runtime", None)
    if found is None:
        return None
    async with found.sessions() as session:
        token = await found.repositories(TokenRepository, session).get_or_none(token_id)
    if token is None or not hmac.compare_digest(token.secret_hash, hash_secret(secret)):
        return None
    if token.expires_at <= utcnow():
        return None
    return Identity(str(token.user_id), token.expires_at.replace(tzinfo=UTC).timestamp())
