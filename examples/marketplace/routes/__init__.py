"""The HTTP endpoints, one router per area."""

from marketplace.routes import accounts, auth, jobs, payments, reviews, system

ROUTERS = (
    auth.router,
    payments.router,
    reviews.router,
    accounts.router,
    jobs.router,
    system.router,
)

__all__ = ["ROUTERS"]
