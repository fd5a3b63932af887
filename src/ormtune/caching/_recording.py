"""What a fill runs and loads: the statements it sends and the objects it creates.

Both are recorded only while a fill runs (context variables, so threads and asyncio tasks
never mix), by listeners the cache installs; outside a fill they cost one lookup each.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ormtune.caching._snapshots import note_statement

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Connection
    from sqlalchemy.orm import InstanceState

__all__ = [
    "BackslashSQL",
    "fresh_states",
    "record_fresh",
    "record_statement",
    "recorded_statements",
    "recording",
]

recorded_statements: ContextVar[list[str] | None] = ContextVar(
    "ormtune_cache_recording", default=None
)
fresh_states: ContextVar[set[int] | None] = ContextVar("ormtune_cache_fresh", default=None)


_BACKSLASH_DIALECTS = frozenset({"mysql", "mariadb"})


class BackslashSQL(str):
    """A recorded statement sent to a database whose string literals take backslash escapes
    (MySQL, MariaDB), so that the SQL reader finds its tables: read as standard SQL, a literal
    like ``'x\\''`` ends early and the next quote opens one that hides the tables after it."""

    __slots__ = ()


def record_statement(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    note_statement()
    recording = recorded_statements.get()
    if recording is not None:
        if conn.dialect.name in _BACKSLASH_DIALECTS:
            statement = BackslashSQL(statement)
        recording.append(statement)


def record_fresh(state: InstanceState[Any], context: Any) -> None:
    fresh = fresh_states.get()
    if fresh is not None:
        fresh.add(id(state))


@contextmanager
def recording() -> Iterator[list[str]]:
    """Record the statements sent inside the block; an enclosing recording (a ``@cached``
    function around a cached query) receives them too, when the block ends."""
    recorded: list[str] = []
    outer = recorded_statements.get()
    token = recorded_statements.set(recorded)
    try:
        yield recorded
    finally:
        recorded_statements.reset(token)
        if outer is not None:
            outer.extend(recorded)
