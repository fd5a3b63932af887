"""RedisBackend beyond the contract: failures, recovery, the asyncio bridge, many processes."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import socket
import time
from typing import TYPE_CHECKING

import pytest
import redis
import redis.asyncio
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.util import greenlet_spawn

from ormtune.backends import RedisBackend
from ormtune.exceptions import CacheBackendError, ConfigurationError
from tests.backend_support import PrivateRedis, child_bump, eventually
from tests.conftest import REDIS_URL

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from ormtune.typing import Token

USERS: Token = ("db|public.users", "*")


def _operations(backend: RedisBackend) -> list[Callable[[], object]]:
    return [
        lambda: backend.lookup("k", [USERS]),
        lambda: backend.store("k", b"v", tokens=[USERS], versions=[0], ttl=None),
        lambda: backend.versions([USERS]),
        lambda: backend.bump([USERS]),
        lambda: backend.delete("k"),
        backend.clear,
    ]


def test_an_unreachable_redis_fails_fast_with_cache_backend_error() -> None:
    with RedisBackend("redis://127.0.0.1:1/0", prefix="unreachable") as backend:
        for operation in _operations(backend):
            started = time.monotonic()
            with pytest.raises(CacheBackendError, match="Connection refused") as info:
                operation()
            assert time.monotonic() - started < 1.0
            assert isinstance(info.value.__cause__, redis.ConnectionError)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: every read times out."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_a_redis_that_does_not_answer_times_out_with_cache_backend_error(
    silent_server: int,
) -> None:
    url = f"redis://127.0.0.1:{silent_server}/0"
    with RedisBackend(url, prefix="silent", socket_timeout=0.1) as backend:
        started = time.monotonic()
        with pytest.raises(CacheBackendError, match="Timeout") as info:
            backend.lookup("k", [USERS])
        assert time.monotonic() - started < 2.0  # generous: the timeout is 0.1 s
        assert isinstance(info.value.__cause__, redis.TimeoutError)


def test_script_errors_are_translated_too(redis_url: str, redis_prefix: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    raw.set(f"{{{redis_prefix}}}:v:db|public.users", "a string where a hash belongs")
    with RedisBackend(redis_url, prefix=redis_prefix) as backend:
        with pytest.raises(CacheBackendError, match="WRONGTYPE") as info:
            backend.lookup("k", [USERS])
        assert isinstance(info.value.__cause__, redis.ResponseError)
    raw.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(str(tmp_path))
    server.start()
    yield server
    server.stop()


def test_the_same_backend_works_again_after_redis_restarts(private_redis: PrivateRedis) -> None:
    with RedisBackend(private_redis.url, prefix="restart") as backend:
        snapshot = backend.lookup("k", [USERS]).versions
        assert backend.store("k", b"v", tokens=[USERS], versions=snapshot, ttl=None)
        private_redis.stop()
        with pytest.raises(CacheBackendError):
            backend.lookup("k", [USERS])
        private_redis.start()  # empty: no persistence

        def works() -> bool:
            try:
                backend.lookup("k", [USERS])
            except CacheBackendError:
                return False
            return True

        eventually(works)
        after = backend.lookup("k", [USERS])
        assert after.value is None
        # Every key (the generation sequence too) was lost, yet no version comes back:
        # the new generation is floored by the server clock.
        assert after.versions != snapshot
        assert not backend.store("k", b"v", tokens=[USERS], versions=snapshot, ttl=None)


def test_killed_connections_are_replaced(redis_url: str, redis_prefix: str) -> None:
    name = f"ormtune-test-{redis_prefix[-12:]}"
    client = redis.Redis.from_url(redis_url, client_name=name)
    admin = redis.Redis.from_url(redis_url)
    with RedisBackend(client=client, prefix=redis_prefix) as backend:
        backend.bump([USERS])
        before = backend.versions([USERS])
        killed = [c for c in admin.client_list() if c.get("name") == name]
        assert killed
        for connection in killed:
            admin.client_kill_filter(_id=connection["id"])
        assert backend.versions([USERS]) == before  # a new connection, the same data
    client.close()
    admin.close()


def test_two_processes_share_versions(redis_url: str, redis_prefix: str) -> None:
    """Process A stores; process B (spawned) sees the entry and bumps; A's lookup misses."""
    with RedisBackend(redis_url, prefix=redis_prefix) as backend:
        snapshot = backend.lookup("k", [USERS]).versions
        assert backend.store("k", b"from the parent", tokens=[USERS], versions=snapshot, ttl=None)
        context = multiprocessing.get_context("spawn")
        saw_entry = context.Value("b", False)
        child = context.Process(
            target=child_bump, args=(redis_url, redis_prefix, "k", USERS, saw_entry)
        )
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        assert saw_entry.value
        after = backend.lookup("k", [USERS])
        assert after.value is None
        assert after.versions != snapshot


def test_prefix_must_not_contain_braces() -> None:
    with pytest.raises(ConfigurationError, match="braces"):
        RedisBackend("redis://127.0.0.1:1/0", prefix="a{b}")
    with pytest.raises(ConfigurationError, match="either url"):
        RedisBackend()


def test_a_glob_character_in_the_prefix_is_not_a_pattern(redis_url: str, redis_prefix: str) -> None:
    star = RedisBackend(redis_url, prefix=redis_prefix + "*")
    plain = RedisBackend(redis_url, prefix=redis_prefix + "x")
    try:
        for backend in (star, plain):
            versions = backend.lookup("k", [USERS]).versions
            assert backend.store("k", b"v", tokens=[USERS], versions=versions, ttl=None)
        star.clear()
        assert star.lookup("k", [USERS]).value is None
        assert plain.lookup("k", [USERS]).value == b"v"
    finally:
        plain.clear()
        star.close()
        plain.close()


def test_noeviction_with_a_memory_limit_is_reported_once(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.Redis.from_url(private_redis.url)
    admin.config_set("maxmemory", "512mb")
    admin.config_set("maxmemory-policy", "noeviction")
    admin.close()
    with (
        caplog.at_level(logging.WARNING, "ormtune.backends"),
        RedisBackend(private_redis.url, prefix="policy") as backend,
    ):
        backend.versions([USERS])
        backend.versions([USERS])
    warnings = [r for r in caplog.records if "noeviction" in r.getMessage()]
    assert len(warnings) == 1


def test_allkeys_eviction_is_accepted_silently(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.Redis.from_url(private_redis.url)
    admin.config_set("maxmemory", "512mb")
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.close()
    with (
        caplog.at_level(logging.WARNING, "ormtune.backends"),
        RedisBackend(private_redis.url, prefix="policy") as backend,
    ):
        backend.versions([USERS])
    assert not caplog.records


# -- the asyncio client, through SQLAlchemy's greenlet ------------------------------------


def test_an_async_only_backend_refuses_plain_sync_callers(redis_url: str) -> None:
    aclient = redis.asyncio.Redis.from_url(redis_url)
    backend = RedisBackend(async_client=aclient, prefix="async-only")
    with pytest.raises(ConfigurationError, match="only an asyncio client"):
        backend.lookup("k", [USERS])
    asyncio.run(aclient.aclose())


async def test_async_session_work_uses_the_asyncio_client(
    redis_url: str, redis_prefix: str
) -> None:
    """From ``AsyncSession.run_sync`` the backend awaits its asyncio client (no sync one)."""
    aclient = redis.asyncio.Redis.from_url(redis_url)
    backend = RedisBackend(async_client=aclient, prefix=redis_prefix)
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        async with AsyncSession(engine) as session:

            def fill_and_read(_: object) -> bytes | None:
                versions = backend.lookup("k", [USERS]).versions
                assert backend.store("k", b"rows", tokens=[USERS], versions=versions, ttl=5)
                return backend.lookup("k", [USERS]).value

            assert await session.run_sync(fill_and_read) == b"rows"
        raw = redis.asyncio.Redis.from_url(redis_url)
        assert await raw.exists(f"{{{redis_prefix}}}:e:k") == 1
        await raw.aclose()
    finally:
        await engine.dispose()
        await aclient.aclose()


async def test_a_url_backend_makes_an_asyncio_client_per_event_loop(
    redis_url: str, redis_prefix: str
) -> None:
    backend = RedisBackend(redis_url, prefix=redis_prefix)
    try:
        await greenlet_spawn(backend.bump, [USERS])
        assert len(backend._loop_clients) == 1
        in_loop = await greenlet_spawn(backend.versions, [USERS])
        assert in_loop == backend.versions([USERS])  # the sync client, from plain code
    finally:
        await backend.aclose()
        backend.close()
    assert len(backend._loop_clients) == 0


async def test_concurrent_greenlets_lose_no_bump(redis_url: str, redis_prefix: str) -> None:
    aclient = redis.asyncio.Redis.from_url(redis_url)
    backend = RedisBackend(async_client=aclient, prefix=redis_prefix)
    try:

        def bump_and_read(n: int) -> list[int]:
            token = ("db|public.orders", f"task={n}")
            seen = []
            for _ in range(20):
                backend.bump([token, USERS])
                seen.append(backend.versions([token])[0])
            return seen

        results = await asyncio.gather(*(greenlet_spawn(bump_and_read, n) for n in range(8)))
        for seen in results:
            assert len(set(seen)) == 20
        raw = redis.asyncio.Redis.from_url(redis_url)
        counter = await raw.hget(f"{{{redis_prefix}}}:v:db|public.users", "m*")
        await raw.aclose()
        assert counter == b"160"  # 8 tasks x 20 bumps, none lost
    finally:
        await aclient.aclose()


async def test_an_unreachable_redis_fails_fast_from_a_greenlet_too() -> None:
    aclient = redis.asyncio.Redis.from_url(
        "redis://127.0.0.1:1/0", socket_connect_timeout=0.5, retry=None
    )
    backend = RedisBackend(async_client=aclient, prefix="unreachable")
    try:
        started = time.monotonic()
        with pytest.raises(CacheBackendError) as info:
            await greenlet_spawn(backend.lookup, "k", [USERS])
        assert time.monotonic() - started < 1.0
        assert isinstance(info.value.__cause__, redis.ConnectionError)
    finally:
        await aclient.aclose()


ORDERS: Token = ("db|public.orders", "id=i:7")


def _lookups_agree(backend: RedisBackend) -> None:
    """lookup_many answers what lookup answers, key by key, in order."""
    versions = backend.versions([USERS, ORDERS])
    assert backend.store("a", b"first", tokens=[USERS], versions=versions[:1], ttl=None)
    assert backend.store("b", b"second", tokens=[USERS, ORDERS], versions=versions, ttl=None)
    requests = [("b", [USERS, ORDERS]), ("missing", [ORDERS]), ("a", [USERS])]
    many = backend.lookup_many(requests)
    assert [found.value for found in many] == [b"second", None, b"first"]
    assert many == [backend.lookup(key, tokens) for key, tokens in requests]
    backend.bump([ORDERS])
    assert [found.value for found in backend.lookup_many(requests)] == [None, None, b"first"]
    with redis.Redis.from_url(REDIS_URL) as admin:
        admin.script_flush()  # as after a restart: the scripts are gone
    assert [found.value for found in backend.lookup_many(requests)] == [None, None, b"first"]


def test_lookup_many_is_lookup_in_one_round_trip(redis_url: str, redis_prefix: str) -> None:
    backend = RedisBackend(redis_url, prefix=redis_prefix)
    try:
        _lookups_agree(backend)
    finally:
        backend.close()


async def test_lookup_many_on_the_asyncio_client(redis_url: str, redis_prefix: str) -> None:
    backend = RedisBackend(redis_url, prefix=redis_prefix)
    try:
        await greenlet_spawn(_lookups_agree, backend)
        assert len(backend._loop_clients) == 1  # it ran on the event loop's client
    finally:
        await backend.aclose()
        backend.close()
