"""What the N+1 test modules share: their own tables filled with fresh rows for one test, and
the line numbers of marked source lines (findings name the line of a loop or a query)."""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator

    from sqlalchemy import Engine, MetaData
    from sqlalchemy.ext.asyncio import AsyncEngine


@contextmanager
def seeded(
    engine: Engine, metadata: MetaData, rows: Callable[[], Iterable[object]]
) -> Iterator[None]:
    """``metadata``'s tables, created afresh with ``rows()`` in them, dropped afterwards."""
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(rows())
        session.commit()
    yield
    metadata.drop_all(engine)


@asynccontextmanager
async def async_seeded(
    engine: AsyncEngine, metadata: MetaData, rows: Callable[[], Iterable[object]]
) -> AsyncIterator[None]:
    """:func:`seeded` on an asyncio engine."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add_all(rows())
        await session.commit()
    yield
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)


def line_of(path: str, marker: str) -> int:
    """The line number, in the file at ``path``, of the line containing ``marker``."""
    with open(path) as source:
        lines = enumerate(source, start=1)
        return next(n for n, line in lines if marker in line and "line_of" not in line)


def where(path: str, marker: str) -> str:
    """How a call-site on the line with ``marker`` prints (relative to the working directory)."""
    return f"{Path(path).relative_to(Path.cwd())}:{line_of(path, marker)}"
