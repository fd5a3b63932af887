"""One test body for sync and asyncio: a ``Harness`` runs sync code against a ``Session`` or,
through ``AsyncSession.run_sync``, against an ``AsyncSession`` on the async driver; its
repositories are awaitable either way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event

from ormtune.repository import AsyncRepository, Repository

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

    from ormtune.repository import LoadSpec

M = TypeVar("M")
T = TypeVar("T")


class SyncAsAsync(AsyncRepository[M]):
    """The awaitable repository API with a plain ``Repository`` on a sync session underneath."""

    def __init__(
        self, session: Session, model: type[M], *, load: Sequence[LoadSpec] | None = None
    ) -> None:
        self.sync = Repository(session, model, load=load)
        self.model = model  # type: ignore[misc]

    async def run(self, operation: Callable[[Repository[M]], T]) -> T:
        return operation(self.sync)


class Harness:
    """A session of either kind, and what the tests need from it."""

    def __init__(
        self,
        kind: str,
        backend: str,
        session: Session | None = None,
        async_session: AsyncSession | None = None,
        engine: Engine | AsyncEngine | None = None,
    ) -> None:
        self.kind = kind
        self.backend = backend
        self._session = session
        self._async_session = async_session
        self.engine = engine

    @property
    def sync_session(self) -> Session:
        if self._session is not None:
            return self._session
        assert self._async_session is not None
        return self._async_session.sync_session

    @property
    def async_session(self) -> AsyncSession:
        assert self._async_session is not None, "a sync harness has no AsyncSession"
        return self._async_session

    async def run(self, fn: Callable[[Session], T]) -> T:
        """``fn(session)``; under asyncio inside ``run_sync`` (lazy loads allowed)."""
        if self._async_session is not None:
            return await self._async_session.run_sync(fn)
        assert self._session is not None
        return fn(self._session)

    def repo(self, model: type[M], *, load: Sequence[LoadSpec] | None = None) -> AsyncRepository[M]:
        if self._async_session is not None:
            return AsyncRepository(self._async_session, model, load=load)
        assert self._session is not None
        return SyncAsAsync(self._session, model, load=load)

    async def commit(self) -> None:
        if self._async_session is not None:
            await self._async_session.commit()
        else:
            assert self._session is not None
            self._session.commit()

    async def rollback(self) -> None:
        if self._async_session is not None:
            await self._async_session.rollback()
        else:
            assert self._session is not None
            self._session.rollback()

    async def fresh(self) -> None:
        """Forget every loaded instance (a new request, in effect)."""
        await self.commit()
        self.sync_session.expunge_all()


def sqlite_foreign_keys(engine: Engine) -> None:
    """SQLite enforces foreign keys only when asked, per connection."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
