"""Audit columns: when a row was created and last updated, and by whom.

Plain column defaults, so they are filled on every path that writes through SQLAlchemy: the
unit of work, ORM bulk ``insert()``/``update()`` (``create_many``, ``update_many``) and Core
statements alike. ``created_by``/``updated_by`` come from the current
:func:`~ormtune.integrity.audit_context`. (Upserts set ``updated_*`` explicitly: an
``ON CONFLICT DO UPDATE`` clause does not apply ``onupdate`` defaults.)
"""

from __future__ import annotations

import datetime  # noqa: TC003 (SQLAlchemy resolves Mapped[...] annotations at runtime)

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from ormtune.integrity._context import current_actor
from ormtune.integrity._softdelete import TIMESTAMP, utcnow

__all__ = ["AuditMixin"]


class AuditMixin:
    """Adds ``created_at``, ``updated_at`` (timezone-aware, UTC), ``created_by`` and
    ``updated_by`` (the actor from :func:`~ormtune.integrity.audit_context`, or ``NULL``)."""

    created_at: Mapped[datetime.datetime] = mapped_column(TIMESTAMP, default=utcnow, nullable=False)
    updated_at: Mapped[datetime.datetime] = mapped_column(
        TIMESTAMP, default=utcnow, onupdate=utcnow, nullable=False
    )
    created_by: Mapped[str | None] = mapped_column(String(255), default=current_actor)
    updated_by: Mapped[str | None] = mapped_column(
        String(255), default=current_actor, onupdate=current_actor
    )
