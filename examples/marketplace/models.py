"""The marketplace's tables: users, profiles, account details, jobs, applications, payments,
reviews and access tokens.

Money is in integer cents and times are naive UTC to the second, so every database stores and
returns exactly the same values. Relationships use SQLAlchemy's default lazy loading; which
loads a read does is up to the repositories (and, in tuned mode, ormtune's autoload).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "AccountDetails",
    "Application",
    "AuthToken",
    "Base",
    "Job",
    "Payment",
    "Profile",
    "Review",
    "User",
    "utcnow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now, in UTC, to the second (what every database stores exactly)."""
    return datetime.now(UTC).replace(microsecond=0, tzinfo=None)


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('client', 'worker')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(10))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    profile: Mapped[Profile | None] = relationship(back_populates="user")
    account: Mapped[AccountDetails | None] = relationship(back_populates="user")
    jobs: Mapped[list[Job]] = relationship(back_populates="client", order_by="Job.id")


class Profile(Base):
    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    headline: Mapped[str] = mapped_column(String(200))
    bio: Mapped[str] = mapped_column(Text)
    skills: Mapped[str] = mapped_column(String(500))
    city: Mapped[str] = mapped_column(String(100))
    hourly_rate_cents: Mapped[int] = mapped_column(Integer)

    user: Mapped[User] = relationship(back_populates="profile")


class AccountDetails(Base):
    """Where a user's payouts go: visible to that user only."""

    __tablename__ = "account_details"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    holder_name: Mapped[str] = mapped_column(String(100))
    iban: Mapped[str] = mapped_column(String(34))
    bic: Mapped[str] = mapped_column(String(11))
    currency: Mapped[str] = mapped_column(String(3))
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    user: Mapped[User] = relationship(back_populates="account")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("status IN ('open', 'closed')", name="status"),
        # GET /jobs?status=open pages by id within a status
        Index(None, "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    budget_cents: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(10), default="open")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    client: Mapped[User] = relationship(back_populates="jobs")
    applications: Mapped[list[Application]] = relationship(
        back_populates="job", order_by="Application.id"
    )


class Application(Base):
    """A worker's application to a job (one per worker and job)."""

    __tablename__ = "applications"
    __table_args__ = (UniqueConstraint("job_id", "worker_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # job_id is the leading column of the unique constraint's index
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    worker_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    cover_letter: Mapped[str] = mapped_column(Text)
    bid_cents: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="applications")
    worker: Mapped[User] = relationship()


class Payment(Base):
    """Money from a payer (the job's client) to a payee; ``pending`` until the payer confirms."""

    __tablename__ = "payments"
    __table_args__ = (CheckConstraint("status IN ('pending', 'confirmed')", name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    payer_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    payee_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime)

    payer: Mapped[User] = relationship(foreign_keys=[payer_id])
    payee: Mapped[User] = relationship(foreign_keys=[payee_id])
    job: Mapped[Job] = relationship()

    # Every UPDATE says "... WHERE id = ? AND status = <the status it read>", so of two
    # concurrent confirmations only one matches a row (the other fails with StaleDataError,
    # a 409), on every database and without a table-wide bulk UPDATE.
    __mapper_args__ = {  # noqa: RUF012 - SQLAlchemy's declarative hook, read once
        "version_id_col": status,
        "version_id_generator": False,
    }


class Review(Base):
    """A rating (1-5) one party of a paid job gives the other, once per job."""

    __tablename__ = "reviews"
    __table_args__ = (
        UniqueConstraint("reviewer_id", "job_id", "reviewee_id"),
        CheckConstraint("rating BETWEEN 1 AND 5", name="rating"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # reviewer_id leads the unique constraint's index
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    reviewee_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    rating: Mapped[int] = mapped_column(SmallInteger)
    comment: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    reviewer: Mapped[User] = relationship(foreign_keys=[reviewer_id])
    reviewee: Mapped[User] = relationship(foreign_keys=[reviewee_id])
    job: Mapped[Job] = relationship()


class AuthToken(Base):
    """An access token: ``<id>.<secret>`` is handed out, only the secret's SHA-256 is stored."""

    __tablename__ = "auth_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)

    user: Mapped[User] = relationship()
