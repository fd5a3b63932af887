"""The Redis cache backend: entries and token versions shared by every process and host.

Keys, all under ``{prefix}`` (braces: a Redis Cluster hash tag, so one script's keys share a
slot, and a prefix can never be the start of another prefix's keys)::

    {prefix}:seq            the generation sequence (a string counter)
    {prefix}:v:<group>      one HASH per token group: field "g" = the group's generation,
                            field "m<member>" = the member's bump counter (absent = 0)
    {prefix}:e:<key>        one STRING per entry: header + value (see below)
    {prefix}:bump           the pub/sub channel every bump publishes on

Versions follow ``_scheme.py``: a member's version is its group's generation packed with its
counter. Every operation is one Lua script, so one round trip, atomic on the server:

- ``lookup`` reads the generation of each token's group (creating the group, with a new
  generation, if it is absent) and each member's counter, builds the header those versions
  give, and compares it with the start of the entry. A match returns the value; anything
  else (stale versions, a malformed or corrupt entry, a key of the wrong type) deletes the
  entry and is a miss. It returns the current versions either way, and may be told the header
  a caller already holds a copy for (the two-tier L1), in which case it answers "still
  valid" without sending the value.
- ``store`` builds the same header from the current versions, compares it with the header of
  the caller's snapshot, and only if they are equal runs ``SET key header+value [PX ttl]``.
- ``bump`` increments every token's counter (``HINCRBY``), creating absent groups with a new
  generation and resetting a group (new generation, members dropped) that would grow past
  ``max_members`` or overflow its counter, then ``PUBLISH``es the tokens on the bump channel.

Entry framing: ``"OT1 <gen>.<counter>,...\\n" + value``; the header is built by the same
rule in Python and in Lua, so a valid entry is recognised by one prefix comparison.

Generations are drawn by ``INCR {prefix}:seq``, floored by the server clock in microseconds
(``TIME``): ``gen = max(INCR seq, now_us)``, written back when the clock wins. Why this makes
eviction safe, so any ``maxmemory-policy`` (``allkeys-*`` included) keeps versions ABA-free:

- a group hash that is evicted or flushed comes back with a new generation, so every version
  it reports afterwards differs from every version it reported before (``_scheme.py``);
- if the sequence key itself is evicted or flushed, the next generation is the current time
  in microseconds, greater than every generation issued before (each was at most the clock
  at its issue, plus the few a burst of creations can get ahead of it within a microsecond),
  so generations never repeat either. This assumes the Redis server's clock does not step
  backwards across such a loss (NTP slews, it does not step, on a running server).

What eviction costs is hit rate, never correctness. Two real limits remain, both documented
rather than hidden: with ``noeviction`` and a ``maxmemory`` limit, a full Redis refuses every
script that writes, bumps included (the backend logs a warning at first use when it sees that
configuration); and a failover to an asynchronously replicated replica can lose the last
bumps, which no client-side scheme can recover.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import weakref
from typing import TYPE_CHECKING, Any, Final

from ormtune.backends._compat import await_, in_greenlet
from ormtune.backends._memory import DEFAULT_MAX_MEMBERS, check_ttl
from ormtune.backends._scheme import COUNTER_BITS, COUNTER_LIMIT, header, header_versions
from ormtune.exceptions import CacheBackendError, ConfigurationError, MissingDependencyError
from ormtune.typing import Lookup

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence
    from types import ModuleType, TracebackType

    import redis
    import redis.asyncio

    from ormtune.typing import Token, Version

__all__ = ["RedisBackend"]

logger = logging.getLogger("ormtune.backends")

DEFAULT_SOCKET_TIMEOUT: Final = 0.25
DEFAULT_SOCKET_CONNECT_TIMEOUT: Final = 0.5

# Lookup statuses returned by the lookup script.
MISS: Final = 0
HIT: Final = 1
KNOWN: Final = 2  # the caller's copy (its header) is current; the value was not sent

_PREAMBLE = """
local function new_generation(seq_key)
  local g = redis.call('INCR', seq_key)
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if g < floor then
    g = floor
    redis.call('SET', seq_key, string.format('%d', g))
  end
  return string.format('%d', g)
end

local function generation(gkey, seq_key, gens)
  local g = gens[gkey]
  if g then return g end
  g = redis.call('HGET', gkey, 'g')
  if not g then
    -- absent or evicted: a new generation makes every older version of it unmatchable
    g = new_generation(seq_key)
    redis.call('HSET', gkey, 'g', g)
  end
  gens[gkey] = g
  return g
end

-- KEYS[first..] are group keys, ARGV[first + shift ..] the members, one per token
local function current(first, shift, out)
  local gens = {}
  local parts = {}
  for i = first, #KEYS do
    local gkey = KEYS[i]
    local g = generation(gkey, KEYS[2], gens)
    local c = redis.call('HGET', gkey, 'm' .. ARGV[i + shift]) or '0'
    parts[#parts + 1] = g .. '.' .. c
    if out then
      out[#out + 1] = g
      out[#out + 1] = c
    end
  end
  return 'OT1 ' .. table.concat(parts, ',') .. '\\n'
end
"""

# KEYS: entry, seq, group per token. ARGV: known header ('' = none), member per token.
# Returns {status, value ('' unless HIT), pttl (-1 = none), header of the current versions}:
# the versions as one string, not two numbers per token (each reply element costs the client
# a parse step; the header is parsed in Python with one split).
_LOOKUP = (
    _PREAMBLE
    + """
local hdr = current(3, -1, nil)
local out = {MISS, '', -1, hdr}
if ARGV[1] ~= '' and ARGV[1] == hdr then
  out[1] = KNOWN
  return out
end
local e = redis.pcall('GET', KEYS[1])
if type(e) == 'string' then
  if string.sub(e, 1, #hdr) == hdr then
    out[1] = HIT
    out[2] = string.sub(e, #hdr + 1)
    out[3] = redis.call('PTTL', KEYS[1])
  else
    -- stale (its versions never come back), malformed or corrupt: a miss, and gone
    redis.call('DEL', KEYS[1])
  end
elseif type(e) == 'table' and e.err then
  redis.call('DEL', KEYS[1])  -- a key of another type where an entry belongs
end
return out
""".replace("MISS", str(MISS))
    .replace("KNOWN", str(KNOWN))
    .replace("HIT", str(HIT))
)

# KEYS: entry, seq, group per token. ARGV: expected header, value, ttl ms ('0' = none),
# member per token. Returns 1 if stored, 0 if a version moved.
_STORE = (
    _PREAMBLE
    + """
local hdr = current(3, 1, nil)
if hdr ~= ARGV[1] then return 0 end
if ARGV[3] ~= '0' then
  redis.call('SET', KEYS[1], hdr .. ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], hdr .. ARGV[2])
end
return 1
"""
)

# KEYS: (unused), seq, group per token. ARGV: max members, channel, message, member per
# token. Returns the 1-based indexes of the tokens whose group was reset (new generation).
_BUMP = (
    _PREAMBLE
    + """
local limit = tonumber(ARGV[1])
local reset = {}
local gens = {}
for i = 3, #KEYS do
  local gkey = KEYS[i]
  local field = 'm' .. ARGV[i + 1]
  local fresh = not redis.call('HGET', gkey, 'g')
  if not fresh and redis.call('HEXISTS', gkey, field) == 0
      and redis.call('HLEN', gkey) - 1 >= limit then
    -- too many fine-grained members: start the group over (safe: new generation)
    redis.call('DEL', gkey)
    fresh = true
  end
  if fresh then
    gens[gkey] = nil
    reset[#reset + 1] = i - 2
  end
  generation(gkey, KEYS[2], gens)
  if redis.call('HINCRBY', gkey, field, 1) >= COUNTER_LIMIT then
    redis.call('DEL', gkey)
    gens[gkey] = nil
    generation(gkey, KEYS[2], gens)
    redis.call('HINCRBY', gkey, field, 1)
    reset[#reset + 1] = i - 2
  end
end
redis.call('PUBLISH', ARGV[2], table.concat(reset, ',') .. '\\n' .. ARGV[3])
return reset
""".replace("COUNTER_LIMIT", str(COUNTER_LIMIT))
)

# KEYS: (unused), seq, group per token. ARGV: (unused), member per token.
# Returns {gen1, counter1, gen2, ...}.
_VERSIONS = (
    _PREAMBLE
    + """
local out = {}
current(3, -1, out)
return out
"""
)

# ARGV: cursor, MATCH pattern. Deletes one SCAN batch; returns the next cursor ('0' = done).
_CLEAR = """
local r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', 1000)
if #r[2] > 0 then redis.call('UNLINK', unpack(r[2])) end
return r[1]
"""

_SCRIPTS: Final = {
    "lookup": _LOOKUP,
    "store": _STORE,
    "versions": _VERSIONS,
    "bump": _BUMP,
    "clear": _CLEAR,
}

_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def import_redis() -> ModuleType:
    """The ``redis`` package, or :class:`MissingDependencyError` naming the extra."""
    try:
        import redis
        import redis.asyncio
    except ImportError as exc:
        raise MissingDependencyError("redis", "redis", "The Redis cache backend") from exc
    return redis


def decode_bump_message(data: bytes) -> tuple[list[Token], set[str]]:
    """The tokens a bump message names, and the groups it reset (whose every member moved)."""
    head, _, body = data.partition(b"\n")
    tokens: list[Token] = [(str(g), str(m)) for g, m in json.loads(body)]
    resets = {tokens[int(i) - 1][0] for i in head.split(b",") if i}
    return tokens, resets


def _raise(error: Exception) -> Any:
    raise error


def _lookup_reply(reply: Any) -> tuple[int, bytes | None, tuple[Version, ...], float | None]:
    status = int(reply[0])
    versions = header_versions(reply[3])
    if status != HIT:
        return status, None, versions, None
    pttl = int(reply[2])  # -1: no expiry; 0: less than a millisecond left
    return status, bytes(reply[1]), versions, (pttl / 1000 if pttl >= 0 else None)


class RedisBackend:
    """Cache entries and token versions in Redis, shared by every process that uses ``prefix``.

    Give either ``url`` (the backend then owns its clients: a sync one, and an asyncio one per
    event loop, created on first use from inside ``AsyncSession`` work) or ``client`` and/or
    ``async_client`` (redis-py ``Redis`` / ``redis.asyncio.Redis`` built with
    ``decode_responses=False``; their own timeouts and retries apply). Clients built from a
    URL use ``socket_timeout`` / ``socket_connect_timeout`` and retry a failed connection once
    without waiting, so an unreachable Redis costs well under a second, not minutes.

    Called from inside SQLAlchemy's greenlet (``AsyncSession``), the backend awaits the
    asyncio client through SQLAlchemy's bridge and never blocks the event loop; called from
    plain sync code it uses the sync client. Every Redis failure is raised as
    :class:`~ormtune.exceptions.CacheBackendError`; the same object works again once Redis
    is back. The module docstring describes the keys, scripts and version scheme.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        async_client: redis.asyncio.Redis | None = None,
        prefix: str = "ormtune",
        max_members: int = DEFAULT_MAX_MEMBERS,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout: float = DEFAULT_SOCKET_CONNECT_TIMEOUT,
        check_eviction_policy: bool = True,
    ) -> None:
        module = import_redis()
        if (url is None) == (client is None and async_client is None):
            raise ConfigurationError(
                "RedisBackend needs either url= or client= / async_client=, not both or neither"
            )
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"prefix must be a non-empty string without braces, got {prefix!r}"
            )
        if max_members < 1:
            raise ConfigurationError(f"max_members must be at least 1, got {max_members!r}")
        self._redis_errors: tuple[type[Exception], ...] = (module.RedisError,)
        self._no_script: type[Exception] = module.exceptions.NoScriptError
        self._response_error: type[Exception] = module.ResponseError
        self.prefix = prefix
        self.max_members = max_members
        self.channel = f"{{{prefix}}}:bump"
        self._entry_prefix = f"{{{prefix}}}:e:"
        self._group_prefix = f"{{{prefix}}}:v:"
        self._seq_key = f"{{{prefix}}}:seq"
        self._entry_pattern = f"{{{prefix.translate(_GLOB_SPECIAL)}}}:e:*"
        self._policy_checked = not check_eviction_policy
        self._url = url
        self._client_options: dict[str, Any] = {}
        if url is not None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._client_options = {
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": socket_connect_timeout,
                "retry": Retry(NoBackoff(), 1, supported_errors=(module.ConnectionError,)),
            }
            client = module.Redis.from_url(url, **self._client_options)
        self._owns_clients = url is not None
        self._client = client
        self._scripts: dict[str, Any] | None = None
        if client is not None:
            self._scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
        self._async_client = async_client
        self._async_scripts: dict[str, Any] | None = None
        if async_client is not None:
            self._async_scripts = self._register_async(async_client)
        self._loop_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[redis.asyncio.Redis, dict[str, Any]]
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<RedisBackend prefix={self.prefix!r}>"

    @property
    def sync_client(self) -> redis.Redis | None:
        """The sync client (``None`` when only an asyncio client was given)."""
        return self._client

    # -- plumbing -------------------------------------------------------------------------

    @staticmethod
    def _register_async(client: redis.asyncio.Redis) -> dict[str, Any]:
        return {name: client.register_script(src) for name, src in _SCRIPTS.items()}

    def _target(self) -> tuple[Any, dict[str, Any], bool]:
        """The client to use from here: (client, its scripts, whether it is asyncio)."""
        if in_greenlet():
            if self._async_client is not None:
                assert self._async_scripts is not None
                return self._async_client, self._async_scripts, True
            if self._url is not None:
                loop = asyncio.get_running_loop()
                pair = self._loop_clients.get(loop)
                if pair is None:
                    import redis.asyncio

                    aclient = redis.asyncio.Redis.from_url(self._url, **self._client_options)
                    pair = self._loop_clients[loop] = (aclient, self._register_async(aclient))
                return pair[0], pair[1], True
        if self._client is None:
            raise ConfigurationError(
                "this RedisBackend has only an asyncio client, and was called from sync code "
                "outside SQLAlchemy's greenlet (not from AsyncSession work); give it a sync "
                "client too (client=... or url=...)"
            )
        assert self._scripts is not None
        return self._client, self._scripts, False

    def _call(self, op: Callable[[Any, dict[str, Any]], Any]) -> Any:
        """Run ``op(client, scripts)`` on the right client; Redis errors become ours, here."""
        try:
            client, scripts, is_async = self._target()
            if not self._policy_checked:
                self._check_policy(client, is_async)
            result = op(client, scripts)
            return await_(result) if is_async else result
        except self._redis_errors as exc:
            reason = str(exc).rstrip(".")
            raise CacheBackendError(
                f"Redis cache backend (prefix {self.prefix!r}) failed: "
                f"{type(exc).__name__}: {reason}. The cache falls back to the database "
                "until Redis answers again."
            ) from exc

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self._call(lambda _client, scripts: scripts[name](keys=keys, args=args))

    def _check_policy(self, client: Any, is_async: bool) -> None:
        """Warn (once) about a Redis configuration that would refuse bumps when full."""
        try:
            reply = client.config_get("maxmemory*")
            config = await_(reply) if is_async else reply
        except self._response_error as exc:  # CONFIG disabled or not permitted: skip it
            logger.debug("cannot read Redis maxmemory settings: %s", exc)
            self._policy_checked = True
            return
        self._policy_checked = True
        settings = {_text(k): _text(v) for k, v in config.items()}
        policy = settings.get("maxmemory-policy", "")
        if policy == "noeviction" and settings.get("maxmemory", "0") != "0":
            logger.warning(
                "Redis has maxmemory %s with maxmemory-policy noeviction: once it is full it "
                "refuses every write, including the version bumps that invalidate cached "
                "results, and the cache (prefix %r) falls back to the database. Prefer an "
                "allkeys-lru or volatile-lru policy; ormtune's versions stay correct under "
                "eviction.",
                settings.get("maxmemory"),
                self.prefix,
            )

    def _keys(self, key: str, tokens: Sequence[Token]) -> tuple[list[str], list[str]]:
        group_prefix = self._group_prefix
        keys = [self._entry_prefix + key, self._seq_key]
        keys += [group_prefix + group for group, _ in tokens]
        return keys, [member for _, member in tokens]

    # -- the CacheBackend protocol --------------------------------------------------------

    def lookup_raw(
        self, key: str, tokens: Sequence[Token], known: str = ""
    ) -> tuple[int, bytes | None, tuple[Version, ...], float | None]:
        """One lookup round trip: (status, value, versions, seconds the entry has left).

        The seconds left are ``None`` for an entry without expiry, and may be 0.

        ``known`` is the header of a copy the caller holds; if it is still current the status
        is ``KNOWN`` and the value is not sent. Used by the two-tier backend.
        """
        keys, members = self._keys(key, tokens)
        return _lookup_reply(self._run("lookup", keys, [known, *members]))

    def lookup(self, key: str, tokens: Sequence[Token], /) -> Lookup:
        """The entry under ``key`` if stored with the current versions of ``tokens``."""
        _, value, versions, _ = self.lookup_raw(key, tokens)
        return Lookup(value, versions)

    def lookup_many(self, requests: Sequence[tuple[str, Sequence[Token]]], /) -> list[Lookup]:
        """:meth:`lookup` for each ``(key, tokens)``, in order, in one round trip (a pipeline
        of ``EVALSHA``s of the lookup script; each lookup is atomic on its own, not with the
        others). If Redis has lost the script, the lookups run one by one, which reloads it."""
        calls = [self._keys(key, tokens) for key, tokens in requests]

        def op(client: Any, scripts: dict[str, Any]) -> Any:
            # EVALSHA directly: redis-py's scripts in a pipeline add a SCRIPT EXISTS round trip
            sha = scripts["lookup"].sha
            pipe = client.pipeline(transaction=False)
            for keys, members in calls:
                pipe.evalsha(sha, len(keys), *keys, "", *members)
            return pipe.execute(raise_on_error=False)

        replies = self._call(op)
        if any(isinstance(reply, Exception) for reply in replies):
            if not all(isinstance(reply, self._no_script) for reply in replies):
                failed = next(r for r in replies if isinstance(r, Exception))
                self._call(lambda _client, _scripts: _raise(failed))
            return [self.lookup(key, tokens) for key, tokens in requests]
        found = []
        for reply in replies:
            _, value, versions, _ = _lookup_reply(reply)
            found.append(Lookup(value, versions))
        return found

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
        """Store ``value`` if ``tokens`` still have ``versions`` (checked in Redis, atomically)."""
        check_ttl(ttl)
        if len(versions) != len(tokens):
            raise ConfigurationError(
                f"store() got {len(tokens)} tokens but {len(versions)} versions"
            )
        keys, members = self._keys(key, tokens)
        ttl_ms = "0" if ttl is None else str(max(1, math.ceil(ttl * 1000)))
        reply = self._run("store", keys, [header(versions), value, ttl_ms, *members])
        return int(reply) == 1

    def versions(self, tokens: Sequence[Token], /) -> tuple[Version, ...]:
        """The current version of each token, in order (one round trip)."""
        keys, members = self._keys("", tokens)
        return _versions(self._run("versions", keys, ["", *members]), 0)

    def bump_raw(self, tokens: Collection[Token]) -> set[str]:
        """Bump ``tokens``; returns the groups that were reset (every member moved)."""
        if not tokens:
            return set()
        ordered = list(tokens)
        keys, members = self._keys("", ordered)
        message = json.dumps(ordered, separators=(",", ":"))
        reply = self._run("bump", keys, [self.max_members, self.channel, message, *members])
        return {ordered[int(i) - 1][0] for i in reply}

    def bump(self, tokens: Collection[Token], /) -> None:
        """Give every token a new version in one atomic script, and publish the bump."""
        self.bump_raw(tokens)

    def delete(self, key: str, /) -> None:
        """Drop one entry, if present."""
        full = self._entry_prefix + key
        self._call(lambda client, _scripts: client.unlink(full))

    def clear(self) -> None:
        """Drop every entry under the prefix (SCAN in batches); versions stay."""
        cursor = "0"
        while True:
            cursor = _text(self._run("clear", [], [cursor, self._entry_pattern]))
            if cursor == "0":
                return

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the sync client if this backend built it (from ``url``)."""
        if self._owns_clients and self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Close the asyncio client this backend built for the running event loop, if any."""
        pair = self._loop_clients.pop(asyncio.get_running_loop(), None)
        if pair is not None:
            await pair[0].aclose()

    def __enter__(self) -> RedisBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _versions(reply: list[Any], start: int) -> tuple[Version, ...]:
    return tuple(
        int(reply[i]) << COUNTER_BITS | int(reply[i + 1]) for i in range(start, len(reply), 2)
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
