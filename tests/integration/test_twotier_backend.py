"""TwoTierBackend beyond the contract: coherence between instances, and losing Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import redis

from ormtune.backends import RedisBackend, TwoTierBackend
from ormtune.exceptions import CacheBackendError, ConfigurationError
from tests.backend_support import PrivateRedis, eventually

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from ormtune.backends._twotier import Coherence
    from ormtune.typing import Token

USERS: Token = ("db|public.users", "*")


@pytest.fixture
def make_twotier(redis_url: str, redis_prefix: str) -> Iterator[Callable[..., TwoTierBackend]]:
    """Builds two-tier backends on this test's prefix, each with its own L1 and connections."""
    made: list[TwoTierBackend] = []

    def make(coherence: Coherence = "versions", url: str = redis_url) -> TwoTierBackend:
        backend = TwoTierBackend(RedisBackend(url, prefix=redis_prefix), coherence=coherence)
        made.append(backend)
        if coherence == "pubsub":
            eventually(lambda: backend.stats.subscribed)
        return backend

    yield make
    for backend in made:
        backend.close()
        backend.remote.close()


def _fill(backend: TwoTierBackend, key: str = "k", value: bytes = b"old rows") -> None:
    versions = backend.lookup(key, [USERS]).versions
    assert backend.store(key, value, tokens=[USERS], versions=versions, ttl=None)


def test_versions_mode_never_serves_an_entry_another_instance_invalidated(
    make_twotier: Callable[..., TwoTierBackend],
) -> None:
    a, b = make_twotier(), make_twotier()
    _fill(b)
    assert b.lookup("k", [USERS]).value == b"old rows"
    assert b.stats.validated_hits == 1  # from B's L1, after Redis confirmed its versions
    a.bump([USERS])
    assert b.lookup("k", [USERS]).value is None  # immediately: no delivery to wait for
    assert b.stats.l1_entries == 0


def test_versions_mode_fills_its_l1_from_redis_hits(
    make_twotier: Callable[..., TwoTierBackend],
) -> None:
    a, b = make_twotier(), make_twotier()
    _fill(a, value=b"shared")
    assert b.lookup("k", [USERS]).value == b"shared"
    assert b.stats.remote_hits == 1
    assert b.lookup("k", [USERS]).value == b"shared"
    assert b.stats.validated_hits == 1


def test_pubsub_mode_serves_without_a_round_trip_until_the_bump_arrives(
    make_twotier: Callable[..., TwoTierBackend],
) -> None:
    a, b = make_twotier("pubsub"), make_twotier("pubsub")
    _fill(b)
    for _ in range(3):
        assert b.lookup("k", [USERS]).value == b"old rows"
    assert b.stats.l1_hits == 3
    a.bump([USERS])
    eventually(lambda: b.lookup("k", [USERS]).value is None)
    # and a fill under the new versions is served from the L1 again
    _fill(b, value=b"new rows")
    hits = b.stats.l1_hits
    assert b.lookup("k", [USERS]).value == b"new rows"
    assert b.stats.l1_hits == hits + 1


def test_pubsub_mode_reads_its_own_bumps_at_once(
    make_twotier: Callable[..., TwoTierBackend],
) -> None:
    b = make_twotier("pubsub")
    _fill(b)
    assert b.lookup("k", [USERS]).value == b"old rows"
    b.bump([USERS])
    assert b.lookup("k", [USERS]).value is None


def test_pubsub_mode_drops_a_whole_group_another_instance_reset(
    redis_url: str, redis_prefix: str, make_twotier: Callable[..., TwoTierBackend]
) -> None:
    b = make_twotier("pubsub")
    _fill(b)
    assert b.lookup("k", [USERS]).value == b"old rows"
    small = RedisBackend(redis_url, prefix=redis_prefix, max_members=2)
    for i in range(4):  # members of USERS' group past the bound: the group starts over
        small.bump([("db|public.users", f"id=i:{i}")])
    small.close()
    eventually(lambda: b.lookup("k", [USERS]).value is None)


def _kill_subscriber(redis_url: str, backend: TwoTierBackend) -> None:
    admin = redis.Redis.from_url(redis_url)
    name = backend._subscriber.client_name
    ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
    assert len(ids) == 1
    admin.client_kill_filter(_id=ids[0])
    admin.close()


def test_a_lost_subscription_flushes_the_l1_and_comes_back(
    redis_url: str, make_twotier: Callable[..., TwoTierBackend]
) -> None:
    a, b = make_twotier("pubsub"), make_twotier("pubsub")
    _fill(b)
    assert b.lookup("k", [USERS]).value == b"old rows"
    flushes = b.stats.flushes
    _kill_subscriber(redis_url, b)
    eventually(lambda: b.stats.flushes >= flushes + 2 and b.stats.subscribed)
    assert b.stats.l1_entries == 0
    # coherent again: a fresh fill is served from the L1, and a remote bump reaches it
    _fill(b, value=b"again")
    assert b.lookup("k", [USERS]).value == b"again"
    a.bump([USERS])
    eventually(lambda: b.lookup("k", [USERS]).value is None)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(str(tmp_path))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("coherence", ["versions", "pubsub"])
def test_redis_going_away_flushes_the_l1_and_recovery_needs_no_new_object(
    private_redis: PrivateRedis,
    make_twotier: Callable[..., TwoTierBackend],
    coherence: Coherence,
) -> None:
    b = make_twotier(coherence, url=private_redis.url)
    _fill(b)
    assert b.lookup("k", [USERS]).value == b"old rows"
    private_redis.stop()
    if coherence == "pubsub":
        # Until the subscriber notices, pubsub mode may serve its L1 (the documented bound);
        # once it has, the L1 is gone and every lookup asks Redis.
        eventually(lambda: not b.stats.subscribed)
        assert b.stats.l1_entries == 0
    with pytest.raises(CacheBackendError):
        b.lookup("k", [USERS])
    assert b.stats.l1_entries == 0
    assert not b.stats.subscribed
    private_redis.start()

    def works() -> bool:
        try:
            b.lookup("k", [USERS])
        except CacheBackendError:
            return False
        return True

    eventually(works)
    if coherence == "pubsub":
        eventually(lambda: b.stats.subscribed)
    _fill(b, value=b"after the restart")
    assert b.lookup("k", [USERS]).value == b"after the restart"
    other = make_twotier(coherence, url=private_redis.url)
    other.bump([USERS])
    eventually(lambda: b.lookup("k", [USERS]).value is None)


def test_pubsub_needs_a_sync_client(redis_url: str) -> None:
    import redis.asyncio

    aclient = redis.asyncio.Redis.from_url(redis_url)
    with pytest.raises(ConfigurationError, match="sync client"):
        TwoTierBackend(RedisBackend(async_client=aclient, prefix="x"), coherence="pubsub")
    with pytest.raises(ConfigurationError, match="coherence"):
        TwoTierBackend(RedisBackend(async_client=aclient, prefix="x"), coherence="gossip")  # type: ignore[arg-type]


def test_close_stops_the_subscriber_thread(redis_url: str, redis_prefix: str) -> None:
    with TwoTierBackend(RedisBackend(redis_url, prefix=redis_prefix), coherence="pubsub") as b:
        eventually(lambda: b.stats.subscribed)
        thread = b._thread
        assert thread is not None
        assert thread.is_alive()
    assert not thread.is_alive()
    assert not b.stats.subscribed
    b.remote.close()
