"""Which tables each transaction wrote, and bumping their tokens when it commits.

Writes are read where every write path meets: the statement text each connection sends
(``after_cursor_execute``), so ORM flushes, ORM bulk ``update()``/``delete()``, Core DML,
``text()``/``exec_driver_sql()`` and ``TRUNCATE`` are all seen. An ORM flush adds what
only it knows, the rows it wrote, so their tokens can be fine (``user_id=7``) instead of
table-wide. Tokens wait per connection, per savepoint level:

* released savepoint: its tokens join the enclosing level; rolled back: they are dropped;
* rollback: everything is dropped;
* commit through a ``Session``: bumped in ``after_commit``, after the database committed and
  before ``commit()`` returns, so a read that starts after ``commit()`` returned cannot see an
  entry filled before it;
* commit of a Core connection outside a ``Session``: SQLAlchemy has no event after the
  database commit, so tokens are bumped just before it and again when the connection begins
  its next transaction or goes back to the pool (``engine.begin()`` blocks do both before they
  return);
* AUTOCOMMIT connections: bumped right after each statement.

Foreign keys with ``ON DELETE``/``ON UPDATE`` actions are followed from table metadata, so a
cascade's targets are bumped with the table written.
"""

from __future__ import annotations

import re
import threading
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, MetaData, event
from sqlalchemy.orm import Session, attributes
from sqlalchemy.pool import Pool

from ormtune.caching._tokens import (
    ANY_ROW,
    EVERYTHING,
    UNKNOWN_ROWS,
    commit_counter,
    table_group,
    tracked_columns,
    value_member,
)
from ormtune.querylog import StatementKind, analyze

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
    from sqlalchemy.orm import InstanceState, UOWTransaction

    from ormtune.typing import Token

__all__ = ["Snapshot", "WriteTracker", "isolation_of"]

_AWAITING = "_ormtune_cache_after_commit"  # in connection.info: tokens to bump once more
_SESSION_CONNECTIONS = "_ormtune_cache_connections"
_FLUSHING = "_ormtune_cache_flushing"
_BACKSLASH_DIALECTS = frozenset({"mysql", "mariadb"})
# Statements that never write (transaction control, settings, introspection).
_HARMLESS = frozenset(
    {
        "savepoint", "release", "rollback", "begin", "commit", "start", "set", "show",
        "pragma", "explain", "describe", "desc", "analyze", "vacuum", "listen", "notify",
        "unlisten", "discard", "reset", "use", "prepare", "deallocate", "xa", "checkpoint",
        "select", "values", "fetch", "close", "declare", "move", "with",
    }
)  # fmt: skip
_CASCADING_ACTIONS = frozenset({"CASCADE", "SET NULL", "SET DEFAULT"})


_REPEATABLE = frozenset({"REPEATABLE READ", "SERIALIZABLE"})


class Snapshot:
    """The commit counter's version when a REPEATABLE READ / SERIALIZABLE transaction began;
    ``None`` when it could not be read (then nothing is served or filled in it)."""

    __slots__ = ("version",)

    def __init__(self, version: int | None) -> None:
        self.version = version


class _Transaction:
    """Tokens one connection's transaction will bump, per savepoint level."""

    __slots__ = ("flush_groups", "fresh", "levels", "session", "snapshot", "written")

    def __init__(self) -> None:
        self.levels: list[tuple[str | None, set[Token]]] = [(None, set())]
        self.written: set[str] = set()  # groups written: this session reads them from the db
        self.flush_groups: set[str] = set()
        self.session: weakref.ref[Session] | None = None
        self.snapshot: Snapshot | None = None
        self.fresh = False  # begun, and no statement sent yet (its snapshot is not fixed)

    def add(self, tokens: Iterable[Token]) -> None:
        self.levels[-1][1].update(tokens)

    def all_tokens(self) -> set[Token]:
        tokens: set[Token] = set()
        for _, level in self.levels:
            tokens |= level
        return tokens


def _written_tokens(groups: Iterable[str]) -> set[Token]:
    tokens: set[Token] = set()
    for group in groups:
        tokens.add((group, ANY_ROW))
        tokens.add((group, UNKNOWN_ROWS))
    return tokens


class WriteTracker:
    """Engine, pool and session listeners that turn committed writes into token bumps.

    ``bump`` is called with the tokens of each commit (after the database committed); it is
    the cache's job to send them to the backend and to survive its failures.
    """

    def __init__(
        self, bump: Callable[[set[Token]], None], read_commits: Callable[[], int | None]
    ) -> None:
        self._bump = bump
        self._read_commits = read_commits
        self._transactions: weakref.WeakKeyDictionary[Connection, _Transaction] = (
            weakref.WeakKeyDictionary()
        )
        self._metadatas: weakref.WeakSet[MetaData] = weakref.WeakSet()
        self._cascades: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = [
            (Engine, "after_cursor_execute", self._after_cursor_execute),
            (Engine, "begin", self._begin),
            (Engine, "commit", self._commit),
            (Engine, "commit_twophase", self._commit_twophase),
            (Engine, "rollback", self._rollback),
            (Engine, "rollback_twophase", self._rollback_twophase),
            (Engine, "savepoint", self._savepoint),
            (Engine, "rollback_savepoint", self._rollback_savepoint),
            (Engine, "release_savepoint", self._release_savepoint),
            (Pool, "checkin", self._checkin),
            (Session, "after_begin", self._session_begin),
            (Session, "before_flush", self._before_flush),
            (Session, "after_flush", self._after_flush),
            (Session, "after_commit", self._session_commit),
            (Session, "after_rollback", self._session_rollback),
            (Session, "after_transaction_end", self._session_transaction_end),
        ]

    # -- installation -----------------------------------------------------------------------

    def install(self) -> None:
        for target, name, fn in self._listeners:
            if not event.contains(target, name, fn):
                event.listen(target, name, fn)

    def remove(self) -> None:
        for target, name, fn in self._listeners:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)

    def know_metadata(self, metadata: MetaData) -> None:
        """Learn the foreign keys of ``metadata``, to follow ON DELETE/UPDATE cascades."""
        if metadata not in self._metadatas:
            with self._lock:
                self._metadatas.add(metadata)
                self._cascades.clear()

    # -- what a session has written -----------------------------------------------------------

    def written_groups(self, session: Session, bind: object = None) -> set[str]:
        """Tables this session wrote in its current transaction (it must read them from the
        database until it commits or rolls back); with ``bind``, a Connection the session is
        bound to, also what that connection's transaction wrote before the session joined."""
        connections = list(session.info.get(_SESSION_CONNECTIONS, ()))
        if isinstance(bind, Connection) and bind not in connections:
            connections.append(bind)
        if not connections:
            return set()
        groups: set[str] = set()
        for connection in connections:
            transaction = self._transactions.get(connection)
            if transaction is not None:
                groups |= transaction.written
        return groups

    def connection_for(self, session: Session, engine: Engine) -> Connection | None:
        """The connection of ``session``'s current transaction on ``engine``, if it has one."""
        connections: list[Connection] = session.info.get(_SESSION_CONNECTIONS, [])
        for conn in connections:
            same = conn.engine is engine or conn.engine.url == engine.url
            if same and not conn.closed and conn.in_transaction():
                return conn
        return None

    def repeatable_snapshots(self, session: Session) -> list[Snapshot]:
        """The snapshots of ``session``'s REPEATABLE READ / SERIALIZABLE transactions that
        have run statements (fixed, and perhaps older than the cache)."""
        found = []
        connections: list[Connection] = session.info.get(_SESSION_CONNECTIONS, [])
        for conn in connections:
            if not conn.closed and conn.in_transaction() and isolation_of(conn) in _REPEATABLE:
                state = self._transactions.get(conn)
                if state is None or not state.fresh:
                    found.append(self.snapshot_of(conn))
        return found

    def snapshot_of(self, conn: Connection) -> Snapshot:
        """The snapshot taken when ``conn``'s transaction began (see :class:`Snapshot`)."""
        transaction = self._transactions.get(conn)
        if transaction is None or transaction.snapshot is None:
            return Snapshot(None)
        return transaction.snapshot

    # -- statements ---------------------------------------------------------------------------

    def _transaction(self, conn: Connection) -> _Transaction:
        transaction = self._transactions.get(conn)
        if transaction is None:
            transaction = self._transactions[conn] = _Transaction()
        return transaction

    def _after_cursor_execute(
        self,
        conn: Connection,
        cursor: DBAPICursor,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        current = self._transactions.get(conn)
        if current is not None:
            current.fresh = False
        info = analyze(statement, conn.dialect.name in _BACKSLASH_DIALECTS)
        kind = info.kind
        if kind is StatementKind.SELECT:
            if not _modifying_cte(info.fingerprint):
                return
        elif kind is StatementKind.OTHER:
            first = info.fingerprint.split(" ", 1)[0].lower()
            if first in _HARMLESS:
                return
        groups = {table_group(name) for name in info.tables}
        if kind is StatementKind.OTHER or (kind is StatementKind.DDL and not groups):
            tokens: set[Token] = {EVERYTHING}
        else:
            if kind is not StatementKind.INSERT or _replaces_rows(info.fingerprint):
                groups |= self._cascade_targets(groups)
            tokens = set()
        if _is_autocommit(conn):
            self._bump(tokens | _written_tokens(groups) | {commit_counter()})
            return
        transaction = self._transaction(conn)
        transaction.written |= groups
        session = transaction.session() if transaction.session is not None else None
        if (
            session is not None
            and session.info.get(_FLUSHING)
            and kind in (StatementKind.INSERT, StatementKind.UPDATE, StatementKind.DELETE)
            and _from_unit_of_work(context)
        ):
            # The flush knows which rows these were; after_flush decides fine or table-wide.
            transaction.flush_groups |= groups
            transaction.add(tokens)
            return
        transaction.add(tokens | _written_tokens(groups))

    def _cascade_targets(self, groups: set[str]) -> set[str]:
        targets: set[str] = set()
        for group in groups:
            targets |= self._cascades_of(group)
        return targets

    def _cascades_of(self, group: str) -> frozenset[str]:
        found = self._cascades.get(group)
        if found is not None:
            return found
        with self._lock:
            edges: dict[str, set[str]] = {}
            for metadata in list(self._metadatas):
                for table in metadata.tables.values():
                    for fk in table.foreign_keys:
                        actions = {(fk.ondelete or "").upper(), (fk.onupdate or "").upper()}
                        if actions & _CASCADING_ACTIONS:
                            parent = table_group(fk.target_fullname.rsplit(".", 1)[0])
                            edges.setdefault(parent, set()).add(table_group(table.name))
            reached: set[str] = set()
            todo = [group]
            while todo:
                for child in edges.get(todo.pop(), ()):
                    if child not in reached:
                        reached.add(child)
                        todo.append(child)
            found = self._cascades[group] = frozenset(reached - {group})
        return found

    # -- connection transactions --------------------------------------------------------------

    def _begin(self, conn: Connection) -> None:
        self._after_core_commit(conn.info)
        state = self._transactions[conn] = _Transaction()
        state.fresh = True

    def _commit(self, conn: Connection) -> None:
        transaction = self._transactions.get(conn)
        if transaction is None or transaction.session is not None:
            return  # nothing written, or a session's: bumped in after_commit
        del self._transactions[conn]
        tokens = transaction.all_tokens()
        if tokens:
            tokens.add(commit_counter())
            self._bump(tokens)  # before the database commits: entries filled earlier go now
            conn.info[_AWAITING] = tokens  # and once more after it, when we next see conn

    def _commit_twophase(self, conn: Connection, xid: object, is_prepared: bool) -> None:
        self._commit(conn)

    def _rollback_twophase(self, conn: Connection, xid: object, is_prepared: bool) -> None:
        self._rollback(conn)

    def _checkin(self, dbapi_connection: object, connection_record: Any) -> None:
        info = getattr(connection_record, "info", None)
        if info is not None:
            self._after_core_commit(info)

    def _after_core_commit(self, info: dict[Any, Any]) -> None:
        tokens = info.pop(_AWAITING, None)
        if tokens:
            self._bump(tokens)

    def _rollback(self, conn: Connection) -> None:
        self._transactions.pop(conn, None)

    def _savepoint(self, conn: Connection, name: str) -> None:
        self._transaction(conn).levels.append((name, set()))

    def _rollback_savepoint(self, conn: Connection, name: str, context: object) -> None:
        transaction = self._transactions.get(conn)
        if transaction is None:
            return
        levels = transaction.levels
        while len(levels) > 1:
            level_name, _ = levels.pop()
            if level_name == name:
                break

    def _release_savepoint(self, conn: Connection, name: str, context: object) -> None:
        transaction = self._transactions.get(conn)
        if transaction is None:
            return
        levels = transaction.levels
        while len(levels) > 1:
            level_name, tokens = levels.pop()
            levels[-1][1].update(tokens)
            if level_name == name:
                break

    # -- sessions -----------------------------------------------------------------------------

    def _session_begin(self, session: Session, transaction: object, conn: Connection) -> None:
        state = self._transaction(conn)
        state.session = weakref.ref(session)
        if isolation_of(conn) in _REPEATABLE:
            # Before the transaction's first statement fixes its snapshot: any commit after
            # this moves the counter, and the cache then stays out of this transaction. A
            # connection that already ran statements (a session joining an outer transaction)
            # has an older snapshot nobody recorded: nothing is served or filled in it.
            state.snapshot = Snapshot(self._read_commits() if state.fresh else None)
        session.info.setdefault(_SESSION_CONNECTIONS, []).append(conn)

    def _before_flush(self, session: Session, flush_context: object, instances: object) -> None:
        session.info[_FLUSHING] = True

    def _after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        session.info.pop(_FLUSHING, None)
        transactions = [
            t
            for conn in session.info.get(_SESSION_CONNECTIONS, ())
            if (t := self._transactions.get(conn)) is not None and t.flush_groups
        ]
        if not transactions:
            return
        known, unknown, changed = _rows_written(session)
        for transaction in transactions:
            groups = transaction.flush_groups
            transaction.flush_groups = set()
            tokens: set[Token] = set()
            for group in groups:
                members = known.get(group)
                if members is None or group in unknown:
                    tokens.add((group, ANY_ROW))
                    tokens.add((group, UNKNOWN_ROWS))
                else:
                    tokens.add((group, ANY_ROW))
                    tokens.update((group, member) for member in members)
            # Rows updated or deleted may cascade (ON DELETE/UPDATE) to rows of other tables.
            tokens |= _written_tokens(self._cascade_targets(groups & changed) - groups)
            transaction.add(tokens)

    def _session_commit(self, session: Session) -> None:
        # Fired for savepoints too (SQLAlchemy 2.1): only connections whose database
        # transaction really ended are bumped; savepoints are followed by the engine events.
        connections: list[Connection] = session.info.get(_SESSION_CONNECTIONS, [])
        tokens: set[Token] = set()
        for conn in list(connections):
            if conn.closed or not conn.in_transaction():
                connections.remove(conn)
                transaction = self._transactions.pop(conn, None)
                if transaction is not None:
                    tokens |= transaction.all_tokens()
        if tokens:
            tokens.add(commit_counter())
            self._bump(tokens)

    def _session_rollback(self, session: Session) -> None:
        connections: list[Connection] = session.info.get(_SESSION_CONNECTIONS, [])
        for conn in list(connections):
            if conn.closed or not conn.in_transaction():
                connections.remove(conn)
                self._transactions.pop(conn, None)
        session.info.pop(_FLUSHING, None)

    def _session_transaction_end(self, session: Session, transaction: Any) -> None:
        if transaction.parent is not None:
            return
        # The session's outermost transaction ended. A connection still in a transaction
        # belongs to someone else (a Session joined to an outer Connection transaction):
        # its writes are bumped when that transaction commits, as any Core commit is.
        for conn in session.info.pop(_SESSION_CONNECTIONS, ()):
            state = self._transactions.get(conn)
            if state is not None and not conn.closed and conn.in_transaction():
                state.session = None
            else:
                self._transactions.pop(conn, None)
        session.info.pop(_FLUSHING, None)


def isolation_of(conn: Connection) -> str | None:
    """The isolation level ``conn`` runs at, without asking the database."""
    level = conn.get_execution_options().get("isolation_level")
    if level is None:
        level = getattr(conn.dialect, "_on_connect_isolation_level", None)
    if level is None:
        level = conn.default_isolation_level
    return str(level).upper() if level is not None else None


_DML_WORD = re.compile(r"\b(insert|update|delete|merge)\b", re.IGNORECASE)
_UPSERT = re.compile(r"^replace\b|\bon conflict\b|\bon duplicate key\b", re.IGNORECASE)


def _modifying_cte(fingerprint: str) -> bool:
    """A SELECT led by a WITH clause that inserts, updates or deletes."""
    return fingerprint[:4].lower() == "with" and _DML_WORD.search(fingerprint) is not None


def _replaces_rows(fingerprint: str) -> bool:
    """An INSERT that may delete or update existing rows (REPLACE, upserts): its foreign-key
    cascades must be followed like an UPDATE's or DELETE's."""
    return _UPSERT.search(fingerprint) is not None


def _from_unit_of_work(context: ExecutionContext | None) -> bool:
    """Whether a statement was sent by the ORM flush itself (SQLAlchemy's persistence code
    executes with the mapper's compiled cache), not by an event handler during the flush."""
    return context is not None and "compiled_cache" in context.execution_options


def _is_autocommit(conn: Connection) -> bool:
    check = getattr(conn, "_is_autocommit_isolation", None)
    return bool(check()) if check is not None else False


def _rows_written(session: Session) -> tuple[dict[str, set[str]], set[str], set[str]]:
    """Fine members of the rows this flush wrote, per table group; the groups where some
    row's tracked values could not be read (those get table-wide tokens); and the groups with
    updated or deleted rows (whose foreign-key cascades may reach other tables)."""
    known: dict[str, set[str]] = {}
    unknown: set[str] = set()
    changed: set[str] = set()
    for objects, use_old, use_new in (
        (session.new, False, True),
        (session.dirty, True, True),
        (session.deleted, True, False),
    ):
        for obj in objects:
            state: InstanceState[Any] = attributes.instance_state(obj)
            mapper = state.mapper
            committed = state.committed_state
            values = state.dict
            for table in mapper.tables:
                group = table_group(table.name)
                if use_old:
                    changed.add(group)
                members = known.setdefault(group, set())
                for column in table.columns:
                    if column.name not in tracked_columns(table):
                        continue
                    prop = mapper._columntoproperty.get(column)
                    if prop is None:
                        unknown.add(group)
                        continue
                    key = prop.key
                    candidates = []
                    if use_new:
                        candidates.append(values.get(key, _MISSING))
                    if use_old:
                        candidates.append(committed.get(key, values.get(key, _MISSING)))
                    for value in candidates:
                        if value is None:
                            continue  # NULL matches no equality filter
                        member = value_member(column.name, value)
                        if member is None:
                            unknown.add(group)
                        else:
                            members.add(member)
    return known, unknown, changed


_MISSING = object()
