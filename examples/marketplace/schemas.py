"""Request and response bodies (pydantic), with the bounds every database accepts.

Text is checked for what a database driver would reject later (NUL characters, unpaired
surrogates), so bad input is a 422, never a 500. Integers stay within 32-bit columns.
"""

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "AccountDetailsIn",
    "AccountDetailsOut",
    "ApplicationIn",
    "ApplicationOut",
    "Health",
    "HistoryItem",
    "JobDetail",
    "JobIn",
    "JobPage",
    "JobRef",
    "JobSummary",
    "LoginIn",
    "PaymentIn",
    "PaymentOut",
    "PaymentPage",
    "ProfileOut",
    "ReviewIn",
    "ReviewOut",
    "ReviewsGiven",
    "ReviewsReceived",
    "TokenOut",
    "UserPayments",
    "UserRef",
]

MAX_INT = 2**31 - 1
MAX_CENTS = 100_000_000  # one million in whole units


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text (no unpaired surrogates)") from exc
    return value


Storable = AfterValidator(_storable)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The database keeps naive UTC; responses say so (``2026-01-01T00:01:00Z``), as the schema's
# ``format: date-time`` (RFC 3339: an offset is required) promises.
Timestamp = Annotated[datetime, AfterValidator(_utc)]
Id = Annotated[int, Field(ge=1, le=MAX_INT)]
Cents = Annotated[int, Field(ge=1, le=MAX_CENTS)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class LoginIn(_In):
    email: Annotated[str, Field(min_length=3, max_length=254), Storable]
    password: Annotated[str, Field(min_length=1, max_length=128), Storable]


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: Timestamp


class UserRef(BaseModel):
    id: int
    name: str


class JobRef(BaseModel):
    id: int
    title: str


class PaymentIn(_In):
    payee_id: Id
    job_id: Id
    amount_cents: Cents


class PaymentOut(BaseModel):
    id: int
    payer: UserRef
    payee: UserRef
    job: JobRef
    amount_cents: int
    status: Literal["pending", "confirmed"]
    created_at: Timestamp
    confirmed_at: Timestamp | None


class UserPayments(BaseModel):
    """A user's latest payments, sent and received, newest first."""

    user_id: int
    payments: list[PaymentOut]


class HistoryItem(BaseModel):
    id: int
    direction: Literal["sent", "received"]
    counterparty: UserRef
    job: JobRef
    amount_cents: int
    status: Literal["pending", "confirmed"]
    created_at: Timestamp
    confirmed_at: Timestamp | None


class PaymentPage(BaseModel):
    items: list[HistoryItem]
    next: str | None


class ReviewIn(_In):
    reviewee_id: Id
    job_id: Id
    rating: Annotated[int, Field(ge=1, le=5)]
    comment: Annotated[str, Field(max_length=2000), Storable] = ""


class ReviewOut(BaseModel):
    id: int
    reviewer: UserRef
    reviewee: UserRef
    job: JobRef
    rating: int
    comment: str
    created_at: Timestamp


class ReviewsReceived(BaseModel):
    user_id: int
    count: int
    average_rating: float | None
    reviews: list[ReviewOut]


class ReviewsGiven(BaseModel):
    user_id: int
    reviews: list[ReviewOut]


class ProfileOut(BaseModel):
    user_id: int
    name: str
    role: Literal["client", "worker"]
    headline: str
    bio: str
    skills: list[str]
    city: str
    hourly_rate_cents: int
    member_since: Timestamp


class AccountDetailsIn(_In):
    holder_name: Annotated[str, Field(min_length=1, max_length=100), Storable]
    iban: Annotated[str, Field(pattern=r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$")]
    bic: Annotated[str, Field(pattern=r"^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$")]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class AccountDetailsOut(BaseModel):
    user_id: int
    holder_name: str
    iban: str
    bic: str
    currency: str
    updated_at: Timestamp


class JobIn(_In):
    title: Annotated[str, Field(min_length=1, max_length=200), Storable]
    description: Annotated[str, Field(max_length=5000), Storable] = ""
    budget_cents: Cents


class ApplicationIn(_In):
    cover_letter: Annotated[str, Field(max_length=5000), Storable] = ""
    bid_cents: Cents


class ApplicationOut(BaseModel):
    id: int
    job_id: int
    worker: UserRef
    cover_letter: str
    bid_cents: int
    created_at: Timestamp


class JobSummary(BaseModel):
    id: int
    title: str
    status: Literal["open", "closed"]
    budget_cents: int
    client: UserRef
    created_at: Timestamp


class JobPage(BaseModel):
    items: list[JobSummary]
    next: str | None


class JobDetail(BaseModel):
    id: int
    title: str
    description: str
    status: Literal["open", "closed"]
    budget_cents: int
    client: UserRef
    created_at: Timestamp
    applications: list[ApplicationOut]


class Health(BaseModel):
    status: Literal["ok"]
