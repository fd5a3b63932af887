"""The schema of the repository, soft-delete and audit tests: a small marketplace."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ormtune.integrity import (
    AuditLogMixin,
    AuditMixin,
    SoftDeleteByMixin,
    SoftDeleteMixin,
    unique_among_live,
)


class Base(DeclarativeBase):
    pass


class User(SoftDeleteByMixin, AuditMixin, Base):
    __tablename__ = "users"
    __table_args__ = (unique_among_live("uq_users_email_live", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    password: Mapped[str] = mapped_column(String(100), default="secret")
    payments: Mapped[list[Payment]] = relationship(back_populates="user", order_by="Payment.id")
    jobs: Mapped[list[Job]] = relationship(back_populates="client", order_by="Job.id")
    account: Mapped[Account | None] = relationship(back_populates="user")


class Job(SoftDeleteMixin, Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    client_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    client: Mapped[User] = relationship(back_populates="jobs")
    tags: Mapped[list[Tag]] = relationship(secondary="job_tags", order_by="Tag.id")
    payments: Mapped[list[Payment]] = relationship(back_populates="job", order_by="Payment.id")


class Tag(SoftDeleteMixin, Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    jobs: Mapped[list[Job]] = relationship(secondary="job_tags", order_by="Job.id", viewonly=True)


class JobTag(SoftDeleteMixin, Base):
    """The association table of ``Job.tags``, soft-deletable: a deleted row does not link."""

    __tablename__ = "job_tags"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id"), primary_key=True)


class Employee(AuditMixin, Base):
    """Joined-table inheritance: ``Manager`` rows live in ``employees`` and ``managers``."""

    __tablename__ = "employees"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "employee"}


class Manager(Employee):
    __tablename__ = "managers"

    id: Mapped[int] = mapped_column(ForeignKey("employees.id"), primary_key=True)
    budget: Mapped[int] = mapped_column(Integer, default=0)
    __mapper_args__ = {"polymorphic_identity": "manager"}


class Payment(SoftDeleteMixin, Base):
    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    user: Mapped[User] = relationship(back_populates="payments")
    job: Mapped[Job | None] = relationship(back_populates="payments")


class Account(Base):
    """No soft delete: repositories hard-delete it."""

    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("iban", name="uq_accounts_iban"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    iban: Mapped[str] = mapped_column(String(40))
    token: Mapped[str | None] = mapped_column(String(40))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", name="fk_accounts_user"))
    user: Mapped[User] = relationship(back_populates="account")


class AuditLog(AuditLogMixin, Base):
    __tablename__ = "audit_log"
