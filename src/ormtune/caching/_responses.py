"""``ResponseCache``: whole HTTP responses cached until a row they were built from changes.

Pure ASGI middleware (FastAPI, Starlette, Litestar, any ASGI 3 app), in front of the routing:
a hit answers a ``GET`` without running the application at all. Only routes listed with
:class:`CachedRoute` are cached, and only ``200`` responses built entirely from statements the
query cache answered (``ormtune.cache()`` on the route's queries): the versions each of those
statements was read at are the response's snapshot (:mod:`._snapshots`), and the entry is
stored with compare-and-set against it and served only while every one of them is current.
So a response is never older than the last commit of anything it read, in this process or
any other that shares the backend. A response that ran any other statement (an uncached
query, a write) is not stored.

Who may see a cached response: with ``identify=``, the application resolves the request's
credentials (``identity_headers``, the ``Authorization`` header by default) to an
:class:`Identity`. That resolution is cached the same way (so a revoked token stops matching
when its row changes) and its ``expires_at`` is checked on every hit. A request without an
identity goes to the application, which answers it (a 401, typically). A ``private`` route's
entries are per caller (keyed by the credentials they were built for, and served only while
those still resolve); the others are shared by every identified caller, so list a route as
shared only if its ``200`` body is the same whoever asks.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.util import greenlet_spawn

from ormtune.caching._cache import active_cache
from ormtune.caching._option import check_ttl
from ormtune.caching._snapshots import collecting
from ormtune.exceptions import CacheBackendError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence

    from ormtune.caching._cache import QueryCache
    from ormtune.caching._snapshots import Snapshots
    from ormtune.typing import CacheBackend, Token

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

__all__ = ["CachedRoute", "Identity", "ResponseCache"]

HIT_HEADER = b"x-ormtune-cache"
_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")
_DROPPED_HEADERS = frozenset({b"date", b"server", b"x-request-id", b"server-timing"})
_REMEMBERED_KEYS = 20_000


@dataclass(frozen=True, slots=True)
class CachedRoute:
    """A ``GET`` route whose responses are cached: ``path`` is its template, as the framework
    writes it (``"/profiles/{user_id}"``; ``{name:path}`` matches across slashes). ``private``:
    one entry per caller (the caller's own data, keyed by their credentials). ``ttl`` in
    seconds (default: the query cache's ``default_ttl``); ``name`` groups statistics (default:
    ``"GET <path>"``)."""

    path: str
    ttl: float | None = None
    private: bool = False
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request's credentials stand for: ``principal`` (a user id, say) and, if they
    expire, ``expires_at`` in POSIX seconds."""

    principal: str
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class _Route:
    pattern: re.Pattern[str]
    ttl: float | None
    private: bool
    name: str


def _compile(route: CachedRoute) -> _Route:
    if not isinstance(route, CachedRoute):
        raise TypeError(f"routes must be CachedRoute objects, not {route!r}")
    if not route.path.startswith("/"):
        raise ConfigurationError(f"a route path must start with '/', not {route.path!r}")
    pattern, end = [], 0
    for match in _PARAMETER.finditer(route.path):
        pattern.append(re.escape(route.path[end : match.start()]))
        pattern.append(".+" if match.group(2) else "[^/]+")
        end = match.end()
    pattern.append(re.escape(route.path[end:]))
    rest = _PARAMETER.sub("", route.path)
    if "{" in rest or "}" in rest:
        raise ConfigurationError(f"malformed parameter in route path {route.path!r}")
    return _Route(
        re.compile("".join(pattern)),
        check_ttl(route.ttl),
        bool(route.private),
        route.name or f"GET {route.path}",
    )


class _Directory:
    """Which tokens the entry behind a request key depends on.

    A response's dependencies are known only once it has been built, so each stored entry
    leaves its token list under an index key (no dependencies of its own: a hint), and the
    entry's own key names the list. A process remembers the lists it has seen; a list that is
    out of date only makes the lookup miss, and the refill records the new one.
    """

    def __init__(self) -> None:
        self._known: OrderedDict[str, tuple[Token, ...]] = OrderedDict()

    def remember(self, base: str, tokens: tuple[Token, ...]) -> None:
        known = self._known
        known[base] = tokens
        known.move_to_end(base)
        while len(known) > _REMEMBERED_KEYS:
            known.popitem(last=False)

    async def lookup(self, cache: QueryCache, bases: list[str]) -> list[bytes | None]:
        """The valid entry behind each base key (``None`` where there is none), in one round
        trip when the token lists are known and the backend can look up several keys at once
        (``RedisBackend.lookup_many``)."""
        return await greenlet_spawn(self._lookup, cache.backend, bases)

    def _lookup(self, backend: CacheBackend, bases: list[str]) -> list[bytes | None]:
        found: list[bytes | None] = [None] * len(bases)
        requests: list[tuple[int, str, tuple[Token, ...]]] = []
        for position, base in enumerate(bases):
            tokens = self._known.get(base)
            if tokens is None:
                index = backend.lookup("x:" + base, ())
                tokens = _decode_tokens(index.value) if index.value is not None else None
                if tokens is None:
                    continue
                self.remember(base, tokens)
            requests.append((position, _entry_key(base, tokens), tokens))
        many = getattr(backend, "lookup_many", None)
        if many is not None and len(requests) > 1:
            lookups = many([(key, tokens) for _, key, tokens in requests])
        else:
            lookups = [backend.lookup(key, tokens) for _, key, tokens in requests]
        for (position, _, _), lookup in zip(requests, lookups, strict=True):
            found[position] = lookup.value
        return found

    async def store(
        self, cache: QueryCache, base: str, value: bytes, snapshots: Snapshots, ttl: float | None
    ) -> bool:
        # Every token, even a table's row tokens beside its table-wide one: each was seen by
        # its own statement at its own time, and only its own version says that statement's
        # rows are still current.
        tokens = tuple(sorted(snapshots.versions))
        versions = [snapshots.versions[token] for token in tokens]
        stored: bool = await greenlet_spawn(
            _store, cache, _entry_key(base, tokens), value, tokens, versions, ttl
        )
        if stored:
            self.remember(base, tokens)
            encoded = json.dumps([list(token) for token in tokens]).encode()
            await greenlet_spawn(_store, cache, "x:" + base, encoded, (), (), ttl)
        return stored


def _store(
    cache: QueryCache,
    key: str,
    value: bytes,
    tokens: Sequence[Token],
    versions: Sequence[int],
    ttl: float | None,
) -> bool:
    return cache.backend.store(key, value, tokens=tokens, versions=versions, ttl=ttl)


def _entry_key(base: str, tokens: tuple[Token, ...]) -> str:
    listed = "\x1e".join(f"{group}\x1f{member}" for group, member in tokens)
    return "r:" + hashlib.sha256(f"{base}\x1d{listed}".encode()).hexdigest()


def _decode_tokens(data: bytes) -> tuple[Token, ...] | None:
    try:
        listed = json.loads(data)
        tokens = tuple((str(group), str(member)) for group, member in listed)
    except (ValueError, TypeError):
        return None
    return tokens


def _encode_response(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, principal: str
) -> bytes:
    listed = [[name.decode("latin-1"), value.decode("latin-1")] for name, value in headers]
    return json.dumps([status, listed, principal]).encode() + b"\n" + body


def _decode_response(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes, str] | None:
    head, newline, body = data.partition(b"\n")
    if not newline:
        return None
    try:
        status, headers, principal = json.loads(head)
        pairs = [(str(n).encode("latin-1"), str(v).encode("latin-1")) for n, v in headers]
    except (ValueError, TypeError):
        return None
    if not isinstance(status, int) or not isinstance(principal, str):
        return None
    return status, pairs, body, principal


class ResponseCache:
    """Cache the ``200`` responses of the listed ``GET`` routes (see the module docstring).

    ``identify`` resolves a request (its ASGI scope) to an :class:`Identity`, or ``None`` when
    its credentials are missing or wrong; required for ``private`` routes, and without it
    every listed route is served to anyone. ``identity_headers`` are the request headers the
    identity depends on (lower case); ``identity_ttl`` bounds how long a resolution is kept
    (also bounded by the identity's ``expires_at``). ``vary`` lists request headers that
    select a different response (``accept-language``, say). ``cache`` defaults to the
    installed query cache at each request; with none installed, requests pass through.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        routes: Iterable[CachedRoute],
        identify: Callable[[Scope], Awaitable[Identity | None]] | None = None,
        identity_headers: Sequence[str] = ("authorization",),
        identity_ttl: float = 300.0,
        vary: Sequence[str] = (),
        cache: QueryCache | None = None,
        max_body_bytes: int = 1 << 20,
    ) -> None:
        self.app = app
        self._routes = [_compile(route) for route in routes]
        if identify is None and any(route.private for route in self._routes):
            raise ConfigurationError("private routes need identify= to know whose they are")
        if max_body_bytes < 1:
            raise ConfigurationError(f"max_body_bytes must be positive, was {max_body_bytes}")
        self._identify = identify
        self._identity_headers = tuple(h.lower().encode("latin-1") for h in identity_headers)
        self._identity_ttl = check_ttl(identity_ttl)
        self._vary = tuple(h.lower().encode("latin-1") for h in vary)
        self._cache = cache
        self._max_body = max_body_bytes
        self._directory = _Directory()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        route = self._route(scope["path"])
        cache = self._cache if self._cache is not None else active_cache()
        if route is None or cache is None:
            await self.app(scope, receive, send)
            return
        headers, repeated = _headers(scope)
        if b"range" in headers or not repeated.isdisjoint(self._identity_headers):
            # a partial response is not the stored one; credentials given twice may be read
            # one way by identify and the other by the application
            await self.app(scope, receive, send)
            return
        credentials = ""
        if self._identify is not None:
            credentials = self._credentials(cache, headers)
            if not credentials:  # none given: the application answers (a 401, typically)
                await self.app(scope, receive, send)
                return
        # A private route's entries are the caller's: keyed by the credentials that built them
        # (served again only to the same credentials, and only while they still resolve).
        base = self._base(cache, route, scope, headers, credentials if route.private else "")
        bases = [credentials, base] if credentials else [base]
        try:
            if cache._recovering():
                found: list[bytes | None] = [None] * len(bases)
            else:
                found = await self._directory.lookup(cache, bases)
        except CacheBackendError as exc:
            cache._failed(route.name, exc)
            await self.app(scope, receive, send)
            return
        principal = ""
        if credentials:
            identity = await self._identity(cache, scope, credentials, found[0])
            if identity is None:
                await self.app(scope, receive, send)
                return
            if route.private:
                principal = identity.principal
        if found[-1] is not None:
            decoded = _decode_response(found[-1])
            # a private entry also names whom it was built for: credentials that now stand for
            # someone else (a re-pointed session, say) do not get it
            if decoded is not None and decoded[3] == principal:
                cache._stats.hit(route.name)
                status, stored_headers, body, _ = decoded
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [*stored_headers, (HIT_HEADER, b"hit")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self._fill(cache, route, base, principal, scope, receive, send)

    def _route(self, path: str) -> _Route | None:
        for route in self._routes:
            if route.pattern.fullmatch(path):
                return route
        return None

    def _base(
        self,
        cache: QueryCache,
        route: _Route,
        scope: Scope,
        headers: dict[bytes, bytes],
        credentials: str,
    ) -> str:
        varied = [headers.get(name, b"").decode("latin-1") for name in self._vary]
        material = "\x1f".join(
            [
                cache.namespace,
                route.name,
                scope.get("root_path", ""),
                scope["path"],
                scope.get("query_string", b"").decode("latin-1"),
                credentials,
                *varied,
            ]
        )
        return hashlib.sha256(material.encode()).hexdigest()

    async def _fill(
        self,
        cache: QueryCache,
        route: _Route,
        base: str,
        principal: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        response = _Response()
        limit = self._max_body

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                # copied now: outer middleware may add per-request headers to this message
                response.status = message["status"]
                response.headers = list(message.get("headers", ()))
            elif message["type"] == "http.response.body" and not response.complete:
                body = message.get("body", b"")
                response.size += len(body)
                if response.size <= limit:
                    response.chunks.append(body)
                response.complete = not message.get("more_body", False)
            await send(message)

        with collecting() as snapshots:
            await self.app(scope, receive, keep)
        cache._stats.miss(route.name)
        reason = _unstorable(response, snapshots, limit)
        if reason is not None:
            cache._stats.reject(route.name, reason)
            return
        assert response.status is not None
        headers = [(n, v) for n, v in response.headers if n.lower() not in _DROPPED_HEADERS]
        value = _encode_response(response.status, headers, b"".join(response.chunks), principal)
        ttl = route.ttl if route.ttl is not None else cache.default_ttl
        try:
            stored = await self._directory.store(cache, base, value, snapshots, ttl)
        except CacheBackendError as exc:
            cache._failed(route.name, exc)
            return
        if not stored:
            cache._stats.reject(route.name, "outdated snapshot")

    def _credentials(self, cache: QueryCache, headers: dict[bytes, bytes]) -> str:
        """The key of the identity the request's credentials resolve to ("" if none given)."""
        presented = [headers.get(name) for name in self._identity_headers]
        if all(value is None for value in presented):
            return ""
        material = "\x1f".join(
            [cache.namespace, "identity", *((v or b"").decode("latin-1") for v in presented)]
        )
        return "id:" + hashlib.sha256(material.encode()).hexdigest()

    async def _identity(
        self, cache: QueryCache, scope: Scope, credentials: str, found: bytes | None
    ) -> Identity | None:
        assert self._identify is not None
        if found is not None:
            identity = _decode_identity(found)
            if identity is not None:
                return identity if _current(identity) else None
        with collecting() as snapshots:
            identity = await self._identify(scope)
        if identity is None or not _current(identity):
            return None
        if snapshots.uncovered is None and snapshots.versions:
            ttl = self._identity_ttl
            if identity.expires_at is not None:
                left = identity.expires_at - time.time()
                ttl = min(ttl, left) if ttl is not None else left
            value = json.dumps([identity.principal, identity.expires_at]).encode()
            try:
                await self._directory.store(cache, credentials, value, snapshots, ttl)
            except CacheBackendError as exc:
                cache._failed("identity", exc)
        return identity


class _Response:
    """What the application sent, as far as a stored copy needs it."""

    __slots__ = ("chunks", "complete", "headers", "size", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False


def _unstorable(response: _Response, snapshots: Snapshots, limit: int) -> str | None:
    if response.status is None:
        return "no response"
    if response.status != 200:
        return f"status {response.status}"
    if not response.complete:
        return "response body not finished (client gone?)"
    for name, value in response.headers:
        name = name.lower()
        if name == b"set-cookie":
            return "response sets a cookie"
        if name == b"cache-control" and b"no-store" in value.lower():
            return "response says no-store"
    if response.size > limit:
        return "response too large"
    if snapshots.uncovered is not None:
        return snapshots.uncovered
    if not snapshots.versions:
        return "response read nothing through the query cache"
    return None


def _current(identity: Identity) -> bool:
    return identity.expires_at is None or identity.expires_at > time.time()


def _decode_identity(data: bytes) -> Identity | None:
    try:
        principal, expires_at = json.loads(data)
    except (ValueError, TypeError):
        return None
    if not isinstance(principal, str) or not (
        expires_at is None or isinstance(expires_at, int | float)
    ):
        return None
    return Identity(principal, expires_at)


def _headers(scope: Scope) -> tuple[dict[bytes, bytes], set[bytes]]:
    """Request headers by lower-case name (a repeated header: its values joined by commas),
    and the names that were repeated."""
    found: dict[bytes, bytes] = {}
    repeated: set[bytes] = set()
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name in found:
            found[name] += b"," + value
            repeated.add(name)
        else:
            found[name] = value
    return found, repeated
