"""Service and AsyncService: input mapping (dicts, pydantic), validation hooks, transactions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pydantic
import pytest

from ormtune.exceptions import DuplicateKeyError, NotFoundError
from ormtune.repository import AsyncRepository, AsyncService, Repository, Service
from tests.integrity_models import User

if TYPE_CHECKING:
    from tests.integrity_harness import Harness


class UserIn(pydantic.BaseModel):
    email: str
    name: str


class UserPatch(pydantic.BaseModel):
    email: str | None = None
    name: str | None = None


class Refused(ValueError):
    pass


class Hooks:
    def validate_create(self, values: dict[str, Any]) -> dict[str, Any]:
        if not values["email"].endswith("@example.com"):
            raise Refused("only example.com addresses")
        return {**values, "email": values["email"].lower()}

    def validate_update(self, instance: User, values: dict[str, Any]) -> dict[str, Any]:
        if "email" in values:
            raise Refused("email cannot change")
        return values


class UserService(Hooks, Service[User]):
    pass


class AsyncUserService(Hooks, AsyncService[User]):
    pass


async def test_service_maps_validates_and_commits(integrity_db: Harness) -> None:
    if integrity_db.kind == "sync":
        sync_service = UserService(Repository(integrity_db.sync_session, User))
        await integrity_db.commit()
        with sync_service.transaction():
            created = sync_service.create(UserIn(email="Ann@example.com", name="Ann"))
            sync_service.create({"email": "bo@example.com", "name": "Bo"})
        assert created.email == "ann@example.com"
        with pytest.raises(Refused), sync_service.transaction():
            sync_service.create({"email": "cy@example.com", "name": "Cy"})
            sync_service.create({"email": "evil@elsewhere.org", "name": "Evil"})
        updated = sync_service.update(created.id, UserPatch(name="Anne"))
        assert (updated.name, updated.email) == ("Anne", "ann@example.com")  # unset: untouched
        with pytest.raises(Refused):
            sync_service.update(created.id, UserPatch(email="x@example.com"))
        sync_service.delete(created.id)
        with pytest.raises(NotFoundError):
            sync_service.get(created.id)
        with pytest.raises(TypeError, match=r"mapping or a pydantic model"):
            sync_service.create(["not", "a", "mapping"])
    else:
        async_service = AsyncUserService(AsyncRepository(integrity_db.async_session, User))
        await integrity_db.commit()
        async with async_service.transaction():
            created = await async_service.create(UserIn(email="Ann@example.com", name="Ann"))
            await async_service.create({"email": "bo@example.com", "name": "Bo"})
        created_id = await integrity_db.run(lambda s: created.id)
        with pytest.raises(Refused):
            async with async_service.transaction():
                await async_service.create({"email": "cy@example.com", "name": "Cy"})
                await async_service.create({"email": "evil@elsewhere.org", "name": "Evil"})
        updated = await async_service.update(created_id, UserPatch(name="Anne"))
        assert await integrity_db.run(lambda s: (updated.name, updated.email)) == (
            "Anne",
            "ann@example.com",
        )
        await async_service.delete(created_id)
        with pytest.raises(NotFoundError):
            await async_service.get(created_id)
    await integrity_db.commit()
    emails = sorted(u.email for u in await integrity_db.repo(User).list(include_deleted=True))
    assert emails == ["ann@example.com", "bo@example.com"]  # Cy rolled back with Evil


async def test_a_nested_transaction_is_a_savepoint(integrity_db: Harness) -> None:
    if integrity_db.kind == "async":
        service: Any = AsyncService(AsyncRepository(integrity_db.async_session, User))
    else:
        service = Service(Repository(integrity_db.sync_session, User))
    await integrity_db.repo(User).create(email="a@example.com", name="A")  # outer transaction
    with pytest.raises(DuplicateKeyError):
        if integrity_db.kind == "async":
            async with service.transaction():
                await service.create({"email": "a@example.com", "name": "dup"})
        else:
            with service.transaction():
                service.create({"email": "a@example.com", "name": "dup"})
    # the savepoint rolled back; the outer transaction goes on and commits
    await integrity_db.repo(User).create(email="b@example.com", name="B")
    await integrity_db.commit()
    assert await integrity_db.repo(User).count() == 2
