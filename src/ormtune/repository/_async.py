"""``AsyncRepository[Model]``: the same repository on an ``AsyncSession``.

Each method runs the sync :class:`~ormtune.repository.Repository` method of the same name
inside ``AsyncSession.run_sync`` (SQLAlchemy's own bridge: the sync code runs in a greenlet
and every database call awaits the async driver). There is one implementation, so the two
cannot drift apart; a test checks that every public method has the same signature in both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from ormtune.exceptions import ConfigurationError
from ormtune.repository._sync import Repository, model_from_generic

if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import AsyncSession

    from ormtune.caching import CacheOption
    from ormtune.repository._query import LoadSpec, OrderSpec, Page

__all__ = ["AsyncRepository"]

M = TypeVar("M")
T = TypeVar("T")


class AsyncRepository(Generic[M]):
    """:class:`~ormtune.repository.Repository`'s API, awaitable, over an ``AsyncSession``::

        class PaymentRepository(AsyncRepository[Payment]):
            load = [Payment.user, (Payment.job, Job.client)]

        payments = await PaymentRepository(session).list(filters={"status": "paid"})

    Custom queries: set ``sync_repository`` to a ``Repository`` subclass with the method, and
    call it with ``await self.run(lambda repo: repo.my_query(...))``.
    """

    model: ClassVar[type[Any]]
    load: ClassVar[Sequence[LoadSpec]] = ()
    order_by: ClassVar[Sequence[OrderSpec]] = ()
    chunk_size: ClassVar[int] = 1000
    cache: ClassVar[CacheOption | None] = None
    sync_repository: ClassVar[type[Repository[Any]]] = Repository

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model" not in cls.__dict__:
            model = model_from_generic(cls, AsyncRepository)
            if model is not None:
                cls.model = model

    def __init__(
        self,
        session: AsyncSession,
        model: type[M] | None = None,
        *,
        load: Sequence[LoadSpec] | None = None,
        cache: CacheOption | None = None,
    ) -> None:
        cls = type(self)
        resolved = model or getattr(cls, "model", None)
        if resolved is None:
            raise ConfigurationError(
                f"{cls.__name__} has no model: subclass AsyncRepository[Model], set "
                "model = Model, or pass the model to the constructor"
            )
        self.session = session
        self.sync: Repository[M] = cls.sync_repository(
            session.sync_session,
            resolved,
            load=cls.load if load is None else load,
            cache=cls.cache if cache is None else cache,
        )
        self.sync.default_order = cls.order_by or self.sync.default_order
        self.sync.chunk_size = cls.chunk_size  # type: ignore[misc]
        self.model: type[M] = resolved  # type: ignore[misc]

    async def run(self, operation: Callable[[Repository[M]], T]) -> T:
        """Run ``operation(sync_repository)`` on this session's connection, and await it."""
        return await self.session.run_sync(lambda _: operation(self.sync))

    async def get_or_none(
        self, key: object, *, load: Sequence[LoadSpec] | None = None, include_deleted: bool = False
    ) -> M | None:
        return await self.run(
            lambda r: r.get_or_none(key, load=load, include_deleted=include_deleted)
        )

    async def get(
        self, key: object, *, load: Sequence[LoadSpec] | None = None, include_deleted: bool = False
    ) -> M:
        return await self.run(lambda r: r.get(key, load=load, include_deleted=include_deleted))

    async def get_many(
        self,
        keys: Iterable[object],
        *,
        load: Sequence[LoadSpec] | None = None,
        include_deleted: bool = False,
    ) -> builtins.list[M]:
        return await self.run(
            lambda r: r.get_many(keys, load=load, include_deleted=include_deleted)
        )

    async def list(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        order_by: Sequence[OrderSpec] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        load: Sequence[LoadSpec] | None = None,
        include_deleted: bool = False,
    ) -> builtins.list[M]:
        return await self.run(
            lambda r: r.list(
                *where,
                filters=filters,
                order_by=order_by,
                limit=limit,
                offset=offset,
                load=load,
                include_deleted=include_deleted,
            )
        )

    async def page(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        order_by: Sequence[str] | None = None,
        limit: int = 50,
        after: str | None = None,
        load: Sequence[LoadSpec] | None = None,
        include_deleted: bool = False,
    ) -> Page[M]:
        return await self.run(
            lambda r: r.page(
                *where,
                filters=filters,
                order_by=order_by,
                limit=limit,
                after=after,
                load=load,
                include_deleted=include_deleted,
            )
        )

    async def count(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        include_deleted: bool = False,
    ) -> int:
        return await self.run(
            lambda r: r.count(*where, filters=filters, include_deleted=include_deleted)
        )

    async def list_and_count(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        order_by: Sequence[OrderSpec] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        load: Sequence[LoadSpec] | None = None,
        include_deleted: bool = False,
    ) -> tuple[builtins.list[M], int]:
        return await self.run(
            lambda r: r.list_and_count(
                *where,
                filters=filters,
                order_by=order_by,
                limit=limit,
                offset=offset,
                load=load,
                include_deleted=include_deleted,
            )
        )

    async def exists(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        include_deleted: bool = False,
    ) -> bool:
        return await self.run(
            lambda r: r.exists(*where, filters=filters, include_deleted=include_deleted)
        )

    async def create(self, **values: Any) -> M:
        return await self.run(lambda r: r.create(**values))

    async def create_many(
        self, rows: Iterable[Mapping[str, Any]], *, chunk_size: int | None = None
    ) -> builtins.list[M]:
        return await self.run(lambda r: r.create_many(rows, chunk_size=chunk_size))

    async def update(self, key_or_instance: object, **values: Any) -> M:
        return await self.run(lambda r: r.update(key_or_instance, **values))

    async def update_many(
        self,
        values: Mapping[str, Any],
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        include_deleted: bool = False,
    ) -> int:
        return await self.run(
            lambda r: r.update_many(
                values, *where, filters=filters, include_deleted=include_deleted
            )
        )

    async def upsert(
        self,
        rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        conflict: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> builtins.list[M]:
        return await self.run(lambda r: r.upsert(rows, conflict=conflict, update=update))

    async def delete(self, key_or_instance: object) -> None:
        await self.run(lambda r: r.delete(key_or_instance))

    async def hard_delete(self, key_or_instance: object) -> None:
        await self.run(lambda r: r.hard_delete(key_or_instance))

    async def restore(self, key_or_instance: object) -> M:
        return await self.run(lambda r: r.restore(key_or_instance))

    async def delete_where(
        self, *where: ColumnElement[bool], filters: Mapping[str, object] | None = None
    ) -> int:
        return await self.run(lambda r: r.delete_where(*where, filters=filters))
