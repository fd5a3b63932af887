"""Which versions a block of work read its data at: the snapshot a response is stored with.

While :func:`collecting` is active (a context variable, so threads and asyncio tasks never
mix), the query cache notes the tokens and versions of every statement it answers: a hit
was valid at the versions the lookup returned, and a fill read the database after the lookup
that returned its versions. Any statement the cache did not answer that way (an uncached
query, a bypass, a write, an autoflush) makes the block *uncovered*: its data may come from
rows no version describes, so nothing derived from it may be stored.

Stored with compare-and-set against those versions, a result derived from the block is kept
only if no write to anything it read committed since the statement that read it started. Two
statements that saw one token at different versions make the block uncovered, whatever order
they finished in; so does a cached statement that failed (its caller may have carried on with
partial data).

Only statements run in the block's context are seen: work handed to a thread or an executor
that does not copy the context (``loop.run_in_executor``, a raw ``Thread``) is invisible to it.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ormtune.typing import Token, Version

__all__ = ["Snapshots", "collecting", "filling", "note_snapshot", "note_uncovered"]


class Snapshots:
    """The tokens a block read and the first version seen of each, or why it cannot be used."""

    __slots__ = ("uncovered", "versions")

    def __init__(self) -> None:
        self.versions: dict[Token, Version] = {}
        self.uncovered: str | None = None

    def note(self, tokens: Sequence[Token], versions: Sequence[Version]) -> None:
        if len(tokens) != len(versions):
            self.refuse("the cache backend answered versions that do not match the tokens")
            return
        seen = self.versions
        for token, version in zip(tokens, versions, strict=True):
            if seen.setdefault(token, version) != version:
                # Two statements saw the same dependency at different versions (reads that ran
                # concurrently, or one after a commit): the block mixes two states of it.
                self.refuse("a dependency changed while the response was built")

    def refuse(self, reason: str) -> None:
        if self.uncovered is None:
            self.uncovered = reason


_collector: ContextVar[Snapshots | None] = ContextVar("ormtune_snapshots", default=None)
filling: ContextVar[bool] = ContextVar("ormtune_cache_filling", default=False)
"""True while the query cache runs a statement it will answer from a snapshot (a fill)."""


@contextmanager
def collecting() -> Iterator[Snapshots]:
    """Collect the snapshot of the statements run inside the block (nested blocks are
    independent: the inner one's statements are not the outer one's)."""
    snapshots = Snapshots()
    token = _collector.set(snapshots)
    outer_filling = filling.set(False)
    try:
        yield snapshots
    finally:
        filling.reset(outer_filling)
        _collector.reset(token)


def note_snapshot(tokens: Sequence[Token], versions: Sequence[Version]) -> None:
    """The query cache answered a statement valid at these versions."""
    snapshots = _collector.get()
    if snapshots is not None:
        snapshots.note(tokens, versions)


def note_uncovered(reason: str) -> None:
    """Something ran whose data no snapshot describes."""
    snapshots = _collector.get()
    if snapshots is not None:
        snapshots.refuse(reason)


def note_statement() -> None:
    """A statement is about to be sent: uncovered unless the query cache is filling."""
    snapshots = _collector.get()
    if snapshots is not None and not filling.get():
        snapshots.refuse("a statement ran that the query cache did not answer")
