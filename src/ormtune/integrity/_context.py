"""Who is acting, and for which request: the context that audit columns and the audit log read.

Held in a :class:`contextvars.ContextVar`, so threads and asyncio tasks never see each other's
actor. Applications set it once per request (``with audit_context(actor=user.id):``, or from
middleware with :func:`set_audit_context` / :func:`reset_audit_context`); everything written
inside records it.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "AuditContext",
    "actor",
    "audit_context",
    "current_actor",
    "current_audit_context",
    "current_request_id",
    "reset_audit_context",
    "set_audit_context",
]


@dataclass(frozen=True, slots=True)
class AuditContext:
    """The actor (a user id, a service name: anything with a useful ``str()``) and the request
    id that writes made now are attributed to. Either may be ``None``."""

    actor: str | None = None
    request_id: str | None = None


_EMPTY = AuditContext()
_KEEP: Any = object()
_context: ContextVar[AuditContext] = ContextVar("ormtune_audit_context", default=_EMPTY)


def current_audit_context() -> AuditContext:
    """The :class:`AuditContext` in force in this thread or task."""
    return _context.get()


def current_actor() -> str | None:
    """The actor writes are attributed to now (``None`` outside any :func:`audit_context`).

    Suitable as a column default: ``mapped_column(default=current_actor)``.
    """
    return _context.get().actor


def current_request_id() -> str | None:
    """The request id writes are attributed to now, or ``None``."""
    return _context.get().request_id


def set_audit_context(
    *, actor: object = None, request_id: str | None = None
) -> Token[AuditContext]:
    """Attribute writes from now on (in this thread or task) to ``actor`` and ``request_id``;
    give the returned token to :func:`reset_audit_context` to undo it.

    This is the hook for middleware (ormtune's own and the application's): set at the start of
    a request, reset in ``finally``. ``actor`` is stored as ``str(actor)``.
    """
    return _context.set(AuditContext(None if actor is None else str(actor), request_id))


def reset_audit_context(token: Token[AuditContext]) -> None:
    """Restore the audit context that was in force before :func:`set_audit_context`."""
    _context.reset(token)


@contextmanager
def audit_context(*, actor: object = None, request_id: str | None = None) -> Iterator[AuditContext]:
    """``with audit_context(actor=user.id, request_id=rid):`` attributes every write inside
    the block (sync or asyncio) to them; the previous context comes back afterwards."""
    token = set_audit_context(actor=actor, request_id=request_id)
    try:
        yield _context.get()
    finally:
        reset_audit_context(token)


@contextmanager
def actor(who: object, *, request_id: str | None = _KEEP) -> Iterator[AuditContext]:
    """``with actor(user.id):`` attributes every write inside the block to ``who``, keeping
    the request id already in force (unless ``request_id=`` is given).

    It fits instrumentation's middleware as is:
    ``OrmtuneMiddleware(app, actor=lambda scope: ..., actor_scope=ormtune.integrity.actor)``.
    :class:`~ormtune.integrity.AuditContextMiddleware` sets actor and request id per request
    without instrumentation.
    """
    if request_id is _KEEP:
        request_id = _context.get().request_id
    with audit_context(actor=who, request_id=request_id) as context:
        yield context
