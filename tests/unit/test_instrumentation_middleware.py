"""The ASGI middleware through an ASGI client (Starlette and FastAPI), the WSGI twin through
Flask's test client, and the /metrics app."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from flask import Flask, request
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from ormtune.instrumentation import (
    JsonFormatter,
    OrmtuneMiddleware,
    OrmtuneWSGIMiddleware,
    current_request,
    instrument,
    metrics,
    metrics_app,
    set_route,
)
from ormtune.querylog import observe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from starlette.requests import Request


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", pool_size=20)
    async with engine.begin() as conn:
        await conn.execute(text("create table items (id integer primary key, name text)"))
        await conn.execute(text("insert into items (name) values ('a'), ('b'), ('c')"))
    yield engine
    await engine.dispose()


def starlette_app(engine: AsyncEngine, **options: Any) -> Starlette:
    async def item(request: Request) -> JSONResponse:
        marker = int(request.path_params["item_id"])
        async with engine.connect() as conn:
            for _ in range(3):
                # A statement text unique to this request, to tell whose statements are whose.
                await conn.execute(text(f"select {marker} as marker, count(*) from items"))
                await asyncio.sleep(0)  # let other requests interleave
        context = current_request()
        assert context is not None
        return JSONResponse(
            {"sql": [event.sql for event in context.queries], "request_id": context.request_id}
        )

    async def fail(request: Request) -> JSONResponse:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
        raise RuntimeError("application bug")

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route("/items/{item_id:int}", item),
            Route("/fail", fail),
            Mount("/api", routes=[Route("/plain/{name}", plain)]),
        ]
    )
    app.add_middleware(OrmtuneMiddleware, **options)
    return app


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@contextmanager
def json_log(logger: str = "ormtune.request") -> Iterator[list[dict[str, Any]]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    target = logging.getLogger(logger)
    old = target.level
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        target.removeHandler(handler)
        target.setLevel(old)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines())


async def test_each_response_carries_request_id_server_timing_and_query_count(
    db: AsyncEngine,
) -> None:
    app = starlette_app(db, query_count_header=True)
    async with client(app) as http:
        response = await http.get("/items/7")
    assert response.status_code == 200
    assert response.headers["x-query-count"] == "3"
    timing = response.headers["server-timing"]
    assert timing.startswith("db;dur=")
    assert timing.endswith(';desc="3 queries"')
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    assert response.json()["request_id"] == request_id


async def test_a_well_formed_incoming_request_id_is_kept(db: AsyncEngine) -> None:
    async with client(starlette_app(db)) as http:
        response = await http.get("/items/1", headers={"X-Request-ID": "trace-0001:abc"})
    assert response.headers["x-request-id"] == "trace-0001:abc"
    assert response.json()["request_id"] == "trace-0001:abc"


@pytest.mark.parametrize(
    "incoming",
    ["x" * 129, "has space", "tab\tinside", "bell\x07", "caf\u00e9"],
    ids=["too-long", "space", "tab", "control", "non-ascii"],
)
async def test_a_malformed_incoming_request_id_is_replaced(db: AsyncEngine, incoming: str) -> None:
    async with client(starlette_app(db)) as http:
        response = await http.get("/items/1", headers=[(b"x-request-id", incoming.encode("utf-8"))])
    replaced = response.headers["x-request-id"]
    assert replaced != incoming
    assert len(replaced) == 32
    assert replaced.isalnum()


async def test_100_concurrent_requests_each_see_only_their_own_queries(db: AsyncEngine) -> None:
    app = starlette_app(db, query_count_header=True)
    async with client(app) as http:
        responses = await asyncio.gather(*(http.get(f"/items/{n}") for n in range(100)))
    for n, response in enumerate(responses):
        assert response.status_code == 200
        expected = f"select {n} as marker, count(*) from items"
        assert response.json()["sql"] == [expected] * 3
        assert response.headers["x-query-count"] == "3"
    assert len({response.headers["x-request-id"] for response in responses}) == 100


async def test_metrics_and_the_summary_line_use_the_route_template(db: AsyncEngine) -> None:
    registry = CollectorRegistry()
    app = starlette_app(db, metrics=metrics(registry))
    with json_log() as lines:
        async with client(app) as http:
            ok = await http.get("/items/5")
            mounted = await http.get("/api/plain/xyz")
            missing = await http.get("/no/such/page")
    assert (ok.status_code, mounted.status_code, missing.status_code) == (200, 200, 404)
    value = registry.get_sample_value
    duration = "ormtune_http_server_request_duration_seconds_count"
    labels = {"route": "/items/{item_id}", "method": "GET", "status_class": "2xx"}
    assert value(duration, labels) == 1
    assert value(duration, {**labels, "route": "/api/plain/{name}"}) == 1
    assert value(duration, {"route": "none", "method": "GET", "status_class": "4xx"}) == 1
    queries = "ormtune_http_server_request_db_queries_sum"
    assert value(queries, {"route": "/items/{item_id}"}) == 3
    first = lines[0]
    assert first["event"] == "request"
    assert first["route"] == "/items/{item_id}"
    assert first["path"] == "/items/5"
    assert first["status"] == 200
    assert first["queries"] == 3
    assert first["request_id"] == ok.headers["x-request-id"]
    assert first["message"].startswith("GET /items/{item_id} 200 in ")
    assert [line["status"] for line in lines] == [200, 200, 404]


async def test_statement_durations_are_recorded_when_their_request_ends(db: AsyncEngine) -> None:
    # Inside a request, Metrics.on_query holds the durations back and the middleware records
    # them at the end: after the responses, the histogram holds every statement of every
    # request, as many as the requests' own logs, with the same total time.
    registry = CollectorRegistry()
    collected = metrics(registry)
    app = starlette_app(db, metrics=collected)
    durations: list[float] = []

    class Recorder:
        def on_query(self, event: Any) -> None:
            durations.append(event.duration)

    with instrument(db, registry=registry), observe(Recorder(), db):
        async with client(app) as http:
            responses = await asyncio.gather(*(http.get(f"/items/{n}") for n in range(20)))
        async with db.connect() as conn:  # outside any request: recorded at once
            await conn.execute(text("select 1"))
    assert all(response.status_code == 200 for response in responses)
    labels = {"operation": "select", "table": "items", "database": "sqlite/" + str(db.url.database)}
    count = registry.get_sample_value("ormtune_db_client_operation_duration_seconds_count", labels)
    total = registry.get_sample_value("ormtune_db_client_operation_duration_seconds_sum", labels)
    assert count == 60
    assert total is not None
    assert math.isclose(total, sum(durations[:60]), rel_tol=1e-9)
    other = {**labels, "table": "none"}  # no table: BoundedLabel's "none"
    assert (
        registry.get_sample_value("ormtune_db_client_operation_duration_seconds_count", other) == 1
    )


async def test_a_request_sees_its_statements_in_the_histogram_only_after_it_ends(
    db: AsyncEngine,
) -> None:
    registry = CollectorRegistry()
    count = "ormtune_db_client_operation_duration_seconds_count"
    labels = {"operation": "select", "table": "items", "database": "sqlite/" + str(db.url.database)}

    async def during(request: Request) -> JSONResponse:
        async with db.connect() as conn:
            await conn.execute(text("select count(*) from items"))
            await conn.execute(text("select count(*) from items"))
        return JSONResponse({"seen": registry.get_sample_value(count, labels)})

    app = Starlette(routes=[Route("/during", during)])
    app.add_middleware(OrmtuneMiddleware, metrics=metrics(registry))
    with instrument(db, registry=registry):
        async with client(app) as http:
            first = await http.get("/during")
            second = await http.get("/during")
    assert first.json() == {"seen": 0.0}  # the child exists, its statements are held back
    assert second.json() == {"seen": 2.0}  # the first request's two, not yet its own
    assert registry.get_sample_value(count, labels) == 4


async def test_an_application_error_is_recorded_as_500_and_passed_on(db: AsyncEngine) -> None:
    registry = CollectorRegistry()
    app = starlette_app(db, metrics=metrics(registry))
    with json_log() as lines:
        async with client(app) as http:
            response = await http.get("/fail")
    assert response.status_code == 500
    (line,) = lines
    assert (line["status"], line["queries"], line["route"]) == (500, 1, "/fail")
    labels = {"route": "/fail", "method": "GET", "status_class": "5xx"}
    assert (
        registry.get_sample_value("ormtune_http_server_request_duration_seconds_count", labels) == 1
    )


async def test_failing_metrics_and_log_handlers_never_break_a_request(
    db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    collected = metrics(CollectorRegistry())

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("collector bug")

    monkeypatch.setattr(collected, "record_request", broken)

    class Broken(logging.Handler):
        def handle(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("handler bug")

    handler = Broken()
    logger = logging.getLogger("ormtune.request")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with client(starlette_app(db, metrics=collected)) as http:
            response = await http.get("/items/3")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert response.status_code == 200
    assert response.headers["server-timing"].endswith('desc="3 queries"')


async def test_the_actor_hook_makes_the_actor_current_while_the_app_runs(
    db: AsyncEngine,
) -> None:
    seen: list[object] = []
    active: list[object] = []

    @contextmanager
    def actor_scope(actor: object) -> Iterator[object]:
        active.append(actor)
        try:
            yield actor
        finally:
            active.remove(actor)

    async def whoami(request: Request) -> PlainTextResponse:
        seen.append(list(active))
        context = current_request()
        return PlainTextResponse(str(context.actor if context else None))

    app = Starlette(routes=[Route("/whoami", whoami)])
    app.add_middleware(
        OrmtuneMiddleware,
        actor=lambda scope: dict(scope["headers"]).get(b"x-user", b"").decode() or None,
        actor_scope=actor_scope,
    )
    with json_log() as lines:
        async with client(app) as http:
            response = await http.get("/whoami", headers={"X-User": "alice"})
            anonymous = await http.get("/whoami")
    assert response.text == "alice"
    assert anonymous.text == "None"
    assert seen == [["alice"], []]
    assert active == []
    assert lines[0]["actor"] == "alice"
    assert "actor" not in lines[1]


async def test_fastapi_routes_are_templates_too() -> None:
    registry = CollectorRegistry()
    app = FastAPI()

    @app.get("/users/{user_id}/orders")
    async def orders(user_id: int) -> dict[str, int]:
        return {"user": user_id}

    app.add_middleware(OrmtuneMiddleware, metrics=metrics(registry))
    async with client(app) as http:
        response = await http.get("/users/42/orders")
    assert response.json() == {"user": 42}
    labels = {"route": "/users/{user_id}/orders", "method": "GET", "status_class": "2xx"}
    assert (
        registry.get_sample_value("ormtune_http_server_request_duration_seconds_count", labels) == 1
    )


async def test_the_metrics_app_serves_text_and_openmetrics_with_exemplars() -> None:
    registry = CollectorRegistry()
    collected = metrics(registry)
    collected.record_request(
        route="/x", method="GET", status=200, duration=0.02, queries=1, db_duration=0.001,
        request_id="req-1",
    )  # fmt: skip
    app = Starlette(routes=[Mount("/metrics", metrics_app(registry))])
    async with client(app) as http:
        plain = await http.get("/metrics/")
        open_metrics = await http.get(
            "/metrics/", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert plain.headers["content-type"].startswith("text/plain")
    assert 'ormtune_http_server_request_duration_seconds_count{method="GET"' in plain.text
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert 'request_id="req-1"' in open_metrics.text


def test_the_wsgi_middleware_instruments_a_flask_app(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'flask.db'}")
    registry = CollectorRegistry()
    flask_app = Flask(__name__)

    @flask_app.before_request
    def name_the_route() -> None:
        set_route(request.url_rule.rule if request.url_rule else None)

    @flask_app.get("/orders/<int:order_id>")
    def order(order_id: int) -> dict[str, Any]:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
            conn.execute(text("select 2"))
        context = current_request()
        assert context is not None
        return {"id": order_id, "queries": context.queries.count}

    flask_app.wsgi_app = OrmtuneWSGIMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, metrics=metrics(registry), query_count_header=True
    )
    with json_log() as lines:
        response = flask_app.test_client().get("/orders/9", headers={"X-Request-ID": "flask-1"})
        bad = flask_app.test_client().get("/orders/9", headers={"X-Request-ID": "a b"})
        # The request ends when the server closes the response (PEP 3333).
        response.close()
        bad.close()
    engine.dispose()
    assert response.json == {"id": 9, "queries": 2}
    assert response.headers["X-Request-ID"] == "flask-1"
    assert response.headers["X-Query-Count"] == "2"
    assert response.headers["Server-Timing"].endswith('desc="2 queries"')
    assert bad.headers["X-Request-ID"] != "a b"
    labels = {"route": "/orders/<int:order_id>", "method": "GET", "status_class": "2xx"}
    assert (
        registry.get_sample_value("ormtune_http_server_request_duration_seconds_count", labels) == 2
    )
    assert [(line["route"], line["queries"]) for line in lines] == [
        ("/orders/<int:order_id>", 2),
        ("/orders/<int:order_id>", 2),
    ]
