"""What the marketplace's end-to-end tests share: the app run in-process with its lifespan
behind an httpx client, a generated data set copied per test, and the app under a real
uvicorn server in a subprocess.

Nothing here waits by sleeping: the lifespan is driven message by message, and the uvicorn
subprocess inherits a socket that is already listening, so the first request queues in the
kernel until the server accepts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from marketplace.app import create_app
from marketplace.data import generate
from marketplace.db import upgrade

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from marketplace.data import DataSummary
    from marketplace.settings import Mode, Settings

__all__ = [
    "MODES",
    "Api",
    "Dataset",
    "Server",
    "email",
    "make_dataset",
    "open_api",
    "password",
    "running",
    "samples",
    "serve",
    "utc",
]

MODES: tuple[Mode, ...] = ("naive", "tuned", "handwritten")
ROOT = Path(__file__).resolve().parents[2]
# Generous: a request waits for nothing but the app (and, under uvicorn, the server's start).
TIMEOUT = httpx.Timeout(60.0)
SHUTDOWN = "Application shutdown complete."  # uvicorn's log line after the lifespan's exit


_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def utc(value: Any) -> Any:
    """A JSON value with every timestamp as naive UTC (``2026-01-01T00:01:00``), the form the
    database stores, whether the app writes it with an offset (``...Z``, ``+00:00``) or not."""
    if isinstance(value, dict):
        return {key: utc(item) for key, item in value.items()}
    if isinstance(value, list):
        return [utc(item) for item in value]
    if isinstance(value, str) and _ISO.match(value):
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        return moment.isoformat()
    return value


def password(user: int) -> str:
    """The password marketplace.data gives generated user ``user``."""
    return f"password-{user}"


def email(user: int) -> str:
    return f"user{user}@example.com"


# --- the ASGI lifespan, driven by hand -----------------------------------------------------


class LifespanError(RuntimeError):
    """The application reported a failed lifespan startup or shutdown."""


async def _receive_from(app_task: asyncio.Task[None], queue: asyncio.Queue[Message]) -> Message:
    """The app's next lifespan message; if the app returns or raises first, say so."""
    getter = asyncio.ensure_future(queue.get())
    done, _ = await asyncio.wait({getter, app_task}, return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        return getter.result()
    getter.cancel()
    app_task.result()  # re-raises the app's exception
    raise LifespanError("the application returned without answering a lifespan event")


@contextlib.asynccontextmanager
async def running(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """Run ``app``'s lifespan the way a server does (one task of its own, the ASGI lifespan
    protocol) and yield the lifespan state that a server hands each request."""
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope: Scope = {
        "type": "lifespan",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
        "state": state,
    }

    async def receive() -> Message:
        return await to_app.get()

    async def send(message: Message) -> None:
        await from_app.put(message)

    app_task = asyncio.ensure_future(app(scope, receive, send))
    await to_app.put({"type": "lifespan.startup"})
    started = await _receive_from(app_task, from_app)
    if started["type"] != "lifespan.startup.complete":
        await app_task
        raise LifespanError(f"lifespan startup failed: {started.get('message', started)}")
    try:
        yield state
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await _receive_from(app_task, from_app)
        await app_task
        if stopped["type"] != "lifespan.shutdown.complete":
            raise LifespanError(f"lifespan shutdown failed: {stopped.get('message', stopped)}")


def _with_state(app: ASGIApp, state: dict[str, Any]) -> ASGIApp:
    """``app`` with a copy of the lifespan state in each request's scope, as uvicorn does."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "state" not in scope:
            scope = {**scope, "state": dict(state)}
        await app(scope, receive, send)

    return call


# --- data sets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A migrated SQLite database with generated data, kept as a template: each test works on
    a copy (:meth:`copy`), so writes never leak between tests."""

    path: Path
    users: int
    summary: DataSummary

    def copy(self, directory: Path) -> str:
        """Copy the template into ``directory``; return the copy's aiosqlite URL."""
        target = directory / f"marketplace-{self.users}.db"
        shutil.copyfile(self.path, target)
        return f"sqlite+aiosqlite:///{target}"


def make_dataset(directory: Path, users: int, *, seed: int = 0) -> Dataset:
    """Migrate a new SQLite file in ``directory`` and fill it with ``users`` users."""
    path = directory / f"template-{users}.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    summary = generate(url, users=users, seed=seed)
    return Dataset(path, users, summary)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus exposition text as ``{(sample name, labels): value}``."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --- the app in-process, behind an httpx client --------------------------------------------


@dataclass
class Api:
    """An httpx client on one running app, and the bearer tokens of the users it logged in."""

    client: httpx.AsyncClient
    app: FastAPI
    settings: Settings
    _tokens: dict[int, str] = field(default_factory=dict)

    @property
    def mode(self) -> Mode:
        return self.settings.mode

    async def token(self, user: int) -> str:
        """A fresh access token of generated user ``user`` (one login per user and app)."""
        if user not in self._tokens:
            response = await self.client.post(
                "/auth/token", json={"email": email(user), "password": password(user)}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["token_type"] == "bearer"
            self._tokens[user] = body["access_token"]
        return self._tokens[user]

    async def auth(self, user: int) -> dict[str, str]:
        """The ``Authorization`` header of ``user``."""
        return {"Authorization": f"Bearer {await self.token(user)}"}

    async def request(
        self,
        method: str,
        path: str,
        *,
        user: int | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """``method path`` as ``user`` (None: anonymous)."""
        headers = await self.auth(user) if user is not None else {}
        return await self.client.request(method, path, headers=headers, json=json, params=params)

    async def get(
        self, path: str, *, user: int | None = None, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        return await self.request("GET", path, user=user, params=params)

    async def post(self, path: str, *, user: int | None = None, json: Any = None) -> httpx.Response:
        return await self.request("POST", path, user=user, json=json)

    async def put(self, path: str, *, user: int | None = None, json: Any = None) -> httpx.Response:
        return await self.request("PUT", path, user=user, json=json)

    async def pages(self, path: str, *, user: int, **params: Any) -> list[dict[str, Any]]:
        """Every item of a keyset-paginated list, following ``next`` to the last page."""
        items: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(1000):
            query = {**params, **({"after": after} if after is not None else {})}
            response = await self.get(path, user=user, params=query)
            assert response.status_code == 200, response.text
            page = response.json()
            items.extend(page["items"])
            after = page["next"]
            if after is None:
                return items
        raise AssertionError(f"{path} did not reach its last page in 1,000 pages")


@contextlib.asynccontextmanager
async def open_api(settings: Settings) -> AsyncIterator[Api]:
    """Create the app for ``settings``, run its lifespan, and yield an :class:`Api` on it;
    leaving closes the client and runs the lifespan's shutdown (which undoes ormtune)."""
    app = create_app(settings)
    async with running(app) as state:
        transport = httpx.ASGITransport(app=_with_state(app, state))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=TIMEOUT
        ) as client:
            yield Api(client, app, settings)


# --- the app under uvicorn, in a subprocess ------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A uvicorn server in a subprocess, listening on ``base_url``."""

    base_url: str
    process: subprocess.Popen[bytes]


def _environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "examples"), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["MARKETPLACE_MODE"] = settings.mode
    env["MARKETPLACE_DATABASE_URL"] = settings.database_url
    env["MARKETPLACE_CACHE_PREFIX"] = settings.cache_prefix
    env["MARKETPLACE_TOKEN_TTL"] = str(settings.token_ttl_seconds)
    env.pop("MARKETPLACE_REDIS_URL", None)
    if settings.redis_url is not None:
        env["MARKETPLACE_REDIS_URL"] = settings.redis_url
    return env


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[Server]:
    """Run ``marketplace.asgi:app`` (configured from ``settings`` through its environment
    variables) under uvicorn in a subprocess, on a port the kernel picked.

    The parent binds and listens on the socket, hands it to the child, and closes its own
    copy: requests made before the server accepts wait in the listen queue, and a server
    that dies makes them fail at once instead of hanging. Leaving sends SIGTERM (uvicorn's
    graceful shutdown, which runs the lifespan's exit) and checks the exit status.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    # A file, not a pipe: nobody reads the child's output while it runs.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.uvicorn_child", str(fd)],
            cwd=ROOT,
            env=_environment(settings),
            pass_fds=(fd,),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        listener.close()

        def log() -> str:
            output.seek(0)
            return output.read().decode(errors="replace")

        try:
            yield Server(f"http://127.0.0.1:{port}", process)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise AssertionError(
                    f"uvicorn did not stop within 60 s of SIGTERM:\n{log()}"
                ) from None
        # uvicorn re-raises the signal it shut down on, so a clean stop is -SIGTERM; the log
        # says whether the lifespan's shutdown ran
        if process.returncode not in (0, -signal.SIGTERM) or SHUTDOWN not in log():
            raise AssertionError(
                f"uvicorn did not shut down cleanly (status {process.returncode}):\n{log()}"
            )
