"""Models for the soft-delete and audit-log example migration (examples/migrations/)."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ormtune.integrity import (
    AuditLogMixin,
    AuditMixin,
    SoftDeleteByMixin,
    unique_among_live,
)


class Base(DeclarativeBase):
    pass


class Customer(SoftDeleteByMixin, AuditMixin, Base):
    __tablename__ = "customers"
    __table_args__ = (unique_among_live("uq_customers_email_live", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))


class AuditLog(AuditLogMixin, Base):
    __tablename__ = "audit_log"
