"""``Service[Model]``: the layer between routes and a repository — input mapping, validation
hooks and transaction boundaries. ``AsyncService`` is the same over an ``AsyncRepository``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ormtune.exceptions import MissingDependencyError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from ormtune.repository._async import AsyncRepository
    from ormtune.repository._sync import Repository

__all__ = ["AsyncService", "Service"]

M = TypeVar("M")


class _Hooks(Generic[M]):
    """The hooks both services share; override them in a subclass."""

    def to_values(self, data: object, *, partial: bool) -> dict[str, Any]:
        """Map input (a dict, or a pydantic model) to model field values.

        ``partial`` (updates): a pydantic model gives only the fields that were set.
        Override to rename or derive fields.
        """
        if isinstance(data, Mapping):
            return dict(data)
        try:
            import pydantic
        except ImportError as exc:
            raise MissingDependencyError(
                "pydantic", "repository", "Service input mapping from pydantic models"
            ) from exc
        if isinstance(data, pydantic.BaseModel):
            return data.model_dump(exclude_unset=partial)
        raise TypeError(
            f"service input must be a mapping or a pydantic model, not {type(data).__name__}"
        )

    def validate_create(self, values: dict[str, Any]) -> dict[str, Any]:
        """Check (and adjust) the values of a new row; raise to refuse them."""
        return values

    def validate_update(self, instance: M, values: dict[str, Any]) -> dict[str, Any]:
        """Check (and adjust) the changes to ``instance``; raise to refuse them."""
        return values


class Service(_Hooks[M]):
    """Create, update and delete through a :class:`~ormtune.repository.Repository`, with the
    input mapped by :meth:`to_values` and checked by :meth:`validate_create` /
    :meth:`validate_update`; :meth:`transaction` marks the unit of work::

        with service.transaction():
            payment = service.create(PaymentIn(amount=10, user_id=1))
    """

    def __init__(self, repository: Repository[M]) -> None:
        self.repository = repository

    @property
    def session(self) -> Session:
        return self.repository.session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Commit the block's work when it ends, roll it back if it raises. Inside a
        transaction that is already open, the block is a savepoint (the outer owner commits)."""
        session = self.session
        if session.in_transaction():
            with session.begin_nested():
                yield session
        else:
            with session.begin():
                yield session

    def get(self, key: object) -> M:
        return self.repository.get(key)

    def create(self, data: object) -> M:
        values = self.validate_create(self.to_values(data, partial=False))
        return self.repository.create(**values)

    def update(self, key: object, data: object) -> M:
        instance = self.repository.get(key)
        values = self.validate_update(instance, self.to_values(data, partial=True))
        return self.repository.update(instance, **values)

    def delete(self, key: object) -> None:
        self.repository.delete(key)


class AsyncService(_Hooks[M]):
    """:class:`Service` over an :class:`~ormtune.repository.AsyncRepository`::

    async with service.transaction():
        payment = await service.create(PaymentIn(amount=10, user_id=1))
    """

    def __init__(self, repository: AsyncRepository[M]) -> None:
        self.repository = repository

    @property
    def session(self) -> AsyncSession:
        return self.repository.session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """As :meth:`Service.transaction`, awaited."""
        session = self.session
        if session.in_transaction():
            async with session.begin_nested():
                yield session
        else:
            async with session.begin():
                yield session

    async def get(self, key: object) -> M:
        return await self.repository.get(key)

    async def create(self, data: object) -> M:
        values = self.validate_create(self.to_values(data, partial=False))
        return await self.repository.create(**values)

    async def update(self, key: object, data: object) -> M:
        instance = await self.repository.get(key)
        values = self.validate_update(instance, self.to_values(data, partial=True))
        return await self.repository.update(instance, **values)

    async def delete(self, key: object) -> None:
        await self.repository.delete(key)
