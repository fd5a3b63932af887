"""A per-process memory tier (L1) in front of a :class:`RedisBackend`.

Redis stays the authority for entries and versions; the L1 only saves transferring (and, in
"pubsub" mode, fetching) what Redis already holds. Two coherence modes:

``"versions"`` (the default): an L1 entry is served only after Redis confirmed, in the same
single round trip a plain lookup takes, that the versions it was stored with are still
current. The lookup script is handed the L1 copy's header and answers "still valid" without
sending the value, so a hit costs one small round trip and no value transfer, and is never
stale: exactly as fresh as a Redis hit.

``"pubsub"``: the L1 also mirrors token versions, and a subscriber thread listening on the
backend's bump channel drops mirrored versions as bumps arrive. A hit whose tokens are all
mirrored at the versions the entry was stored with needs no round trip. Staleness is bounded
by pub/sub delivery latency: after another process bumps a token, this process may serve the
old entry until the message arrives (usually well under a millisecond on a LAN; longer if the
network or this process stalls). Bumps made through this backend drop the mirror before
``bump()`` returns, so a process always reads its own writes.

Both modes: fills go to Redis (compare-and-set) and then to the L1. Whenever the L1 may have
missed an invalidation (the subscriber lost its connection or is re-subscribing, or any call
to Redis failed) the L1 is flushed entirely. Versions read from Redis are mirrored only if
no invalidation was processed while they were in flight (an epoch counter), so a slow reply
can never re-install a version a bump message already dropped. The subscriber reconnects by
itself with exponential backoff; until it is subscribed again, "pubsub" lookups validate in
Redis like "versions" ones.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ormtune.backends._memory import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    EntryStore,
    check_ttl,
)
from ormtune.backends._redis import KNOWN, decode_bump_message, import_redis
from ormtune.backends._scheme import header
from ormtune.exceptions import CacheBackendError, ConfigurationError
from ormtune.typing import Lookup

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Sequence
    from types import TracebackType

    from ormtune.backends._redis import RedisBackend
    from ormtune.typing import Token, Version

__all__ = ["TwoTierBackend", "TwoTierStats"]

logger = logging.getLogger("ormtune.backends")

Coherence = Literal["versions", "pubsub"]

DEFAULT_MAX_MIRRORED = 100_000

_subscriber_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class TwoTierStats:
    """A snapshot of a two-tier backend's counters.

    ``l1_hits`` were served from the L1 with no round trip (pubsub mode only);
    ``validated_hits`` served the L1's copy after Redis confirmed its versions (no value
    transferred); ``remote_hits`` came from Redis; ``misses`` found nothing valid; ``flushes``
    counts whole-L1 flushes (subscriber (re)connects, Redis errors, ``clear()``).
    ``subscribed`` tells whether the pubsub subscriber is currently subscribed.
    """

    l1_entries: int
    l1_bytes: int
    l1_hits: int
    validated_hits: int
    remote_hits: int
    misses: int
    flushes: int
    subscribed: bool


class TwoTierBackend:
    """A per-process L1 in front of a shared :class:`RedisBackend` (see the module docstring).

    ``coherence="versions"`` (default) never serves a stale entry; ``"pubsub"`` serves L1 hits
    without a round trip, stale for at most the pub/sub delivery latency, and needs the
    Redis backend to have a sync client (for its subscriber thread). ``max_entries`` and
    ``max_bytes`` bound the L1. Call :meth:`close` (or use ``with``) to stop the subscriber;
    the Redis backend is not closed, it may be shared.
    """

    def __init__(
        self,
        remote: RedisBackend,
        *,
        coherence: Coherence = "versions",
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_mirrored: int = DEFAULT_MAX_MIRRORED,
        health_check_interval: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if coherence not in ("versions", "pubsub"):
            raise ConfigurationError(f"coherence must be 'versions' or 'pubsub', got {coherence!r}")
        self.remote = remote
        self.coherence: Coherence = coherence
        self._lock = threading.Lock()
        self._clock = clock
        self._l1 = EntryStore(max_entries=max_entries, max_bytes=max_bytes, clock=clock)
        self._mirror: dict[str, dict[str, int]] = {}
        self._mirrored = 0
        self._max_mirrored = max_mirrored
        self._epoch = 0
        self._subscribed = False
        self._l1_hits = self._validated_hits = self._remote_hits = self._misses = 0
        self._flushes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if coherence == "pubsub":
            client = remote.sync_client
            if client is None:
                raise ConfigurationError(
                    "coherence='pubsub' needs a RedisBackend with a sync client (url= or "
                    "client=) for its subscriber thread"
                )
            self._subscriber = _Subscriber(self, client, health_check_interval)
            self._thread = threading.Thread(
                target=self._subscriber.run,
                name=f"ormtune-subscriber-{remote.prefix}",
                daemon=True,
            )
            self._thread.start()

    def __repr__(self) -> str:
        return f"<TwoTierBackend coherence={self.coherence!r} remote={self.remote!r}>"

    @property
    def stats(self) -> TwoTierStats:
        """Counters and L1 size, read atomically."""
        with self._lock:
            return TwoTierStats(
                l1_entries=len(self._l1),
                l1_bytes=self._l1.nbytes,
                l1_hits=self._l1_hits,
                validated_hits=self._validated_hits,
                remote_hits=self._remote_hits,
                misses=self._misses,
                flushes=self._flushes,
                subscribed=self._subscribed,
            )

    # -- L1 bookkeeping (callers hold the lock) -------------------------------------------

    def _flush_locked(self) -> None:
        self._l1.clear()
        self._mirror.clear()
        self._mirrored = 0
        self._epoch += 1
        self._flushes += 1

    def flush(self) -> None:
        """Drop the whole L1 (entries and mirrored versions); Redis is untouched."""
        with self._lock:
            self._flush_locked()

    def _mirrored_versions(self, tokens: Sequence[Token]) -> tuple[Version, ...] | None:
        mirror = self._mirror
        out = []
        for group, member in tokens:
            members = mirror.get(group)
            version = None if members is None else members.get(member)
            if version is None:
                return None
            out.append(version)
        return tuple(out)

    def _mirror_install(self, tokens: Sequence[Token], versions: tuple[Version, ...]) -> None:
        if self._mirrored + len(tokens) > self._max_mirrored:
            self._mirror.clear()
            self._mirrored = 0
        mirror = self._mirror
        for (group, member), version in zip(tokens, versions, strict=True):
            members = mirror.setdefault(group, {})
            if member not in members:
                self._mirrored += 1
            members[member] = version

    def _mirror_drop(self, tokens: Iterable[Token], groups: Iterable[str]) -> None:
        """Forget mirrored versions a bump moved; callers hold the lock."""
        self._epoch += 1
        mirror = self._mirror
        for group in groups:
            members = mirror.pop(group, None)
            if members is not None:
                self._mirrored -= len(members)
        for group, member in tokens:
            members = mirror.get(group)
            if members is not None and members.pop(member, None) is not None:
                self._mirrored -= 1

    # -- subscriber callbacks --------------------------------------------------------------

    def _on_subscribed(self) -> None:
        with self._lock:
            self._flush_locked()  # anything read before the subscription may be stale
            self._subscribed = True

    def _on_disconnected(self) -> None:
        with self._lock:
            self._subscribed = False
            self._flush_locked()  # messages may have been missed

    def _on_message(self, data: bytes) -> None:
        try:
            tokens, resets = decode_bump_message(data)
        except (ValueError, TypeError, IndexError):
            logger.warning("ormtune: malformed message on %s; flushing the L1", self.remote.channel)
            self.flush()
            return
        with self._lock:
            self._mirror_drop(tokens, resets)

    # -- the CacheBackend protocol --------------------------------------------------------

    def _remote_failed(self) -> None:
        with self._lock:
            self._flush_locked()

    def lookup(self, key: str, tokens: Sequence[Token], /) -> Lookup:
        """The entry under ``key`` if valid: from the L1 when it can be, else from Redis."""
        with self._lock:
            entry = self._l1.get(key)
            epoch = -1
            if self._subscribed:
                if entry is not None:
                    versions = self._mirrored_versions(tokens)
                    if versions is not None and versions == entry.versions:
                        self._l1_hits += 1
                        return Lookup(entry.value, versions)
                epoch = self._epoch
        known = "" if entry is None else header(entry.versions)
        try:
            status, value, versions, remaining = self.remote.lookup_raw(key, tokens, known)
        except CacheBackendError:
            self._remote_failed()
            raise
        with self._lock:
            if epoch == self._epoch and self._subscribed:
                self._mirror_install(tokens, versions)
            if status == KNOWN:
                assert entry is not None
                self._validated_hits += 1
                return Lookup(entry.value, versions)
            if entry is not None and self._l1.get(key) is entry:
                self._l1.discard(key)
            if value is None:
                self._misses += 1
            else:
                self._remote_hits += 1
                # The L1 copy must expire no later than Redis's; one about to expire is
                # not worth keeping (and a TTL of 0 must never read as "no expiry").
                if remaining is None or remaining > 0:
                    self._l1.put(key, value, versions, remaining)
        return Lookup(value, versions)

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
        """Store in Redis if ``tokens`` still have ``versions`` (CAS), then in the L1."""
        check_ttl(ttl)
        started = self._clock()
        try:
            stored = self.remote.store(key, value, tokens=tokens, versions=versions, ttl=ttl)
        except CacheBackendError:
            self._remote_failed()
            raise
        if stored:
            # Count the TTL from before the round trip, so the L1 copy never outlives Redis's.
            left = None if ttl is None else ttl - (self._clock() - started)
            if left is None or left > 0:
                with self._lock:
                    self._l1.put(key, value, tuple(versions), left)
        return stored

    def versions(self, tokens: Sequence[Token], /) -> tuple[Version, ...]:
        """The current version of each token, as Redis has it."""
        try:
            return self.remote.versions(tokens)
        except CacheBackendError:
            self._remote_failed()
            raise

    def bump(self, tokens: Collection[Token], /) -> None:
        """Bump in Redis (which publishes it), and forget this process's mirrored versions."""
        try:
            resets = self.remote.bump_raw(tokens)
        except CacheBackendError:
            self._remote_failed()
            raise
        with self._lock:
            self._mirror_drop(tokens, resets)

    def delete(self, key: str, /) -> None:
        """Drop one entry from Redis and from the L1."""
        with self._lock:
            self._l1.discard(key)
        try:
            self.remote.delete(key)
        except CacheBackendError:
            self._remote_failed()
            raise

    def clear(self) -> None:
        """Drop every entry under the prefix, in Redis and in the L1; versions stay."""
        self.flush()
        try:
            self.remote.clear()
        except CacheBackendError:
            self._remote_failed()
            raise

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the subscriber thread (if any) and drop the L1."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def __enter__(self) -> TwoTierBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Subscriber:
    """The pubsub-mode listener: a dedicated connection, reconnecting with backoff."""

    INITIAL_BACKOFF = 0.05
    MAX_BACKOFF = 2.0
    POLL = 0.1  # how often the loop looks at the stop flag while idle

    def __init__(self, owner: TwoTierBackend, client: Any, health_check_interval: int) -> None:
        redis = import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._owner = owner
        self._redis_error: type[Exception] = redis.RedisError
        pool = client.connection_pool
        # Unique per subscriber, so an operator (or a test) can find it in CLIENT LIST.
        label = f"ormtune-sub:{owner.remote.prefix}:{os.getpid()}:{next(_subscriber_ids)}"
        name = re.sub(r"[^\w:.\-]", "_", label)
        kwargs = dict(pool.connection_kwargs)
        # No silent reconnects: a dropped connection must surface here, so the L1 is flushed.
        kwargs.update(
            client_name=name,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=health_check_interval,
        )
        self.client_name = name
        self._pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        self._client = redis.Redis(connection_pool=self._pool)

    def run(self) -> None:
        owner = self._owner
        stop = owner._stop
        backoff = self.INITIAL_BACKOFF
        while not stop.is_set():
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(owner.remote.channel)
                while not stop.is_set():
                    message = pubsub.get_message(timeout=self.POLL)
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind == "message":
                        owner._on_message(message["data"])
                    elif kind == "subscribe":
                        owner._on_subscribed()
                        backoff = self.INITIAL_BACKOFF
            except self._redis_error as exc:
                logger.info("ormtune: bump subscriber lost Redis (%s); flushing the L1", exc)
                owner._on_disconnected()
                stop.wait(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF)
            except Exception:  # never let the thread die: it would leave the L1 incoherent
                logger.exception("ormtune: bump subscriber failed; flushing the L1")
                owner._on_disconnected()
                stop.wait(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF)
            finally:
                with contextlib.suppress(self._redis_error):
                    pubsub.close()
        owner._on_disconnected()
        self._client.close()
        self._pool.disconnect()
