"""Helpers for the cache backend tests: a fake clock, polling, the greenlet bridge, and a
private redis-server that tests may stop and restart."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import redis
from sqlalchemy.util import greenlet_spawn

from ormtune.backends import RedisBackend
from tests.conftest import REQUIRE_SERVICES

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Collection, Sequence

    from ormtune.typing import CacheBackend, Lookup, Token, Version

_T = TypeVar("_T")

DEADLINE = 10.0  # seconds a poll may take before the test fails: generous, never a sleep


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def eventually(predicate: Callable[[], bool], *, timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until it holds; fail the test if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        time.sleep(0.002)


class GreenletBridge:
    """Calls a backend the way ``AsyncSession`` work does: inside SQLAlchemy's greenlet.

    Every method runs ``greenlet_spawn(method, ...)`` on ``runner``'s event loop, so the
    backend sees ``in_greenlet()`` and must await its asyncio client through the bridge.
    """

    def __init__(self, backend: CacheBackend, runner: asyncio.Runner) -> None:
        self.backend = backend
        self.runner = runner

    def _run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        result: _T = self.runner.run(greenlet_spawn(fn, *args, **kwargs))
        return result

    def lookup(self, key: str, tokens: Sequence[Token], /) -> Lookup:
        return self._run(self.backend.lookup, key, tokens)

    def store(
        self,
        key: str,
        value: bytes,
        /,
        *,
        tokens: Sequence[Token],
        versions: Sequence[Version],
        ttl: float | None,
    ) -> bool:
        return self._run(self.backend.store, key, value, tokens=tokens, versions=versions, ttl=ttl)

    def versions(self, tokens: Sequence[Token], /) -> tuple[Version, ...]:
        return self._run(self.backend.versions, tokens)

    def bump(self, tokens: Collection[Token], /) -> None:
        self._run(self.backend.bump, tokens)

    def delete(self, key: str, /) -> None:
        self._run(self.backend.delete, key)

    def clear(self) -> None:
        self._run(self.backend.clear)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of this test's own on a free port, which the test may stop and restart."""

    def __init__(self, tmp: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed (apt-get install redis-server)"
            if REQUIRE_SERVICES:  # CI: a missing service fails, never skips quietly
                pytest.fail(f"{message}; ORMTUNE_REQUIRE_SERVICES is set", pytrace=False)
            pytest.skip(message)
        self.binary = binary
        self.tmp = tmp
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.tmp,
                "--logfile",
                os.path.join(self.tmp, "log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.2)

        def ready() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            eventually(ready)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=DEADLINE)
            self.process = None


def child_bump(url: str, prefix: str, key: str, token: Token, saw_entry: Any) -> None:
    """Runs in a spawned process: checks it sees the parent's entry, then bumps its token."""
    with RedisBackend(url, prefix=prefix) as backend:
        saw_entry.value = backend.lookup(key, [token]).value == b"from the parent"
        backend.bump([token])
