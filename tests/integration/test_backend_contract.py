"""One contract suite for every cache backend (ormtune.typing.CacheBackend).

Subjects: the memory backend (fake clock), Redis through the sync client, Redis through the
asyncio client inside SQLAlchemy's greenlet (as AsyncSession work calls it), and the two-tier
backend in both coherence modes. Redis is real; each test has its own key prefix.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import redis
import redis.asyncio

from ormtune.backends import MemoryBackend, RedisBackend, TwoTierBackend
from ormtune.typing import CacheBackend
from tests.backend_support import FakeClock, GreenletBridge, eventually

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ormtune.typing import Token

USERS: Token = ("db|public.users", "*")
ORDERS: Token = ("db|public.orders", "*")
ORDERS_OF_7: Token = ("db|public.orders", "user_id=i:7")
MAX_MEMBERS = 8  # every subject resets a group that would grow past this many members


@dataclass
class Subject:
    """A backend under test, and what the suite needs to know about it."""

    name: str
    backend: CacheBackend
    make: Callable[..., CacheBackend]  # another instance: make(prefix=None) shares the store
    lose_groups: Callable[[], None]  # drop every version group, as eviction or a flush would
    clock: FakeClock | None = None
    raw: redis.Redis | None = None
    prefix: str = ""
    closers: list[Callable[[], None]] = field(default_factory=list)

    def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.advance(seconds)

    def fill(self, key: str, tokens: list[Token], value: bytes = b"value") -> None:
        versions = self.backend.lookup(key, tokens).versions
        assert self.backend.store(key, value, tokens=tokens, versions=versions, ttl=None)


def _memory(request: pytest.FixtureRequest) -> Subject:
    clock = FakeClock()
    groups = 16

    def make(prefix: str | None = None) -> CacheBackend:
        return MemoryBackend(max_groups=groups, max_members=MAX_MEMBERS, clock=clock)

    backend = make()

    def lose_groups() -> None:  # creating more groups than the table holds drops the old ones
        backend.versions([(f"filler-{i}", "*") for i in range(groups)])

    return Subject("memory", backend, make, lose_groups, clock=clock)


def _redis_subject(request: pytest.FixtureRequest, kind: str) -> Subject:
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    raw = redis.Redis.from_url(url)
    closers: list[Callable[[], None]] = [raw.close]
    runner: asyncio.Runner | None = None
    if kind == "redis-asyncio":
        runner = asyncio.Runner()
        closers.append(runner.close)

    def make(prefix: str | None = prefix) -> CacheBackend:
        assert prefix is not None
        if kind == "redis-asyncio":
            assert runner is not None
            aclient = redis.asyncio.Redis.from_url(url)
            closers.insert(0, lambda: runner.run(aclient.aclose()))
            remote = RedisBackend(async_client=aclient, prefix=prefix, max_members=MAX_MEMBERS)
            return GreenletBridge(remote, runner)
        remote = RedisBackend(url, prefix=prefix, max_members=MAX_MEMBERS)
        closers.append(remote.close)
        if kind == "redis":
            return remote
        twotier = TwoTierBackend(
            remote, coherence="pubsub" if kind.endswith("pubsub") else "versions"
        )
        closers.insert(0, twotier.close)
        if twotier.coherence == "pubsub":
            eventually(lambda: twotier.stats.subscribed)
        return twotier

    def lose_groups() -> None:  # what allkeys eviction or FLUSHDB can do to version keys
        keys = [*list(raw.scan_iter(match=f"{{{prefix}}}:v:*")), f"{{{prefix}}}:seq"]
        raw.delete(*keys)

    return Subject(kind, make(), make, lose_groups, raw=raw, prefix=prefix, closers=closers)


ALL = ["memory", "redis", "redis-asyncio", "twotier-versions", "twotier-pubsub"]
REDIS_BASED = ["redis", "redis-asyncio", "twotier-versions", "twotier-pubsub"]
THREADED = ["memory", "redis", "twotier-versions", "twotier-pubsub"]  # the bridge is one loop


@pytest.fixture
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    kind: str = request.param
    result = _memory(request) if kind == "memory" else _redis_subject(request, kind)
    yield result
    for close in result.closers:
        close()


def test_every_subject_implements_the_protocol() -> None:
    assert isinstance(MemoryBackend(), CacheBackend)
    assert issubclass(RedisBackend, CacheBackend)
    assert issubclass(TwoTierBackend, CacheBackend)


@pytest.mark.parametrize("subject", ALL, indirect=True)
class TestContract:
    def test_miss_then_hit(self, subject: Subject) -> None:
        backend = subject.backend
        first = backend.lookup("k", [USERS, ORDERS])
        assert first.value is None
        assert len(first.versions) == 2
        assert backend.store(
            "k", b"\x00rows\n", tokens=[USERS, ORDERS], versions=first.versions, ttl=None
        )
        hit = backend.lookup("k", [USERS, ORDERS])
        assert hit.value == b"\x00rows\n"
        assert hit.versions == first.versions
        assert backend.lookup("other", [USERS, ORDERS]).value is None

    def test_never_bumped_versions_are_stable(self, subject: Subject) -> None:
        backend = subject.backend
        assert backend.versions([USERS, ORDERS_OF_7]) == backend.versions([USERS, ORDERS_OF_7])
        assert backend.lookup("k", [USERS]).versions == backend.versions([USERS])

    def test_store_is_rejected_when_a_version_moved_since_the_lookup(
        self, subject: Subject
    ) -> None:
        backend = subject.backend
        snapshot = backend.lookup("k", [USERS, ORDERS]).versions
        backend.bump([ORDERS])
        assert not backend.store(
            "k", b"old rows", tokens=[USERS, ORDERS], versions=snapshot, ttl=None
        )
        assert backend.lookup("k", [USERS, ORDERS]).value is None

    def test_bump_invalidates(self, subject: Subject) -> None:
        backend = subject.backend
        subject.fill("k", [USERS, ORDERS_OF_7])
        before = backend.versions([USERS, ORDERS_OF_7])
        backend.bump([ORDERS_OF_7])
        after = backend.lookup("k", [USERS, ORDERS_OF_7])
        assert after.value is None
        assert after.versions[0] == before[0]
        assert after.versions[1] != before[1]

    def test_bump_of_an_unrelated_token_leaves_the_entry(self, subject: Subject) -> None:
        backend = subject.backend
        subject.fill("k", [USERS, ORDERS_OF_7])
        backend.bump([("db|public.payments", "*"), ("db|public.orders", "user_id=i:8")])
        assert backend.lookup("k", [USERS, ORDERS_OF_7]).value == b"value"

    def test_bump_moves_every_token_it_is_given(self, subject: Subject) -> None:
        backend = subject.backend
        tokens = [USERS, ORDERS, ORDERS_OF_7]
        before = backend.versions(tokens)
        backend.bump(tokens)
        after = backend.versions(tokens)
        assert all(a != b for a, b in zip(after, before, strict=True))
        backend.bump([])  # nothing to do, and no error
        assert backend.versions(tokens) == after

    def test_entry_expires_after_its_ttl(self, subject: Subject) -> None:
        backend = subject.backend
        versions = backend.lookup("k", [USERS]).versions
        assert backend.store("k", b"short-lived", tokens=[USERS], versions=versions, ttl=0.3)
        assert backend.store("keep", b"kept", tokens=[USERS], versions=versions, ttl=None)
        assert backend.lookup("k", [USERS]).value == b"short-lived"
        subject.advance(0.31)
        eventually(lambda: backend.lookup("k", [USERS]).value is None)
        assert backend.lookup("keep", [USERS]).value == b"kept"

    def test_delete(self, subject: Subject) -> None:
        backend = subject.backend
        subject.fill("a", [USERS])
        subject.fill("b", [USERS])
        backend.delete("a")
        backend.delete("never-stored")
        assert backend.lookup("a", [USERS]).value is None
        assert backend.lookup("b", [USERS]).value == b"value"

    def test_clear_drops_entries_but_never_rewinds_versions(self, subject: Subject) -> None:
        backend = subject.backend
        v0 = backend.versions([USERS, ORDERS])
        backend.bump([USERS])
        v1 = backend.versions([USERS, ORDERS])
        subject.fill("k", [USERS, ORDERS])
        backend.clear()
        assert backend.lookup("k", [USERS, ORDERS]).value is None
        after = backend.versions([USERS, ORDERS])
        assert after[0] != v0[0], "clear() rewound a bumped version (ABA)"
        assert after == v1
        backend.bump([USERS])
        assert backend.versions([USERS])[0] not in (v0[0], v1[0])

    def test_group_loss_never_repeats_a_version(self, subject: Subject) -> None:
        backend = subject.backend
        seen = {backend.versions([ORDERS_OF_7])[0]}
        backend.bump([ORDERS_OF_7])
        v1 = backend.versions([ORDERS_OF_7])
        seen.add(v1[0])
        subject.fill("k", [ORDERS_OF_7])
        subject.lose_groups()  # a counter that restarted at 0 would read as v1 after one bump
        backend.bump([ORDERS_OF_7])
        after = backend.lookup("k", [ORDERS_OF_7])
        assert after.value is None, "an entry stored before the group was lost was served (ABA)"
        assert after.versions[0] not in seen

    def test_group_reset_past_max_members_never_repeats_a_version(self, subject: Subject) -> None:
        backend = subject.backend
        star = ("db|public.orders", "*")
        seen = {backend.versions([star])[0]}
        backend.bump([star])
        seen.add(backend.versions([star])[0])
        subject.fill("k", [star])
        for i in range(MAX_MEMBERS + 2):  # the group outgrows its bound and starts over
            backend.bump([("db|public.orders", f"id=i:{i}")])
        after = backend.lookup("k", [star])
        assert after.value is None
        assert after.versions[0] not in seen

    def test_two_prefixes_do_not_see_each_other(self, subject: Subject) -> None:
        other = subject.make(prefix=subject.prefix + "-other" if subject.prefix else None)
        subject.fill("k", [USERS], b"mine")
        assert other.lookup("k", [USERS]).value is None
        lk = other.lookup("k", [USERS])
        assert other.store("k", b"theirs", tokens=[USERS], versions=lk.versions, ttl=None)
        mine = subject.backend.versions([USERS])
        other.bump([USERS])
        other.clear()
        assert subject.backend.versions([USERS]) == mine
        assert subject.backend.lookup("k", [USERS]).value == b"mine"

    def test_empty_value_and_token_list(self, subject: Subject) -> None:
        backend = subject.backend
        lk = backend.lookup("k", [])
        assert lk.versions == ()
        assert backend.store("k", b"", tokens=[], versions=(), ttl=None)
        assert backend.lookup("k", []).value == b""


@pytest.mark.parametrize("subject", REDIS_BASED, indirect=True)
class TestRedisStoredEntries:
    @pytest.mark.parametrize(
        "garbage",
        [b"", b"not framed at all", b"OT1 12.x\nvalue", b"OT1 1.0,2.0\n", b"\xff" * 64],
    )
    def test_a_corrupt_entry_is_a_miss_and_is_deleted(
        self, subject: Subject, garbage: bytes
    ) -> None:
        assert subject.raw is not None
        raw_key = f"{{{subject.prefix}}}:e:k"
        subject.raw.set(raw_key, garbage)
        lk = subject.backend.lookup("k", [USERS])
        assert lk.value is None
        assert subject.raw.exists(raw_key) == 0
        assert subject.backend.store("k", b"fresh", tokens=[USERS], versions=lk.versions, ttl=None)
        assert subject.backend.lookup("k", [USERS]).value == b"fresh"

    def test_a_key_of_another_type_is_a_miss(self, subject: Subject) -> None:
        assert subject.raw is not None
        raw_key = f"{{{subject.prefix}}}:e:k"
        subject.raw.hset(raw_key, "field", "value")
        assert subject.backend.lookup("k", [USERS]).value is None
        assert subject.raw.exists(raw_key) == 0

    def test_ttl_none_means_no_expiry_and_a_ttl_sets_px(self, subject: Subject) -> None:
        assert subject.raw is not None
        versions = subject.backend.lookup("k", [USERS]).versions
        subject.backend.store("forever", b"x", tokens=[USERS], versions=versions, ttl=None)
        subject.backend.store("soon", b"x", tokens=[USERS], versions=versions, ttl=30)
        assert subject.raw.pttl(f"{{{subject.prefix}}}:e:forever") == -1
        assert 0 < subject.raw.pttl(f"{{{subject.prefix}}}:e:soon") <= 30_000


@pytest.mark.parametrize("subject", THREADED, indirect=True)
def test_concurrent_bumps_and_fills_lose_nothing(subject: Subject) -> None:
    """Writers fill with their snapshot as the value; bumpers check each bump moved its token.

    A hit must carry exactly the versions it was stored with (value == current versions), and
    a token bumped only by one thread must take a new version on every bump.
    """
    backend = subject.backend
    shared: list[Token] = [USERS, ORDERS]
    rounds = 60
    errors: list[str] = []

    def writer() -> None:
        for _ in range(rounds):
            lk = backend.lookup("k", shared)
            if lk.value is not None:
                if lk.value != repr(lk.versions).encode():
                    errors.append(f"served {lk.value!r} under versions {lk.versions}")
            else:
                backend.store(
                    "k", repr(lk.versions).encode(), tokens=shared, versions=lk.versions, ttl=None
                )

    def bumper(n: int) -> None:
        own = ("db|public.orders", f"thread={n}")
        seen = {backend.versions([own])[0]}
        for _ in range(rounds // 2):
            before = backend.versions([*shared, own])
            backend.bump([ORDERS, own])
            after = backend.versions([own])[0]
            if after in seen:
                errors.append(f"bump of {own} lost or repeated a version")
            seen.add(after)
            if backend.store("stale", b"x", tokens=[*shared, own], versions=before, ttl=None):
                errors.append("a store with a pre-bump snapshot succeeded")

    threads = [threading.Thread(target=writer) for _ in range(4)]
    threads += [threading.Thread(target=bumper, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # and after everything settled, a fill is served again
    subject.fill("settled", shared)
    assert backend.lookup("settled", shared).value == b"value"
