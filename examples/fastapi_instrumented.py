"""A FastAPI service with ormtune's production instrumentation: copy, adapt, run.

    pip install 'ormtune[prometheus]' fastapi uvicorn aiosqlite
    uvicorn examples.fastapi_instrumented:app

Then ``curl -i localhost:8000/authors/1`` shows ``X-Request-ID`` and
``Server-Timing: db;dur=...;desc="2 queries"``, every request logs one JSON line, statements
slower than 200 ms log their SQL, call-site and plan, and ``curl localhost:8000/metrics/``
serves the metrics. Set ``DATABASE_URL`` (for example
``postgresql+asyncpg://app@db/app``) to use another database.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncAttrs, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ormtune.instrumentation import (
    JsonFormatter,
    OrmtuneMiddleware,
    TimedAsyncAdaptedQueuePool,
    instrument,
    metrics_app,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "books"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///instrumented_example.db")
# The timed pool adds the checkout wait histogram and the timeout counter to the pool metrics.
engine = create_async_engine(DATABASE_URL, poolclass=TimedAsyncAdaptedQueuePool)
Session = async_sessionmaker(engine, expire_on_commit=False)

# 1. Logs: JSON lines on stderr; INFO gives one line per request and the slow-query log.
handler = logging.StreamHandler()
handler.setFormatter(JsonFormatter())
logging.getLogger("ormtune").addHandler(handler)
logging.getLogger("ormtune").setLevel(logging.INFO)

# 2. Metrics, query logs and the slow-query log, for every statement on this engine.
instrumentation = instrument(engine, slow_query_threshold=0.2, explain=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with Session() as session:
        if await session.get(Author, 1) is None:
            session.add(Author(id=1, name="Ursula", books=[Book(title="The Dispossessed")]))
            await session.commit()
    yield
    instrumentation.close()
    await engine.dispose()


app = FastAPI(lifespan=lifespan)
# 3. The middleware: request ids, Server-Timing, per-request metrics and the summary line.
app.add_middleware(OrmtuneMiddleware, metrics=instrumentation.metrics, query_count_header=True)
# 4. /metrics for Prometheus (aggregates all workers under PROMETHEUS_MULTIPROC_DIR).
app.mount("/metrics", metrics_app())


@app.get("/authors/{author_id}")
async def author(author_id: int) -> dict[str, object]:
    async with Session() as session:
        row = await session.scalar(select(Author).where(Author.id == author_id))
        if row is None:
            raise HTTPException(status_code=404, detail="no such author")
        books = await row.awaitable_attrs.books
        return {"id": row.id, "name": row.name, "books": [book.title for book in books]}
