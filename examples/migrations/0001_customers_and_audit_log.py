"""Customers (soft delete + audit columns) and the audit log.

An Alembic revision as ``alembic revision --autogenerate`` writes it for
examples/integrity_models.py (tests/integration/test_alembic.py checks that, once it has run,
autogenerate finds nothing left to do, on SQLite, PostgreSQL and MariaDB).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# DateTime with microseconds on MariaDB / MySQL (ormtune's timestamp type).
TIMESTAMP = (
    sa.DateTime(timezone=True)
    .with_variant(mysql.DATETIME(fsp=6), "mariadb")
    .with_variant(mysql.DATETIME(fsp=6), "mysql")
)


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("occurred_at", TIMESTAMP, nullable=False),
        sa.Column("table_name", sa.String(length=255), nullable=False),
        sa.Column("row_key", sa.String(length=255), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=True),
        sa.Column("request_id", sa.String(length=255), nullable=True),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_table_row", "audit_log", ["table_name", "row_key"])
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("deleted_by", sa.String(length=255), nullable=True),
        sa.Column("deleted_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.Column("updated_by", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # Only live rows take part: a soft-deleted customer never blocks its e-mail address.
    # (MariaDB has no partial indexes; there this is a plain unique index. See the README.)
    op.create_index(
        "uq_customers_email_live",
        "customers",
        ["email"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
        sqlite_where=sa.text("deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_customers_email_live", table_name="customers")
    op.drop_table("customers")
    op.drop_index("ix_audit_log_table_row", table_name="audit_log")
    op.drop_table("audit_log")
