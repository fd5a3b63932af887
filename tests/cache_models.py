"""The schema of the cache tests: the shapes whose dependencies a cache must get right."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
from typing import Any

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Numeric, String, Table
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class CacheBase(DeclarativeBase):
    pass


class Status(enum.Enum):
    PENDING = "pending"
    CONFIRMED = "confirmed"


payment_tags = Table(
    "c_payment_tags",
    CacheBase.metadata,
    Column("payment_id", ForeignKey("c_payments.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("c_tags.id", ondelete="CASCADE"), primary_key=True),
)


class Account(CacheBase):
    __tablename__ = "c_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    payments: Mapped[list[Payment]] = relationship(
        back_populates="account", order_by="Payment.id", passive_deletes=True
    )


class Payment(CacheBase):
    __tablename__ = "c_payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("c_accounts.id", ondelete="CASCADE"))
    amount: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))
    status: Mapped[Status] = mapped_column(SqlEnum(Status), default=Status.PENDING)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=dt.datetime(2026, 1, 2, 3, 4))
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    account: Mapped[Account] = relationship(back_populates="payments")
    tags: Mapped[list[Tag]] = relationship(secondary=payment_tags, order_by="Tag.id")


class Tag(CacheBase):
    __tablename__ = "c_tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(30))


class Employee(CacheBase):
    __tablename__ = "c_employees"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    type: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}


class Manager(Employee):
    __tablename__ = "c_managers"

    id: Mapped[int] = mapped_column(ForeignKey("c_employees.id"), primary_key=True)
    budget: Mapped[int]
    __mapper_args__ = {"polymorphic_identity": "manager"}


def sample(accounts: int = 3, payments_each: int = 3) -> list[Any]:
    """Accounts 1..n with payments, two tags, an employee and a manager."""
    tags = [Tag(id=1, label="rent"), Tag(id=2, label="food")]
    rows: list[Any] = [*tags, Employee(id=1, name="ann"), Manager(id=2, name="bob", budget=10)]
    for a in range(1, accounts + 1):
        payments = [
            Payment(
                amount=decimal.Decimal(f"{a}{p}.50"),
                meta={"n": p, "~": "not a tag"},
                tags=tags[: p % 3],
            )
            for p in range(payments_each)
        ]
        rows.append(Account(id=a, name=f"account {a}", payments=payments))
    return rows
