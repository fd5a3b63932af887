"""Public Protocols and type aliases: the extension points other packages meet through.

A feature that wants every statement an application runs (N+1 detection, metrics, the
dashboard) implements :class:`QueryObserver` and registers it with
``ormtune.querylog.observe()``, instead of adding engine listeners of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ormtune.querylog import QueryEvent

__all__ = ["QueryObserver"]


@runtime_checkable
class QueryObserver(Protocol):
    """Receives one :class:`~ormtune.querylog.QueryEvent` per executed statement.

    ``on_query`` runs on the thread (and in the context) that executed the statement, right
    after the database answered, so it must be quick and must not raise: an exception from an
    observer is logged and swallowed, never passed on to the application.
    """

    def on_query(self, event: QueryEvent, /) -> None: ...
