"""What one cache lookup costs in each backend: a hit on a 1 KiB entry with two tokens.

Memory in-process; Redis (one Lua round trip, value transferred); two-tier "versions" (one
round trip, value not transferred); two-tier "pubsub" (no round trip). Best of five runs,
microseconds per lookup. Needs Redis at ORMTUNE_BENCH_REDIS_URL (default 127.0.0.1:6379/0).

    .venv/bin/python bench/backends.py
"""

from __future__ import annotations

import os
import time
import timeit
import uuid
from typing import TYPE_CHECKING

from ormtune.backends import MemoryBackend, RedisBackend, TwoTierBackend

if TYPE_CHECKING:
    from ormtune.typing import CacheBackend, Token

URL = os.environ.get("ORMTUNE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TOKENS: list[Token] = [("db|public.users", "*"), ("db|public.orders", "user_id=i:7")]


def per_lookup_us(backend: CacheBackend, number: int) -> float:
    versions = backend.lookup("bench", TOKENS).versions
    assert backend.store("bench", b"x" * 1024, tokens=TOKENS, versions=versions, ttl=None)
    assert backend.lookup("bench", TOKENS).value is not None
    runs = timeit.repeat(lambda: backend.lookup("bench", TOKENS), number=number, repeat=5)
    return min(runs) / number * 1e6


def main() -> None:
    print(f"{'backend':<22} {'lookup hit (us)':>16}")
    print(f"{'memory':<22} {per_lookup_us(MemoryBackend(), 200_000):>16.2f}")
    prefix = f"ormtune-bench-{uuid.uuid4().hex[:8]}"
    remote = RedisBackend(URL, prefix=prefix)
    try:
        print(f"{'redis':<22} {per_lookup_us(remote, 5_000):>16.1f}")
        for coherence in ("versions", "pubsub"):
            with TwoTierBackend(remote, coherence=coherence) as twotier:
                deadline = time.monotonic() + 5
                while coherence == "pubsub" and not twotier.stats.subscribed:
                    if time.monotonic() > deadline:
                        raise SystemExit("the subscriber did not subscribe within 5 s")
                    time.sleep(0.01)
                number = 200_000 if coherence == "pubsub" else 5_000
                print(f"{'twotier-' + coherence:<22} {per_lookup_us(twotier, number):>16.2f}")
    finally:
        remote.clear()
        client = remote.sync_client
        assert client is not None
        for key in client.scan_iter(match=f"{{{prefix}}}*"):
            client.unlink(key)
        remote.close()


if __name__ == "__main__":
    main()
