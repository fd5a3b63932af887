"""Concurrent AsyncSession commits bump versions without blocking each other's event loop.

Regression: the cache held its pending-bump lock (a ``threading.Lock``) across the backend's
``bump``. Under ``AsyncSession`` a backend may await there (RedisBackend does, through
SQLAlchemy's greenlet bridge), so while one task's bump awaited, a second task's commit tried
the same lock on the loop's own thread and froze the loop for good: an app on Redis stopped
answering at its second concurrent write.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.util import await_only  # the greenlet bridge (await_ on 2.1 keeps this alias)

from ormtune.backends import MemoryBackend
from ormtune.caching import QueryCache

if TYPE_CHECKING:
    from collections.abc import Collection
    from pathlib import Path

    from ormtune.typing import Token


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)


class AwaitingBackend(MemoryBackend):
    """A memory backend whose ``bump`` awaits on the event loop, as RedisBackend's does under
    AsyncSession, until two bumps are waiting at once."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self.both_waiting = asyncio.Event()
        self.release = asyncio.Event()

    def bump(self, tokens: Collection[Token], /) -> None:
        self.waiting += 1
        if self.waiting == 2:
            self.both_waiting.set()
        await_only(self.release.wait())
        super().bump(tokens)


async def _two_concurrent_commits(url: str) -> list[int]:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    backend = AwaitingBackend()
    cache = QueryCache(backend).install()
    try:

        async def write(item_id: int) -> None:
            async with AsyncSession(engine) as session:
                session.add(Item(id=item_id))
                await session.commit()

        async def release_when_both_wait() -> None:
            await backend.both_waiting.wait()
            backend.release.set()

        await asyncio.gather(write(1), write(2), release_when_both_wait())
        async with AsyncSession(engine) as session:
            return list(await session.scalars(select(Item.id).order_by(Item.id)))
    finally:
        cache.uninstall()
        await engine.dispose()


def test_a_commit_never_waits_on_another_tasks_bump(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'items.db'}"
    result: list[list[int]] = []
    # In a thread of its own, so that a frozen event loop fails this test instead of hanging
    # the run; the join's bound is a deadlock guard, not a timing assertion.
    thread = threading.Thread(
        target=lambda: result.append(asyncio.run(_two_concurrent_commits(url))), daemon=True
    )
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the second commit blocked the event loop (deadlock)"
    assert result == [[1, 2]]
