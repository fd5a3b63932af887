"""The query cache: one object that owns a backend, its statistics and SQLAlchemy hooks.

``QueryCache.install()`` registers, on the ``Session`` and ``Engine`` classes:

* a ``do_orm_execute`` hook (``retval=True``) that serves statements carrying
  :class:`~ormtune.caching.CacheOption` from the backend or fills it;
* the write tracking of :mod:`ormtune.caching._writes`, which bumps the tokens of what each
  transaction wrote when it commits;
* a recorder of the statements a fill runs and the objects it loads.

A hit is valid only if every token the entry depends on still has the version it had when the
filling query started (read in the same round trip as the lookup, before the query runs). The
fill stores with compare-and-set against that snapshot, so a commit that lands while a slow
query runs makes its store fail instead of storing old rows as current.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.util.concurrency import in_greenlet

from ormtune.caching import _codec
from ormtune.caching._flight import SingleFlight
from ormtune.caching._materialize import (
    NotFresh,
    PlanMemo,
    mapper_name,
    propagated,
    rebuild,
    serialise,
)
from ormtune.caching._option import CacheOption
from ormtune.caching._recording import (
    fresh_states,
    record_fresh,
    record_statement,
    recorded_statements,
    recording,
)
from ormtune.caching._shape import (
    FineFilter,
    Shape,
    fine_filters,
    make_digest,
    nondeterministic_call,
    option_digest,
    stable_text,
)
from ormtune.caching._snapshots import filling, note_snapshot, note_uncovered
from ormtune.caching._stats import CacheStats, StatsRecorder
from ormtune.caching._tokens import (
    ANY_ROW,
    EVERYTHING,
    UNKNOWN_ROWS,
    commit_counter,
    name_token,
    table_group,
    value_member,
)
from ormtune.caching._writes import Snapshot, WriteTracker, isolation_of
from ormtune.exceptions import CacheBackendError, ConfigurationError
from ormtune.querylog import (
    acts_on_lazy_loads_only,
    analyze,
    fingerprint,
    form_cohort,
    keeping_runs,
    tracking_cohorts,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from sqlalchemy import Table
    from sqlalchemy.engine import FrozenResult, Result
    from sqlalchemy.orm import ORMExecuteState

    from ormtune.typing import CacheBackend, Token

__all__ = ["QueryCache", "active_cache", "default_cache"]

logger = logging.getLogger("ormtune.caching")

_UNNAMED = "(unnamed)"
_REPEATABLE = frozenset({"REPEATABLE READ", "SERIALIZABLE"})
_BACKSLASH_DIALECTS = frozenset({"mysql", "mariadb"})

_active: QueryCache | None = None
_active_lock = threading.Lock()


def active_cache() -> QueryCache | None:
    """The installed :class:`QueryCache`, if any."""
    return _active


def default_cache() -> QueryCache:
    """The installed cache, installing an in-memory one first if there is none.

    ``ormtune.cache()`` calls this, so an application that never configures a cache gets the
    embedded default. Install yours at start-up (``QueryCache(backend=...).install()``),
    before the first transaction that writes, so every commit after it is tracked.
    """
    cache = _active
    if cache is not None:
        return cache
    with _active_lock:
        if _active is None:
            from ormtune.backends import MemoryBackend

            QueryCache(MemoryBackend())._install_locked()
        assert _active is not None
        return _active


class QueryCache:
    """A query-result cache over one :class:`~ormtune.typing.CacheBackend`.

    ``namespace`` and a fingerprint of the mapped tables' columns go into every key, so entries
    written by a deploy whose rows looked different are never read; change ``namespace`` to
    leave every earlier entry behind on purpose.

    ``max_decoded_bytes`` bounds the entries (by their stored size) whose decoded form is kept
    for the next hit on the same bytes; 0 decodes on every hit.
    """

    def __init__(
        self,
        backend: CacheBackend,
        *,
        namespace: str = "ormtune",
        default_ttl: float | None = 300.0,
        max_entry_bytes: int = 1 << 20,
        fine_dependencies: bool = True,
        error_log_interval: float = 30.0,
        single_flight_timeout: float = 30.0,
        max_decoded_bytes: int = 4 << 20,
    ) -> None:
        if max_entry_bytes < 1:
            raise ConfigurationError(f"max_entry_bytes must be positive, was {max_entry_bytes}")
        if max_decoded_bytes < 0:
            raise ConfigurationError(
                f"max_decoded_bytes must be 0 or more, was {max_decoded_bytes}"
            )
        self.backend = backend
        self.namespace = namespace
        self.default_ttl = default_ttl
        self.max_entry_bytes = max_entry_bytes
        self.fine_dependencies = fine_dependencies
        self.error_log_interval = error_log_interval
        self._stats = StatsRecorder()
        self._shapes: dict[tuple[Any, ...], Shape] = {}
        self._binds: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
        self._tracker = WriteTracker(self._bump_after_commit, self._commit_version)
        self._pending_bumps: set[Token] = set()
        self._pending_lock = threading.Lock()
        self._last_error_log = -float("inf")
        self._flights = SingleFlight()
        self._plans = PlanMemo(max_decoded_bytes)
        self._entry_keys: dict[tuple[Any, ...], tuple[Shape, frozenset[str], Any, str]] = {}
        self._entry_keys_lock = threading.Lock()
        self._warned_hooks = False
        self.single_flight_timeout = single_flight_timeout

    # -- installation -----------------------------------------------------------------------

    def install(self) -> QueryCache:
        """Make this the process's cache (replacing any other) and start tracking writes."""
        with _active_lock:
            self._install_locked()
        return self

    def _install_locked(self) -> None:
        global _active
        if _active is not None and _active is not self:
            _active._uninstall_locked()
        self._tracker.install()
        for target, name, fn, kw in self._listeners():
            if event.contains(target, name, fn):
                event.remove(target, name, fn)  # installing again moves the hooks last
            event.listen(target, name, fn, **kw)
        self._warned_hooks = False
        _active = self

    def uninstall(self) -> None:
        """Remove the hooks; cached statements run uncached until a cache is installed."""
        with _active_lock:
            self._uninstall_locked()

    def _uninstall_locked(self) -> None:
        global _active
        for target, name, fn, _ in self._listeners():
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        self._tracker.remove()
        if _active is self:
            _active = None

    def _listeners(self) -> list[tuple[Any, str, Any, dict[str, Any]]]:
        return [
            (Session, "do_orm_execute", self._on_orm_execute, {"retval": True}),
            (Engine, "before_cursor_execute", record_statement, {}),
            (Mapper, "load", record_fresh, {"raw": True}),
        ]

    def __enter__(self) -> QueryCache:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    # -- statistics and invalidation ----------------------------------------------------------

    @property
    def stats(self) -> CacheStats:
        """A snapshot of hits, misses, bypasses, rejected stores, invalidations and errors."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()

    def invalidate(self, *targets: object, tables: Iterable[str | Table] = ()) -> None:
        """Invalidate what ``targets`` name: mapped classes (their tables), ``Table`` objects,
        or cache names (``str``); ``tables=`` takes table names. With nothing given,
        everything. For writes that bypass this application (another service, a console)."""
        tokens: set[Token] = set()
        groups: set[str] = set()
        for target in targets:
            if isinstance(target, str):
                tokens.add(name_token(target))
                self._stats.invalidated(target)
            elif isinstance(target, type) and hasattr(target, "__mapper__"):
                groups |= {table_group(t.name) for t in target.__mapper__.tables}
            elif hasattr(target, "c") and hasattr(target, "name"):
                groups.add(table_group(str(target.name)))
            else:
                raise TypeError(
                    "invalidate() takes mapped classes, Table objects or cache names, "
                    f"but was given {target!r}"
                )
        for table in tables:
            groups.add(table_group(table if isinstance(table, str) else str(table.name)))
        for group in groups:
            tokens |= {(group, ANY_ROW), (group, UNKNOWN_ROWS)}
        if not targets and not tables:
            tokens.add(EVERYTHING)
        self._stats.invalidated(None, len(groups) or 1, tuple(sorted(groups)))
        self._send_bumps(tokens, raise_errors=True)

    # -- backend access -----------------------------------------------------------------------

    def _bump_after_commit(self, tokens: set[Token]) -> None:
        tables = tuple(sorted({group for group, _ in tokens if group != "*"}))
        self._stats.invalidated(None, len(tables), tables)
        self._send_bumps(tokens, raise_errors=False)

    def _send_bumps(self, tokens: set[Token], *, raise_errors: bool) -> None:
        # The lock guards the pending set only, never the backend call: under AsyncSession the
        # call awaits on the event loop (RedisBackend), where another task's commit would
        # block the loop's thread on the lock for good. Pending tokens stay pending until the
        # backend has taken them; two callers sending them both is harmless.
        with self._pending_lock:
            tokens = tokens | self._pending_bumps
        try:
            self.backend.bump(tokens)
        except CacheBackendError as exc:
            # The commit happened; remember what to invalidate and serve nothing from the
            # cache in this process until the backend has taken it.
            with self._pending_lock:
                self._pending_bumps = self._pending_bumps | tokens
            self._failed(None, exc)
            if raise_errors:
                raise
        else:
            if self._pending_bumps:
                with self._pending_lock:
                    self._pending_bumps = self._pending_bumps - tokens

    def _recovering(self) -> bool:
        if not self._pending_bumps:
            return False
        try:
            self._send_bumps(set(), raise_errors=False)
        except CacheBackendError:  # pragma: no cover - not raised with raise_errors=False
            return True
        return bool(self._pending_bumps)

    def _failed(self, name: str | None, exc: CacheBackendError) -> None:
        self._stats.error(name)
        now = time.monotonic()
        if now - self._last_error_log >= self.error_log_interval:
            self._last_error_log = now
            logger.warning(
                "ormtune cache backend failed (%s); queries go to the database until it "
                "answers again (logged at most every %.0f s)",
                exc,
                self.error_log_interval,
            )

    # -- the hook -------------------------------------------------------------------------------

    def _on_orm_execute(self, state: ORMExecuteState) -> Result[Any] | None:
        option = _cache_option(state)
        if option is None or not state.is_select or _loads_for_objects(state):
            return None
        name = option.name or _UNNAMED
        reason = _bypass_reason(state)
        if reason is None and any(
            not acts_on_lazy_loads_only(hook) for hook in state._remaining_events()
        ):
            # A do_orm_execute hook after this one may change the statement (criteria for a
            # tenant, say); a hit would skip it. Install the cache after such hooks.
            reason = "do_orm_execute hooks run after the cache"
            self._warn_hooks_after()
        if reason is not None:
            self._stats.bypass(name, reason)
            return None
        session = state.session
        bind = session.get_bind(**state.bind_arguments)
        engine = bind if isinstance(bind, Engine) else bind.engine
        try:
            cache_key = cast("Any", state.statement)._generate_cache_key()
        except Exception:
            cache_key = None
        if cache_key is None:
            self._stats.bypass(name, "statement has no cache key")
            return None
        translate = self._translate_map(state, session, bind, engine)
        bind_id = self._bind_identity(engine)
        memo_key = (bind_id, _hashable(translate), cache_key.key)
        shape = self._shapes.get(memo_key)
        if shape is None:
            return self._learn(state, name, memo_key, cache_key, engine)
        if shape.uncacheable is not None:
            self._stats.bypass(name, shape.uncacheable)
            return None
        if getattr(state.load_options, "_autoflush", True):
            # A real query autoflushes before it runs (after these hooks); a hit must too, so
            # pending changes are written, and then seen below as this session's writes.
            session._autoflush()
        written = self._tracker.written_groups(session, bind)
        if written and not written.isdisjoint(shape.groups):
            self._stats.bypass(
                name, "session wrote to " + ", ".join(sorted(written & shape.groups))
            )
            return None
        if self._recovering():
            self._stats.bypass(name, "cache backend recovering")
            return None
        found = self._entry_key(shape, state, cache_key, option.name, bind_id, translate)
        if found is None:
            self._stats.bypass(name, "parameters cannot be part of a key")
            return None
        tokens, key = found
        try:
            repeatable = self._repeatable_snapshot(session, bind, engine)
            if repeatable is not None and (
                repeatable.version is None
                or self.backend.versions([commit_counter()])[0] != repeatable.version
            ):
                # REPEATABLE READ: the database answers from the transaction's snapshot; the
                # cache holds the latest commits. They agree only if nothing committed since.
                self._stats.bypass(name, "transaction snapshot is older than the last commit")
                return None
            lookup = self.backend.lookup(key, tokens)
        except CacheBackendError as exc:
            self._failed(name, exc)
            self._stats.bypass(name, "cache backend unavailable")
            return None
        if lookup.value is not None:
            result = self._serve(lookup.value, shape, state, name, key)
            if result is not None:
                note_snapshot(tokens, lookup.versions)
                return result
        if in_greenlet():  # asyncio: waiting here would block the event loop
            return self._fill(state, shape, name, key, tokens, lookup.versions, option)
        if not self._flights.lead_or_wait(key, self.single_flight_timeout):
            # Another thread just filled this key: its entry is likely there now.
            try:
                again = self.backend.lookup(key, tokens)
            except CacheBackendError as exc:
                self._failed(name, exc)
                return None
            if again.value is not None:
                result = self._serve(again.value, shape, state, name, key)
                if result is not None:
                    note_snapshot(tokens, again.versions)
                    return result
            return self._fill(state, shape, name, key, tokens, again.versions, option)
        try:
            return self._fill(state, shape, name, key, tokens, lookup.versions, option)
        finally:
            self._flights.land(key)

    def _serve(
        self, data: bytes, shape: Shape, state: ORMExecuteState, name: str, key: str
    ) -> Result[Any] | None:
        try:
            rows, states = rebuild(
                data, shape, state.session, propagated(state.statement), self._plans
            )
        except _codec.Undecodable:
            self._stats.bypass(name, "undecodable entry")
            try:
                self.backend.delete(key)
            except CacheBackendError as exc:
                self._failed(name, exc)
            return None
        outer = recorded_statements.get()
        if outer is not None:  # an enclosing @cached function depends on these tables too
            outer.extend(shape.statements)
        if states and (keeping_runs() or tracking_cohorts()):
            # N+1 detection and autoload: the hit's objects are peers, as a query's rows are.
            form_cohort(states)
        self._stats.hit(name)
        return shape.frozen.with_new_rows(rows)()

    def _fill(
        self,
        state: ORMExecuteState,
        shape: Shape,
        name: str,
        key: str,
        tokens: Sequence[Token],
        versions: tuple[int, ...],
        option: CacheOption,
    ) -> Result[Any]:
        self._stats.miss(name)
        note_snapshot(tokens, versions)  # the statement reads after the lookup that gave them
        try:
            recorded, fresh, frozen = _run_recorded(state, covered=True)
        except BaseException:
            note_uncovered("a cached statement failed")
            raise
        read = _groups_of(recorded, state)
        if not read <= shape.groups:
            # Data-dependent statements (a subclass table, a secondary) appeared: learn them,
            # and do not store a result whose snapshot did not cover them.
            shape.groups = shape.groups | read
            note_uncovered("a cached statement read tables it had not read before")
            self._stats.reject(name, "statement read tables it had not read before")
            return frozen()
        try:
            data = serialise(list(frozen.data), shape, fresh, propagated(state.statement))
        except NotFresh as exc:
            self._stats.reject(name, str(exc))
            return frozen()
        except _codec.Unencodable as exc:
            self._stats.reject(name, str(exc))
            return frozen()
        if len(data) > self.max_entry_bytes:
            self._stats.reject(name, "result too large")
            return frozen()
        ttl = option.ttl if option.ttl is not None else self.default_ttl
        try:
            stored = self.backend.store(key, data, tokens=tokens, versions=versions, ttl=ttl)
        except CacheBackendError as exc:
            self._failed(name, exc)
            return frozen()
        if not stored:
            self._stats.reject(name, "outdated snapshot")
        return frozen()

    def _learn(
        self,
        state: ORMExecuteState,
        name: str,
        memo_key: tuple[Any, ...],
        cache_key: Any,
        engine: Engine,
    ) -> Result[Any]:
        recorded, _, frozen = _run_recorded(state)
        groups = _groups_of(recorded, state)
        written = self._tracker.written_groups(state.session) & groups
        if written:
            self._stats.bypass(name, "session wrote to " + ", ".join(sorted(written)))
        else:
            self._stats.miss(name)
        statement: Any = state.statement
        main_sql = recorded[0] if recorded else ""
        uncacheable = None
        call = nondeterministic_call(main_sql)
        if call is not None:
            uncacheable = f"non-deterministic function {call}()"
        fine_group: str | None = None
        fine: tuple[FineFilter, ...] = ()
        if self.fine_dependencies and main_sql:
            fine_group, fine = fine_filters(statement, cache_key, main_sql, recorded[1:])
        parts = [
            stable_text(cache_key.key),
            main_sql,
            *sorted({fingerprint(sql) for sql in recorded[1:]}),
            *option_digest(tuple(statement._with_options)),
        ]
        positions = _entity_positions(statement)
        shape = Shape(
            digest=make_digest(parts),
            groups=frozenset(groups),
            fine_group=fine_group,
            fine=fine,
            frozen=frozen,
            entity_positions=positions,
            uncacheable=uncacheable,
            statements=tuple(recorded),
        )
        for description in statement.column_descriptions:
            entity = description.get("entity")
            mapper = getattr(entity, "__mapper__", None) if entity is not None else None
            if mapper is not None:
                self._know_mappers(shape, mapper)
        # Keys also name the mapped schema, so a deploy that changes any column's type (not
        # just the SQL) never reads entries written by the old code.
        shape.digest = make_digest([shape.digest, _schema_fingerprint(shape.mappers)])
        self._shapes[memo_key] = shape
        return frozen()

    def _know_mappers(self, shape: Shape, mapper: Mapper[Any]) -> None:
        for known in mapper.registry.mappers:
            shape.mappers[mapper_name(known)] = known
            self._tracker.know_metadata(cast("Table", known.local_table).metadata)
            for column in known.columns:
                enum_class = getattr(column.type, "enum_class", None)
                if enum_class is not None:
                    _codec.register_enum(enum_class)

    # -- keys and tokens --------------------------------------------------------------------

    def _bind_identity(self, engine: Engine) -> str:
        """Names the database, the same in every process that reaches it; an in-memory
        SQLite database exists in one engine only, so it is named by that engine."""
        found = self._binds.get(engine)
        if found is None:
            url = engine.url
            database = url.database or ""
            if url.get_backend_name() == "sqlite" and database in ("", ":memory:"):
                database = f":memory:{id(engine)}"
            found = self._binds[engine] = (
                f"{url.get_backend_name()}://{url.username or ''}@{url.host or ''}:"
                f"{url.port or ''}/{database}"
            )
        return found

    def _translate_map(
        self, state: ORMExecuteState, session: Session, bind: Any, engine: Engine
    ) -> Any:
        """The schema translate map the statement will run with: the statement's, else the
        session connection's, else the bind's (an engine made with execution_options())."""
        found = state.execution_options.get("schema_translate_map")
        if found is None:
            conn = self._tracker.connection_for(session, engine)
            source = conn if conn is not None else bind
            found = source.get_execution_options().get("schema_translate_map")
        return found

    def _warn_hooks_after(self) -> None:
        if not self._warned_hooks:
            self._warned_hooks = True
            logger.warning(
                "ormtune cache: another do_orm_execute hook was registered after the cache, "
                "so cached statements run uncached; call QueryCache.install() after "
                "registering such hooks (soft delete, tenancy filters) to put it last"
            )

    def _entry_key(
        self,
        shape: Shape,
        state: ORMExecuteState,
        cache_key: Any,
        name: str | None,
        bind_id: str,
        translate: Any,
    ) -> tuple[Sequence[Token], str] | None:
        """The tokens an entry of ``shape`` with this execution's parameters depends on, and
        its key; ``None`` when a parameter value has no stable text form.

        Both are a function of the shape (its bind and translate map included), its groups,
        the cache name and the parameter values, so they are remembered per shape for values
        whose equality is exact (see :func:`_exact_values`) and derived again otherwise.
        """
        values, extra = _parameter_values(state, cache_key)
        exact = _exact_values(values, extra)
        if exact is not None:
            memo_key = (id(shape), self.namespace, name, exact)
            known = self._entry_keys.get(memo_key)
            if known is not None and known[0] is shape and known[1] is shape.groups:
                return known[2], known[3]
        tokens = self._tokens(shape, values, name)
        key = self._key(bind_id, translate, shape, [values, extra])
        if key is None:
            return None
        if exact is not None:
            with self._entry_keys_lock:
                memo = self._entry_keys
                if len(memo) >= _ENTRY_KEYS and memo_key not in memo:
                    del memo[next(iter(memo))]  # the oldest; a bound, not a policy
                memo[memo_key] = (shape, shape.groups, tokens, key)
        return tokens, key

    def _tokens(self, shape: Shape, values: list[Any], name: str | None) -> tuple[Token, ...]:
        tokens: list[Token] = []
        fine_members: list[str] | None = None
        if shape.fine:
            fine_members = []
            for fine in shape.fine:
                value = values[fine.bind_index] if fine.bind_index < len(values) else None
                items = value if isinstance(value, list | tuple) else [value]
                for item in items:
                    member = value_member(fine.column, item)
                    if member is None:
                        fine_members = None
                        break
                    fine_members.append(member)
                if fine_members is None:
                    break
        for group in sorted(shape.groups):
            if fine_members is not None and group == shape.fine_group:
                tokens.append((group, UNKNOWN_ROWS))
                tokens += [(group, member) for member in sorted(set(fine_members))]
            else:
                tokens.append((group, ANY_ROW))
        tokens.append(EVERYTHING)
        if name is not None:
            tokens.append(name_token(name))
        return tuple(tokens)

    def _key(self, bind_id: str, translate: Any, shape: Shape, values: list[Any]) -> str | None:
        """The entry's key, or ``None`` when a parameter value has no stable text form."""
        try:
            encoded = _codec.encode_key_part(values)
        except _codec.Unencodable:
            return None
        material = "\x1f".join(
            (self.namespace, bind_id, repr(_hashable(translate)), shape.digest, encoded)
        )
        return "q:" + hashlib.sha256(material.encode()).hexdigest()

    def _repeatable_snapshot(self, session: Session, bind: Any, engine: Engine) -> Snapshot | None:
        """Under REPEATABLE READ/SERIALIZABLE: the commit counter when the session's
        transaction on ``engine`` began (its snapshot), else ``None``."""
        conn = self._tracker.connection_for(session, engine)
        if conn is None and isinstance(bind, Connection) and bind.in_transaction():
            conn = bind  # a session bound to a Connection joins its transaction (and snapshot)
        if conn is None:
            return None  # no transaction yet: the next statement sees the latest commits
        if isolation_of(conn) not in _REPEATABLE:
            return None
        return self._tracker.snapshot_of(conn)

    def _commit_version(self) -> int | None:
        try:
            return self.backend.versions([commit_counter()])[0]
        except CacheBackendError as exc:
            self._failed(None, exc)
            return None


def _cache_option(state: ORMExecuteState) -> CacheOption | None:
    for option in state.user_defined_options:
        if isinstance(option, CacheOption):
            return option
    return None


def _loads_for_objects(state: ORMExecuteState) -> bool:
    """Statements that carry the option because objects of a cached statement do, and that
    the cache leaves alone: SQLAlchemy's relationship loads, refreshes of expired attributes,
    and statements that re-select objects already in the session (an autoload batch marks
    them ``reselects_loaded_objects``), whose results are never stored."""
    if state.is_relationship_load:
        return True
    if getattr(state.load_options, "_refresh_state", None) is not None:
        return True
    return any(
        getattr(opt, "reselects_loaded_objects", False) for opt in state.user_defined_options
    )


def _bypass_reason(state: ORMExecuteState) -> str | None:
    options = state.execution_options
    load_options = state.load_options
    if options.get("populate_existing") or getattr(load_options, "_populate_existing", False):
        return "populate_existing"
    if getattr(state.statement, "_for_update_arg", None) is not None:
        return "with_for_update"
    if (
        options.get("yield_per")
        or options.get("stream_results")
        or getattr(load_options, "_yield_per", None)
    ):
        return "yield_per / streaming"
    if not getattr(state.statement, "_propagate_attrs", {}).get("compile_state_plugin"):
        return "not an ORM statement"
    return None


def _parameter_values(state: ORMExecuteState, cache_key: Any) -> tuple[list[Any], list[Any]]:
    """The statement's bound values in cache-key order (an execution parameter of the same
    name overrides a bound value), and the execution parameters no bound value names."""
    parameters: Any = state.parameters or {}
    mapping = dict(getattr(cache_key, "params", None) or {})  # Executable.params()
    if isinstance(parameters, dict):
        mapping.update(parameters)
    bindparams = cache_key.bindparams
    values = [mapping.get(bind.key, bind.effective_value) for bind in bindparams]
    extra: list[Any] = []
    if mapping:
        bound = {b.key for b in bindparams}
        extra = [(k, v) for k, v in sorted(mapping.items()) if k not in bound]
    if not isinstance(parameters, dict):
        extra.append(parameters)
    return values, extra


# Types whose ``==`` implies the same encoded text (so the same entry key), as long as the
# type is part of the comparison: not float (-0.0 == 0.0), Decimal (1.0 == 1.00) or datetime
# (equal instants in different time zones), whose keys are always derived afresh.
_EXACT: frozenset[type] = frozenset({int, str, bool, type(None), uuid.UUID})
_ENTRY_KEYS = 16_384


def _exact_values(values: list[Any], extra: list[Any]) -> tuple[Any, ...] | None:
    """A hashable form of the parameter values that equals another one only if every value
    has the same type and an equal value, so both give one key; ``None`` when a value is of
    another type (its key is derived on every execution)."""
    out: list[Any] = [len(values)]
    for value in values:
        if not _exact(value, out):
            return None
    for item in extra:
        if type(item) is not tuple or type(item[0]) is not str or not _exact(item[1], out):
            return None
        out.append(item[0])
    return tuple(out)


def _exact(value: Any, out: list[Any]) -> bool:
    kind = type(value)
    if kind in _EXACT:
        out.append(kind)
        out.append(value)
        return True
    if kind is list or kind is tuple:
        out.append(kind)
        out.append(len(value))
        return all(_exact(item, out) for item in value)
    return False


def _hashable(value: Any) -> Any:
    # Keys by repr(), not str(): a schema_translate_map maps the schema None, and {None: "a"}
    # and {"None": "a"} are different maps that must never share an entry.
    if isinstance(value, dict):
        return tuple(sorted((repr(k), _hashable(v)) for k, v in value.items()))
    return value


def _run_recorded(
    state: ORMExecuteState, *, covered: bool = False
) -> tuple[list[str], set[int], FrozenResult[Any]]:
    """Run the statement, recording what it sends and loads; rows are fetched (objects
    loaded, eager loads run) while freezing, so inside the recording window. ``covered``: a
    fill, whose statements read after its snapshot (see :mod:`._snapshots`)."""
    fresh: set[int] = set()
    fresh_token = fresh_states.set(fresh)
    filling_token = filling.set(covered)
    try:
        with recording() as recorded:
            return recorded, fresh, state.invoke_statement().freeze()
    finally:
        filling.reset(filling_token)
        fresh_states.reset(fresh_token)


def _groups_of(recorded: list[str], state: ORMExecuteState) -> set[str]:
    bind = state.session.get_bind(**state.bind_arguments)
    backslash = bind.dialect.name in _BACKSLASH_DIALECTS
    groups: set[str] = set()
    for sql in recorded:
        groups |= {table_group(t) for t in analyze(sql, backslash).tables}
    return groups


_schema_fingerprints: dict[frozenset[str], str] = {}


def _schema_fingerprint(mappers: dict[str, Mapper[Any]]) -> str:
    """A digest of the columns (names and types) of the tables behind ``mappers``."""
    names = frozenset(mappers)
    found = _schema_fingerprints.get(names)
    if found is None:
        columns = sorted(
            f"{mapper.local_table.description}.{column.key}:{column.type!r}"
            for mapper in mappers.values()
            for column in mapper.local_table.columns
        )
        found = _schema_fingerprints[names] = make_digest(columns)
    return found


def _entity_positions(statement: Any) -> tuple[int, ...]:
    """Columns of the result that hold ORM entities (the rest are plain values)."""
    positions = []
    for index, description in enumerate(statement.column_descriptions):
        kind = description.get("type")
        if isinstance(kind, type) and getattr(kind, "_sa_class_manager", None) is not None:
            positions.append(index)
    return tuple(positions)
