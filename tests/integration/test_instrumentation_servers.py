"""The middleware behind a real uvicorn server, and metrics from two real worker processes
aggregated in prometheus_client's multiprocess mode."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import httpx
import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from ormtune.instrumentation import OrmtuneMiddleware, metrics, metrics_app

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import pytest
    from starlette.requests import Request


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on a free loopback port; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 20 s")
        time.sleep(0.01)  # polling the server's own started flag, with a deadline
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def test_the_middleware_behind_a_real_uvicorn_server(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'served.db'}")
    registry = CollectorRegistry()

    async def count(request: Request) -> PlainTextResponse:
        async with engine.connect() as conn:
            for _ in range(5):
                await conn.execute(text("select 1"))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/count/{n}", count), Mount("/metrics", metrics_app(registry))])
    app.add_middleware(OrmtuneMiddleware, metrics=metrics(registry), query_count_header=True)
    with serve(app) as base, httpx.Client(base_url=base) as http:
        responses = [http.get(f"/count/{n}") for n in range(3)]
        traced = http.get("/count/9", headers={"X-Request-ID": "from-the-edge"})
        scraped = http.get("/metrics/")
    asyncio.run(engine.dispose())
    assert [r.headers["x-query-count"] for r in responses] == ["5", "5", "5"]
    assert all(r.headers["server-timing"].endswith('desc="5 queries"') for r in responses)
    assert traced.headers["x-request-id"] == "from-the-edge"
    assert (
        'ormtune_http_server_request_duration_seconds_count{method="GET",route="/count/{n}",'
        'status_class="2xx"} 4.0'
    ) in scraped.text


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    import httpx
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from ormtune.instrumentation import OrmtuneMiddleware, instrument

    requests = int(sys.argv[2])
    engine = create_async_engine("sqlite+aiosqlite:///" + sys.argv[1])
    instrumentation = instrument(engine, slow_query_threshold=None)

    async def hello(request):
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
            await conn.execute(text("select 2"))
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/hello/{name}", hello)])
    app.add_middleware(OrmtuneMiddleware, metrics=instrumentation.metrics)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as http:
            for n in range(requests):
                assert (await http.get(f"/hello/{n}")).status_code == 200
        await engine.dispose()

    asyncio.run(main())
    """
)


def test_metrics_of_two_worker_processes_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"worker{n}.db"), str(requests)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, requests in enumerate((3, 4))
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    labels = {"route": "/hello/{name}", "method": "GET", "status_class": "2xx"}
    requests = registry.get_sample_value(
        "ormtune_http_server_request_duration_seconds_count", labels
    )
    assert requests == 7
    queries = registry.get_sample_value(
        "ormtune_http_server_request_db_queries_sum", {"route": "/hello/{name}"}
    )
    assert queries == 14
    # metrics_app() aggregates the workers' files itself when the variable is set.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))

    async def scrape() -> str:
        transport = httpx.ASGITransport(app=metrics_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://scraper") as http:
            return (await http.get("/")).text

    body = asyncio.run(scrape())
    assert (
        'ormtune_http_server_request_duration_seconds_count{method="GET",route="/hello/{name}",'
        'status_class="2xx"} 7.0'
    ) in body
