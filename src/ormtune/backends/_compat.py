"""SQLAlchemy's greenlet bridge, under one name on SQLAlchemy 2.0 and 2.1.

``AsyncSession`` runs ORM code (and so the cache hooks) inside a greenlet that SQLAlchemy
spawned from a coroutine; code there may wait for a coroutine without blocking the event
loop through SQLAlchemy's ``await_only`` (2.0), renamed ``await_`` in 2.1 (which keeps
``await_only`` as an alias). ``in_greenlet()`` is true exactly inside such a greenlet, in
both series (checked on 2.0.58 and 2.1.9).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import util as _util
from sqlalchemy.util.concurrency import in_greenlet

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["await_", "in_greenlet"]

_T = TypeVar("_T")

_await: Callable[[Awaitable[Any]], Any] = getattr(_util, "await_", None) or _util.await_only


def await_(awaitable: Awaitable[_T]) -> _T:
    """Wait for ``awaitable`` from inside SQLAlchemy's greenlet, on its event loop."""
    result: _T = _await(awaitable)
    return result
