"""examples/fastapi_instrumented.py runs as documented: headers, JSON lines, /metrics."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def test_the_fastapi_example_serves_instrumented_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'example.db'}")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    logger = logging.getLogger("ormtune")
    handlers, level = list(logger.handlers), logger.level
    try:
        example = importlib.import_module("fastapi_instrumented")
        app = example.app
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://example") as http:
                response = await http.get("/authors/1")
                missing = await http.get("/authors/2")
                scraped = await http.get("/metrics/")
    finally:
        sys.modules.pop("fastapi_instrumented", None)
        logger.handlers[:] = handlers
        logger.setLevel(level)
    assert response.json() == {"id": 1, "name": "Ursula", "books": ["The Dispossessed"]}
    assert response.headers["x-query-count"] == "2"
    assert response.headers["server-timing"].endswith('desc="2 queries"')
    assert missing.status_code == 404
    assert 'route="/authors/{author_id}"' in scraped.text
    assert '"route": "/authors/{author_id}"' in capsys.readouterr().err
