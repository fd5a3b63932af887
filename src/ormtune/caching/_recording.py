"""What a fill runs and loads: the statements it sends and the objects it creates.

Both are recorded only while a fill runs (context variables, so threads and asyncio tasks
never mix), by listeners the cache installs; outside a fill they cost one lookup each.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Connection
    from sqlalchemy.orm import InstanceState

__all__ = [
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


def record_statement(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    recording = recorded_statements.get()
    if recording is not None:
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
