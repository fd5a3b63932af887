"""Soft delete, audit columns and the audit log, hooked into SQLAlchemy through session events.

* :class:`SoftDeleteMixin` (``deleted_at``; :class:`SoftDeleteByMixin` adds ``deleted_by``):
  soft-deleted rows vanish from every ORM read; :func:`include_deleted` is the opt-out.
* :class:`AuditMixin`: ``created_at``/``updated_at``/``created_by``/``updated_by``.
* :class:`AuditLogMixin` + :func:`record_audit_log`: one log row per changed row, in the same
  transaction, for the unit of work and for bulk ORM statements.
* :func:`actor` / :func:`audit_context` / :func:`set_audit_context` and
  :class:`AuditContextMiddleware`: who is acting, for which request.
"""

from ormtune.integrity._auditlog import (
    AUDIT_KEYS_OPTION,
    AuditAction,
    AuditLogMixin,
    jsonable,
    record_audit_log,
)
from ormtune.integrity._columns import AuditMixin
from ormtune.integrity._context import (
    AuditContext,
    actor,
    audit_context,
    current_actor,
    current_audit_context,
    current_request_id,
    reset_audit_context,
    set_audit_context,
)
from ormtune.integrity._middleware import AuditContextMiddleware
from ormtune.integrity._softdelete import (
    IncludeDeleted,
    SoftDeleteByMixin,
    SoftDeleteMixin,
    include_deleted,
    is_deleted,
    is_soft_deletable,
    restore,
    soft_delete,
    unique_among_live,
    utcnow,
)

__all__ = [
    "AUDIT_KEYS_OPTION",
    "AuditAction",
    "AuditContext",
    "AuditContextMiddleware",
    "AuditLogMixin",
    "AuditMixin",
    "IncludeDeleted",
    "SoftDeleteByMixin",
    "SoftDeleteMixin",
    "actor",
    "audit_context",
    "current_actor",
    "current_audit_context",
    "current_request_id",
    "include_deleted",
    "is_deleted",
    "is_soft_deletable",
    "jsonable",
    "record_audit_log",
    "reset_audit_context",
    "restore",
    "set_audit_context",
    "soft_delete",
    "unique_among_live",
    "utcnow",
]
