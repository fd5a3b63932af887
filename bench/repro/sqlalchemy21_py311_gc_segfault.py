"""Reproducer: SQLAlchemy 2.1.x (compiled extensions) crashes CPython 3.11.7 in garbage collection.

Not an ormtune test: it runs plain SQLAlchemy on PostgreSQL (``--with-ormtune`` also imports
ormtune, which changes nothing). Seen here on 2026-11-22 with SQLAlchemy 2.1.0, 2.1.5, 2.1.8 and
2.1.9 on CPython 3.11.7, psycopg's binary or pure-Python implementation alike: "Fatal Python
error: Segmentation fault ... Garbage-collecting" within 300 iterations of a selectinload loop.
The same script completes on CPython 3.12.1 and 3.13.0 with SQLAlchemy 2.1.9, and on CPython
3.11.7 with SQLAlchemy 2.0.58.

    python -X faulthandler bench/repro/sqlalchemy21_py311_gc_segfault.py
"""

from __future__ import annotations

import secrets
import sys

from sqlalchemy import ForeignKey, String, create_engine, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

if "--with-ormtune" in sys.argv:
    import ormtune  # noqa: F401

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "repro_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    payments: Mapped[list[Payment]] = relationship(back_populates="user", order_by="Payment.id")


class Payment(Base):
    __tablename__ = "repro_payments"
    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int]
    user_id: Mapped[int] = mapped_column(ForeignKey("repro_users.id"))
    user: Mapped[User] = relationship(back_populates="payments")


def main() -> None:
    name = f"repro_{secrets.token_hex(4)}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(make_url(ADMIN_URL).set(database=name))
    try:
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(User), [{"id": i, "name": f"u{i}"} for i in range(1, 101)])
            rows = [
                {"id": i * 5 + j, "amount": j, "user_id": i}
                for i in range(1, 101)
                for j in range(5)
            ]
            conn.execute(insert(Payment), rows)
        total = 0
        for _ in range(300):
            with Session(engine) as session:
                for user in session.scalars(select(User).options(selectinload(User.payments))):
                    total += sum(len(payment.user.name) for payment in user.payments)
        print(f"completed without crashing ({total})")
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
