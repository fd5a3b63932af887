"""The data-access layer: one ormtune repository per kind of read, and the per-mode factory.

Each repository declares the eager loads its reads need (``load``), the way a team that
hand-tunes its queries would; only ``handwritten`` mode applies them. ``naive`` and ``tuned``
run the same reads without loader options (so the route code's relationship loops lazy-load:
one query per object in ``naive``, batched by ormtune's autoload in ``tuned``). In ``tuned``
mode the repositories that declare ``cache_ttl`` read through ormtune's query cache
(``ormtune.cache(ttl=..., name=...)``); commits invalidate what they wrote, by themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import ormtune
from marketplace.models import (
    AccountDetails,
    Application,
    AuthToken,
    Job,
    Payment,
    Profile,
    Review,
    User,
)
from ormtune.repository import AsyncRepository, LoadSpec, OrderSpec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncSession

    from marketplace.settings import Mode
    from ormtune.caching import CacheOption

__all__ = [
    "AccountDetailsRepository",
    "ApplicationRepository",
    "JobDetailRepository",
    "JobListRepository",
    "JobPageRepository",
    "MarketRepository",
    "PaymentHistoryRepository",
    "PaymentRepository",
    "ProfileRepository",
    "Repositories",
    "ReviewsGivenRepository",
    "ReviewsReceivedRepository",
    "TokenRepository",
    "UserPaymentsRepository",
    "UserRepository",
]

R = TypeVar("R", bound="MarketRepository[Any]")
M = TypeVar("M")


class MarketRepository(AsyncRepository[M]):
    """An ormtune ``AsyncRepository`` with the marketplace's per-mode settings."""

    # tuned mode: read through the query cache for this many seconds, under cache_name
    cache_ttl: ClassVar[float | None] = None
    cache_name: ClassVar[str] = ""
    # infrastructure reads (authentication) load what they need in every mode
    always_load: ClassVar[bool] = False


class TokenRepository(MarketRepository[AuthToken]):
    """Access tokens by id, with their user (every request's authentication)."""

    load: ClassVar[Sequence[LoadSpec]] = [AuthToken.user]
    always_load = True
    cache_ttl = 300
    cache_name = "auth_tokens"


class UserRepository(MarketRepository[User]):
    """Users by id (does this user exist?)."""

    cache_ttl = 3600
    cache_name = "users"


class UserPaymentsRepository(MarketRepository[Payment]):
    """GET /users/{id}/payments."""

    load: ClassVar[Sequence[LoadSpec]] = [Payment.payer, Payment.payee, Payment.job]
    order_by: ClassVar[Sequence[OrderSpec]] = ["-id"]
    cache_ttl = 300
    cache_name = "user_payments"


class PaymentRepository(MarketRepository[Payment]):
    """Payment writes and the checks around them (never cached)."""

    load: ClassVar[Sequence[LoadSpec]] = [Payment.payer, Payment.payee, Payment.job]
    order_by: ClassVar[Sequence[OrderSpec]] = ["-id"]


class PaymentHistoryRepository(PaymentRepository):
    """GET /payments/history pages."""

    cache_ttl = 300
    cache_name = "payment_history"


class ReviewsReceivedRepository(MarketRepository[Review]):
    """GET /reviews/{user_id}."""

    load: ClassVar[Sequence[LoadSpec]] = [Review.reviewer, Review.reviewee, Review.job]
    order_by: ClassVar[Sequence[OrderSpec]] = ["-id"]
    cache_ttl = 1800
    cache_name = "reviews_received"


class ReviewsGivenRepository(MarketRepository[Review]):
    """GET /reviews/by/{user_id} and review writes."""

    load: ClassVar[Sequence[LoadSpec]] = [Review.reviewer, Review.reviewee, Review.job]
    order_by: ClassVar[Sequence[OrderSpec]] = ["-id"]
    cache_ttl = 1800
    cache_name = "reviews_given"


class ProfileRepository(MarketRepository[Profile]):
    load: ClassVar[Sequence[LoadSpec]] = [Profile.user]
    cache_ttl = 3600
    cache_name = "profiles"


class AccountDetailsRepository(MarketRepository[AccountDetails]):
    cache_ttl = 3600
    cache_name = "account_details"


class JobDetailRepository(MarketRepository[Job]):
    """GET /jobs/{id}: the job, its client, its applications and their workers."""

    load: ClassVar[Sequence[LoadSpec]] = [Job.client, (Job.applications, Application.worker)]
    cache_ttl = 1800
    cache_name = "job_detail"


class JobListRepository(MarketRepository[Job]):
    """Job writes and the checks around them (never cached)."""

    load: ClassVar[Sequence[LoadSpec]] = [Job.client]
    order_by: ClassVar[Sequence[OrderSpec]] = ["-id"]


class JobPageRepository(JobListRepository):
    """GET /jobs pages."""

    cache_ttl = 300
    cache_name = "job_pages"


class ApplicationRepository(MarketRepository[Application]):
    load: ClassVar[Sequence[LoadSpec]] = [Application.worker]


CACHED: tuple[type[MarketRepository[Any]], ...] = (
    TokenRepository,
    UserRepository,
    UserPaymentsRepository,
    PaymentHistoryRepository,
    ReviewsReceivedRepository,
    ReviewsGivenRepository,
    ProfileRepository,
    AccountDetailsRepository,
    JobDetailRepository,
    JobPageRepository,
)


class Repositories:
    """Opens repositories the way the application's mode asks for.

    Build it after ``ormtune.install()``: in tuned mode it creates the cache options, and
    ``ormtune.cache()`` installs a default in-memory cache if none is installed yet.
    """

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self._cache: dict[type[MarketRepository[Any]], CacheOption] = {}
        if mode == "tuned":
            for cls in CACHED:
                self._cache[cls] = ormtune.cache(ttl=cls.cache_ttl, name=cls.cache_name)

    def __call__(self, cls: type[R], session: AsyncSession) -> R:
        load = None if self.mode == "handwritten" or cls.always_load else ()
        return cls(session, load=load, cache=self._cache.get(cls))

    def options(self, cls: type[MarketRepository[Any]]) -> list[CacheOption]:
        """The options a hand-written statement for ``cls``'s use case carries (the cache
        option in tuned mode, nothing otherwise)."""
        option = self._cache.get(cls)
        return [] if option is None else [option]
