"""MemoryBackend's bounds, TTLs and stats (the contract suite covers the protocol)."""

from __future__ import annotations

import builtins
import sys
from typing import TYPE_CHECKING

import pytest

from ormtune.backends import MemoryBackend, MemoryStats
from ormtune.exceptions import ConfigurationError, MissingDependencyError
from tests.backend_support import FakeClock

if TYPE_CHECKING:
    from ormtune.typing import Token

T: Token = ("db|t", "*")


def _store(backend: MemoryBackend, key: str, value: bytes, ttl: float | None = None) -> bool:
    return backend.store(key, value, tokens=[T], versions=backend.versions([T]), ttl=ttl)


def _held(backend: MemoryBackend, *keys: str) -> list[str]:
    return [key for key in keys if backend.lookup(key, [T]).value is not None]


def test_least_recently_used_entries_are_evicted_first() -> None:
    backend = MemoryBackend(max_entries=3)
    for key in "abc":
        assert _store(backend, key, b"v")
    assert backend.lookup("a", [T]).value == b"v"  # a is now the most recently used
    assert _store(backend, "d", b"v")
    assert _held(backend, "a", "b", "c", "d") == ["a", "c", "d"]
    assert backend.stats.evictions == 1


def test_the_byte_bound_counts_keys_and_values() -> None:
    backend = MemoryBackend(max_bytes=30)
    assert _store(backend, "a", b"x" * 9)  # 10 bytes
    assert _store(backend, "b", b"x" * 9)
    assert _store(backend, "c", b"x" * 9)
    assert backend.stats.bytes == 30
    assert _store(backend, "d", b"x" * 14)  # 15 bytes: a and b must go
    assert _held(backend, "a", "b", "c", "d") == ["c", "d"]
    assert backend.stats == MemoryStats(entries=2, bytes=25, evictions=2, expirations=0, groups=1)


def test_an_entry_larger_than_the_byte_bound_is_not_stored() -> None:
    backend = MemoryBackend(max_bytes=10)
    assert _store(backend, "a", b"x")
    assert not _store(backend, "big", b"x" * 10)
    assert _held(backend, "a", "big") == ["a"]


def test_replacing_an_entry_accounts_its_bytes_once() -> None:
    backend = MemoryBackend()
    _store(backend, "a", b"x" * 100)
    _store(backend, "a", b"x" * 10)
    assert backend.stats.bytes == 11
    assert backend.stats.entries == 1
    backend.delete("a")
    backend.clear()
    assert backend.stats.bytes == 0


def test_ttl_follows_the_injected_clock() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    _store(backend, "a", b"v", ttl=10)
    clock.advance(9.99)
    assert backend.lookup("a", [T]).value == b"v"
    clock.advance(0.01)
    assert backend.lookup("a", [T]).value is None
    assert backend.stats.expirations == 1
    assert backend.stats.entries == 0


def test_a_stale_entry_frees_its_space_when_found() -> None:
    backend = MemoryBackend()
    _store(backend, "a", b"v")
    backend.bump([T])
    assert backend.lookup("a", [T]).value is None
    assert backend.stats.entries == 0


def test_the_group_table_is_bounded_and_dropped_groups_come_back_new() -> None:
    backend = MemoryBackend(max_groups=2)
    first = backend.versions([("g1", "*")])
    backend.versions([("g2", "*"), ("g3", "*")])  # g1 is dropped
    assert backend.stats.groups == 2
    assert backend.versions([("g1", "*")]) != first


def test_a_group_past_max_members_starts_over() -> None:
    backend = MemoryBackend(max_members=2)
    star = ("g", "*")
    before = backend.versions([star])
    backend.bump([("g", "a"), ("g", "b")])
    assert backend.versions([star]) == before  # two members fit
    backend.bump([("g", "c")])
    assert backend.versions([star]) != before  # the third resets the group
    assert backend.versions([("g", "c")]) != backend.versions([star])


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan")])
def test_a_ttl_that_is_not_positive_is_refused(ttl: float) -> None:
    with pytest.raises(ConfigurationError, match="ttl"):
        _store(MemoryBackend(), "a", b"v", ttl=ttl)


@pytest.mark.parametrize("option", ["max_entries", "max_bytes", "max_groups", "max_members"])
def test_bounds_must_be_positive(option: str) -> None:
    with pytest.raises(ConfigurationError, match=option):
        MemoryBackend(**{option: 0})  # type: ignore[arg-type]


def test_redis_backend_without_redis_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from ormtune.backends import RedisBackend

    real_import = builtins.__import__

    def no_redis(name: str, *args: object, **kwargs: object) -> object:
        if name == "redis" or name.startswith("redis."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    for module in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", no_redis)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ormtune\[redis\]'"):
        RedisBackend("redis://127.0.0.1:6379/0")
