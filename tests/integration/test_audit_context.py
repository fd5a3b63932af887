"""Who and which request: ``actor()``, and the ASGI middleware that sets both per request
(alone, or instrumentation's middleware with ``actor_scope=actor``). SQLite, PostgreSQL and
MariaDB; sync and asyncio sessions."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from ormtune.instrumentation import OrmtuneMiddleware, current_request
from ormtune.integrity import (
    AuditContextMiddleware,
    actor,
    audit_context,
    current_audit_context,
    record_audit_log,
)
from tests.integrity_models import AuditLog, User

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.orm import Session
    from starlette.requests import Request

    from ormtune.querylog import Registration
    from tests.integrity_harness import Harness


@pytest.fixture
def db(integrity_db: Harness) -> Harness:
    return integrity_db


def user_header(scope: Any) -> str | None:
    """The actor: the ``X-User`` header (an authentication middleware's job, in real life)."""
    return next((v.decode() for k, v in scope["headers"] if k == b"x-user"), None)


def instrumentation_request_id(scope: Any) -> str | None:
    request = current_request()
    return None if request is None else request.request_id


@pytest.fixture
def audit() -> Iterator[Registration]:
    registration = record_audit_log(AuditLog)
    try:
        yield registration
    finally:
        registration.close()


def app_writing_users(db: Harness) -> Starlette:
    async def create(request: Request) -> JSONResponse:
        user_id = int(request.path_params["user_id"])
        await db.repo(User).create(id=user_id, email=f"u{user_id}@example.com", name="n")
        await db.commit()
        context = current_audit_context()
        return JSONResponse({"actor": context.actor, "request_id": context.request_id})

    return Starlette(routes=[Route("/users/{user_id:int}", create, methods=["POST"])])


async def logged(db: Harness) -> list[tuple[str | None, str | None, str | None]]:
    def read(session: Session) -> list[tuple[str | None, str | None, str | None]]:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id))
        return [(r.row_key, r.actor, r.request_id) for r in rows]

    return await db.run(read)


def test_actor_keeps_the_request_id_in_force() -> None:
    with audit_context(actor="system", request_id="req-1"):
        with actor("alice") as context:
            assert (context.actor, context.request_id) == ("alice", "req-1")
            assert current_audit_context() == context
        with actor(42, request_id="req-2"):
            assert (current_audit_context().actor, current_audit_context().request_id) == (
                "42",
                "req-2",
            )
        assert current_audit_context().actor == "system"
    assert current_audit_context().actor is None


@pytest.mark.usefixtures("audit")
async def test_the_middleware_attributes_each_request(db: Harness) -> None:
    app = AuditContextMiddleware(app_writing_users(db), actor=user_header)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = await client.post("/users/1", headers={"x-user": "alice", "x-request-id": "r-1"})
        second = await client.post("/users/2", headers={"x-user": "bob"})
        bad_id = await client.post("/users/3", headers={"x-user": "carol", "x-request-id": "a b"})
    assert first.json() == {"actor": "alice", "request_id": "r-1"}
    generated = second.json()["request_id"]
    assert len(generated) == 32
    assert bad_id.json()["request_id"] not in ("a b", generated)  # invalid ids are replaced
    assert await logged(db) == [
        ("1", "alice", "r-1"),
        ("2", "bob", generated),
        ("3", "carol", bad_id.json()["request_id"]),
    ]
    assert current_audit_context().actor is None  # nothing leaks out of a request


@pytest.mark.usefixtures("audit")
async def test_instrumentation_middleware_with_actor_scope(db: Harness) -> None:
    inner = AuditContextMiddleware(app_writing_users(db), request_id=instrumentation_request_id)
    app = OrmtuneMiddleware(inner, actor=user_header, actor_scope=actor)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/users/1", headers={"x-user": "alice"})
    # instrumentation's middleware chose the request id and set the actor (actor_scope);
    # the audit middleware inside takes that id and keeps that actor
    assert response.json() == {"actor": "alice", "request_id": response.headers["x-request-id"]}
    # actor_scope alone: the actor is set, and no request id is invented
    app = OrmtuneMiddleware(app_writing_users(db), actor=user_header, actor_scope=actor)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/users/2", headers={"x-user": "bob"})
    assert response.json() == {"actor": "bob", "request_id": None}
    assert [(k, a) for k, a, _ in await logged(db)] == [("1", "alice"), ("2", "bob")]


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def send(message: Any) -> None:
    pass


async def test_concurrent_requests_never_see_each_other() -> None:
    seen: dict[str, tuple[str | None, str | None]] = {}
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        who = scope["path"].strip("/")
        if who == "first":
            await release.wait()  # the second request runs while the first is inside
        else:
            release.set()
        context = current_audit_context()
        seen[who] = (context.actor, context.request_id)

    middleware = AuditContextMiddleware(app, actor=lambda scope: scope["path"].strip("/"))

    async def call(path: str, request_id: bytes) -> None:
        scope = {"type": "http", "path": path, "headers": [(b"x-request-id", request_id)]}
        await middleware(scope, receive, send)

    await asyncio.gather(call("/first", b"id-1"), call("/second", b"id-2"))
    assert seen == {"first": ("first", "id-1"), "second": ("second", "id-2")}


async def test_lifespan_passes_through_untouched() -> None:
    calls = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append((scope["type"], current_audit_context().request_id))

    await AuditContextMiddleware(app, actor=lambda scope: 1 / 0)(
        {"type": "lifespan"}, receive, send
    )
    assert calls == [("lifespan", None)]
