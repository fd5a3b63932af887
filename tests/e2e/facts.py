"""Ground truth for the end-to-end tests, read straight from the database with SQLAlchemy
(never through the app): the tests pick their subjects here and check responses against it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, create_engine, func, select, true, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from marketplace.db import is_async_url
from marketplace.models import (
    AccountDetails,
    Application,
    AuthToken,
    Job,
    Payment,
    Review,
    User,
    utcnow,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["Facts", "sync_url"]


def sync_url(url: str) -> str:
    """The sync twin of an asyncio URL of the app (aiosqlite -> pysqlite, asyncpg -> psycopg,
    aiomysql -> pymysql)."""
    if not is_async_url(url):
        return url
    for async_driver, sync_driver in (
        ("+aiosqlite", ""),
        ("+asyncpg", "+psycopg"),
        ("+aiomysql", "+pymysql"),
    ):
        if async_driver in url:
            return url.replace(async_driver, sync_driver, 1)
    raise ValueError(f"no sync driver known for {url}")


@dataclass
class Facts:
    """Queries on one marketplace database; ``close()`` disposes the engine."""

    engine: Engine

    @classmethod
    def of(cls, url: str) -> Facts:
        return cls(create_engine(sync_url(url), poolclass=NullPool))

    def close(self) -> None:
        self.engine.dispose()

    def _session(self) -> Session:
        return Session(self.engine)

    def scalars(self, statement: Any) -> list[Any]:
        with self._session() as session:
            return list(session.scalars(statement))

    def scalar(self, statement: Any) -> Any:
        with self._session() as session:
            return session.scalar(statement)

    # --- users -----------------------------------------------------------------------------

    def users(self, role: str | None = None) -> list[int]:
        statement = select(User.id).order_by(User.id)
        if role is not None:
            statement = statement.where(User.role == role)
        return self.scalars(statement)

    def role(self, user: int) -> str:
        result: str = self.scalar(select(User.role).where(User.id == user))
        return result

    def name(self, user: int) -> str:
        result: str = self.scalar(select(User.name).where(User.id == user))
        return result

    def max_id(self, model: type[Any]) -> int:
        return int(self.scalar(select(func.max(model.id))) or 0)

    # --- payments --------------------------------------------------------------------------

    def payments_of(self, user: int) -> list[Payment]:
        """Every payment ``user`` sent or received, newest first."""
        return self.scalars(
            select(Payment)
            .where((Payment.payer_id == user) | (Payment.payee_id == user))
            .order_by(Payment.id.desc())
        )

    def busiest(self, model: type[Any], column: Any, role: str | None = None) -> int:
        """The user with the most rows of ``model`` through ``column`` (lowest id on ties)."""
        statement = (
            select(column, func.count())
            .select_from(model)
            .group_by(column)
            .order_by(func.count().desc(), column)
        )
        if role is not None:
            statement = statement.join(User, User.id == column).where(User.role == role)
        with self._session() as session:
            row = session.execute(statement.limit(1)).first()
        assert row is not None, f"no {model.__tablename__} at all"
        return int(row[0])

    def count(self, model: type[Any], *where: Any) -> int:
        return int(self.scalar(select(func.count()).select_from(model).where(*where)))

    def pending_payment(self) -> Payment:
        """A pending payment (the lowest id)."""
        found = self.scalars(
            select(Payment).where(Payment.status == "pending").order_by(Payment.id).limit(1)
        )
        assert found, "the data set has no pending payment"
        payment: Payment = found[0]
        return payment

    def payable(self) -> tuple[int, int, int]:
        """``(client, worker, job)``: a worker applied to the client's job (lowest job id)."""
        with self._session() as session:
            row = session.execute(
                select(Job.client_id, Application.worker_id, Job.id)
                .join(Application, Application.job_id == Job.id)
                .order_by(Job.id, Application.id)
                .limit(1)
            ).first()
        assert row is not None, "the data set has no application"
        return int(row[0]), int(row[1]), int(row[2])

    def reviewable(self) -> tuple[int, int, int]:
        """``(reviewer, reviewee, job)``: a confirmed payment between the two for the job and
        no review by the reviewer yet (the payer reviews the payee)."""
        # an outer join, not NOT EXISTS: on SQLAlchemy 2.0 ormtune's soft-delete hook rewrites
        # EXISTS by table name, and tests/integrity_models.py has soft-deletable tables that
        # share names with the marketplace's (see the coordinator report)
        review = and_(
            Review.reviewer_id == Payment.payer_id,
            Review.reviewee_id == Payment.payee_id,
            Review.job_id == Payment.job_id,
        )
        with self._session() as session:
            row = session.execute(
                select(Payment.payer_id, Payment.payee_id, Payment.job_id)
                .outerjoin(Review, review)
                .where(Payment.status == "confirmed", Review.id.is_(None))
                .order_by(Payment.id)
                .limit(1)
            ).first()
        assert row is not None, "the data set has no confirmed, unreviewed payment"
        return int(row[0]), int(row[1]), int(row[2])

    # --- jobs ------------------------------------------------------------------------------

    def jobs(self, status: str | None = None) -> list[int]:
        statement = select(Job.id).order_by(Job.id.desc())
        if status is not None:
            statement = statement.where(Job.status == status)
        return self.scalars(statement)

    def applicants(self, job: int) -> list[int]:
        return self.scalars(
            select(Application.worker_id).where(Application.job_id == job).order_by(Application.id)
        )

    def job_title(self, job: int) -> str:
        result: str = self.scalar(select(Job.title).where(Job.id == job))
        return result

    def job_client(self, job: int) -> int:
        result: int = self.scalar(select(Job.client_id).where(Job.id == job))
        return result

    def unapplied(self, status: str = "open") -> tuple[int, int]:
        """``(worker, job)``: a worker who has not applied to a job of ``status``."""
        applied = and_(Application.job_id == Job.id, Application.worker_id == User.id)
        with self._session() as session:
            row = session.execute(
                select(User.id, Job.id)
                .join_from(User, Job, true())  # every worker with every job
                .outerjoin(Application, applied)
                .where(User.role == "worker", Job.status == status, Application.id.is_(None))
                .order_by(Job.id, User.id)
                .limit(1)
            ).first()
        assert row is not None, f"every worker applied to every {status} job"
        return int(row[0]), int(row[1])

    def reviews_received(self, user: int) -> list[Review]:
        return self.scalars(
            select(Review).where(Review.reviewee_id == user).order_by(Review.id.desc())
        )

    def reviews_given(self, user: int) -> list[Review]:
        return self.scalars(
            select(Review).where(Review.reviewer_id == user).order_by(Review.id.desc())
        )

    def account(self, user: int) -> AccountDetails | None:
        found = self.scalars(select(AccountDetails).where(AccountDetails.user_id == user))
        return found[0] if found else None

    # --- more rows for one user -------------------------------------------------------------

    def enrich(self, client: int, rows: int) -> list[int]:
        """Give ``client`` three new jobs and ``rows`` more of each: applications to those
        jobs, payments sent for them (pending), reviews given and reviews received — cycling
        over every worker and the three jobs, so a larger data set brings more users into
        the responses. Returns the new jobs' ids."""
        assert self.role(client) == "client"
        workers = self.users("worker")
        now = utcnow()
        with self._session() as session:
            jobs = [
                Job(
                    client_id=client,
                    title=f"extra job {n}",
                    description="more",
                    status="open",
                    budget_cents=100_000,
                    created_at=now,
                )
                for n in range(3)
            ]
            session.add_all(jobs)
            session.flush()
            seen: set[tuple[int, int]] = set()
            for n in range(rows):
                worker, job = workers[n % len(workers)], jobs[n % len(jobs)].id
                session.add(
                    Payment(
                        payer_id=client,
                        payee_id=worker,
                        job_id=job,
                        amount_cents=5_000 + n,
                        status="pending",
                        created_at=now,
                    )
                )
                if (worker, job) in seen:
                    continue
                seen.add((worker, job))
                session.add(
                    Application(
                        job_id=job,
                        worker_id=worker,
                        cover_letter="more",
                        bid_cents=10_000,
                        created_at=now,
                    )
                )
                for reviewer, reviewee in ((client, worker), (worker, client)):
                    session.add(
                        Review(
                            reviewer_id=reviewer,
                            reviewee_id=reviewee,
                            job_id=job,
                            rating=4,
                            comment="more",
                            created_at=now,
                        )
                    )
            session.commit()
            return [job.id for job in jobs]

    # --- tokens ----------------------------------------------------------------------------

    def expire_tokens(self, user: int) -> int:
        """Make every token of ``user`` expired (as if its TTL had passed); their number."""
        with self._session() as session:
            result = session.execute(
                update(AuthToken)
                .where(AuthToken.user_id == user)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
            session.commit()
            return int(result.rowcount)  # type: ignore[attr-defined]
