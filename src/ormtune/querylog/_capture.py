"""Statement hooks, and the ways to receive their events: captures, observers and watchers.

One set of listeners, on every engine's dialect, serves everything: ``capture()`` blocks, which are
scoped to a context (held in a ``ContextVar``, so threads and asyncio tasks never see each
other's statements), and observers registered with ``observe()``, which see every statement in
the process. Watchers registered with ``watch()`` see every statement just before it runs (and
may stop it), with its SQLAlchemy execution context. The listeners are installed when the first
capture, observer or watcher starts and removed when the last one ends, so an application that
uses none pays nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from ormtune.querylog._callsite import find_callsite
from ormtune.querylog._event import QueryEvent, redact
from ormtune.querylog._lifecycle import Registration, SharedHooks
from ormtune.querylog._log import QueryLog
from ormtune.querylog._sqltext import StatementInfo, _analyze

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from sqlalchemy.engine import ExceptionContext, ExecutionContext
    from sqlalchemy.engine.interfaces import DBAPICursor

    from ormtune.querylog._callsite import CallSite
    from ormtune.typing import QueryObserver, StatementWatcher

__all__ = ["Capture", "Observation", "capture", "observe", "watch"]

logger = logging.getLogger("ormtune.querylog")

_STARTED = "_ormtune_started"  # set on the ExecutionContext when its execution raises
_STOPPED = "_ormtune_stopped"  # set on the ExecutionContext when a watcher stopped it
_perf_counter = time.perf_counter  # a global read, not a module attribute lookup, per statement


@dataclass(slots=True, eq=False)  # not frozen: a frozen one costs a request 6 setattr calls
class _Sink:
    """One receiver of events: a capture's log or an observer, with what it asked for
    (never changed after it is made)."""

    engines: tuple[Engine, ...]  # empty: every engine
    callsites: bool
    parameters: bool
    skip_modules: tuple[str, ...]
    log: QueryLog | None = None
    observer: QueryObserver | None = None

    def wants(self, engine: Engine) -> bool:
        if not self.engines:
            return True
        pool = engine.pool
        if len(self.engines) == 1:  # the usual case, without a generator per statement
            wanted = self.engines[0]
            return engine is wanted or pool is wanted.pool
        return any(engine is wanted or pool is wanted.pool for wanted in self.engines)

    def deliver(self, query: QueryEvent) -> None:
        if self.log is not None:
            self.log.append(query)
        elif self.observer is not None:
            try:
                self.observer.on_query(query)
            except Exception:
                logger.exception("ormtune query observer %r failed", self.observer)


_scoped: ContextVar[tuple[_Sink, ...]] = ContextVar("ormtune_captures", default=())
_global: tuple[_Sink, ...] = ()  # copy-on-write, read without the lock on the hot path
_watchers: tuple[StatementWatcher, ...] = ()  # the same
_lock = threading.Lock()


# The statement hooks are the dialect's execution events (do_execute, do_executemany,
# do_execute_no_params), not the connection's before/after_cursor_execute: a connection event
# makes SQLAlchemy join the engine's listeners into every new Connection and dispatch four
# events around every statement, whatever the listener does, which cost more than ormtune's own
# work per statement. A dialect event is one call per statement. The hook runs the cursor call
# itself (as the dialect would) between two clock reads and tells SQLAlchemy it has done so.
# Listeners registered after ormtune's on the same event still run, in their order, before the
# dialect's own method; the first that returns True executes the statement, as it would without
# ormtune. A Connection made with events switched off (the one SQLAlchemy opens to initialize a
# dialect on its first connect) is left alone, as the connection events leave it alone.


def _events_off(context: ExecutionContext) -> bool:
    return context.root_connection.__dict__.get("_has_events") is False


def _sinks() -> tuple[_Sink, ...]:
    sinks = _scoped.get()
    if _global:
        return sinks + _global if sinks else _global
    return sinks


def _later_listener_executed(listeners: Any, own: object, arguments: tuple[Any, ...]) -> bool:
    """Run the listeners after ``own`` on one dialect execution event, as SQLAlchemy would have
    after ours; True when one of them executed the statement."""
    after_own = False
    for listener in listeners:
        if after_own:
            if listener(*arguments):
                return True
        elif listener is own:
            after_own = True
    return False


def _watch_before(
    watchers: tuple[StatementWatcher, ...], context: ExecutionContext
) -> list[tuple[StatementWatcher, object]] | None:
    watched: list[tuple[StatementWatcher, object]] | None = None
    try:
        for watcher in watchers:
            token = watcher.before_statement(context)
            if token is not None:
                if watched is None:
                    watched = []
                watched.append((watcher, token))
    except BaseException:
        setattr(context, _STOPPED, True)  # for handle_error: not a failed statement
        raise
    return watched


def _watch_after(watched: list[tuple[StatementWatcher, object]], info: StatementInfo) -> None:
    for watcher, token in watched:
        try:
            watcher.after_statement(token, info)
        except Exception:
            logger.exception("ormtune statement watcher %r failed", watcher)


def _run_and_emit(
    sinks: tuple[_Sink, ...],
    context: ExecutionContext,
    listeners: Any,
    own: object,
    execute: Callable[..., Any],
    arguments: tuple[Any, ...],
    parameters: Any,
    executemany: bool,
) -> bool:
    """Run one statement as the dialect would (after any later listener) between two clock
    reads, and send its event; watchers see it before and after. (With watchers only, no
    sinks, the second clock read is skipped: nothing would read the duration. The first is
    kept for ``handle_error``, which may find a sink registered meanwhile.)"""
    watchers = _watchers
    watched = _watch_before(watchers, context) if watchers else None
    started = _perf_counter()
    try:
        if len(listeners) == 1 or not _later_listener_executed(listeners, own, arguments):
            execute(*arguments)
    except BaseException:
        context._ormtune_started = started  # type: ignore[attr-defined]  # for handle_error
        raise
    if sinks:
        duration = _perf_counter() - started  # before the analysis, which may tokenize
    elif watched is None:
        return True
    info = _analyze(arguments[1], context.dialect.name in _BACKSLASH_DIALECTS)
    if sinks:
        rowcount = arguments[0].rowcount
        _emit(
            sinks,
            context.engine,
            arguments[1],
            info,
            parameters,
            executemany,
            duration,
            rowcount if rowcount is not None and rowcount >= 0 else None,
            None,
        )
    if watched is not None:
        _watch_after(watched, info)
    return True


def _do_execute(
    cursor: DBAPICursor, statement: str, parameters: Any, context: ExecutionContext
) -> bool:
    # The hook of nearly every statement: _sinks() and _events_off() inlined, and
    # ``executemany`` (a memoised property) read only when an event will be made.
    sinks = _scoped.get()
    if _global:
        sinks = sinks + _global if sinks else _global
    elif not sinks and not _watchers:
        return False  # SQLAlchemy runs the statement (and any later listener) as usual
    if context.root_connection.__dict__.get("_has_events") is False:
        return False
    dialect = context.dialect
    return _run_and_emit(
        sinks,
        context,
        dialect.dispatch.do_execute,
        _do_execute,
        dialect.do_execute,
        (cursor, statement, parameters, context),
        parameters,
        context.executemany if sinks else False,
    )


def _do_execute_no_params(cursor: DBAPICursor, statement: str, context: ExecutionContext) -> bool:
    sinks = _sinks()
    if (not sinks and not _watchers) or _events_off(context):
        return False
    dialect = context.dialect
    return _run_and_emit(
        sinks,
        context,
        dialect.dispatch.do_execute_no_params,
        _do_execute_no_params,
        dialect.do_execute_no_params,
        (cursor, statement, context),
        # what before_cursor_execute is given for a statement without parameters
        context.parameters[0] if context.parameters else {},
        False,
    )


def _do_executemany(
    cursor: DBAPICursor, statement: str, parameters: Any, context: ExecutionContext
) -> bool:
    sinks = _sinks()
    if (not sinks and not _watchers) or _events_off(context):
        return False
    dialect = context.dialect
    return _run_and_emit(
        sinks,
        context,
        dialect.dispatch.do_executemany,
        _do_executemany,
        dialect.do_executemany,
        (cursor, statement, parameters, context),
        parameters,
        True,
    )


def _handle_error(exception_context: ExceptionContext) -> None:
    sinks = _sinks()
    statement = exception_context.statement
    connection = exception_context.connection
    if (
        not sinks
        or statement is None
        or connection is None
        or connection.__dict__.get("_has_events") is False
    ):
        return
    context = exception_context.execution_context
    if context is not None and getattr(context, _STOPPED, False):
        return  # a watcher stopped it before it ran: no statement failed
    started = getattr(context, _STARTED, None) if context is not None else None
    duration = time.perf_counter() - started if started is not None else 0.0
    engine = connection.engine
    _emit(
        sinks,
        engine,
        statement,
        _analyze(statement, engine.dialect.name in _BACKSLASH_DIALECTS),
        exception_context.parameters,
        bool(context is not None and context.executemany),
        duration,
        None,
        exception_context.original_exception,
    )


_BACKSLASH_DIALECTS = frozenset({"mysql", "mariadb"})


def _emit(
    sinks: tuple[_Sink, ...],
    engine: Engine,
    statement: str,
    info: StatementInfo,
    parameters: Any,
    executemany: bool,
    duration: float,
    rowcount: int | None,
    error: BaseException | None,
) -> None:
    # Runs for every statement: the usual one-engine filter and the deliveries are inlined
    # (the caller analyzes the statement with the memo, not through analyze()).
    shared: QueryEvent | None = None  # the event every sink without special wishes shares
    callsites: dict[tuple[str, ...], CallSite | None] | None = None
    for sink in sinks:
        engines = sink.engines
        if engines:
            if len(engines) == 1:
                wanted = engines[0]
                if engine is not wanted and engine.pool is not wanted.pool:
                    continue
            elif not sink.wants(engine):
                continue
        if not sink.callsites and not sink.parameters:
            if shared is None:
                shared = QueryEvent(
                    statement,
                    redact(parameters, executemany),
                    info,
                    duration,
                    rowcount,
                    engine,
                    executemany,
                    None,
                    error,
                )
            log = sink.log
            if log is not None:
                log._events.append(shared)  # QueryLog.append, without the call
                continue
            try:  # _Sink.deliver, without the call
                sink.observer.on_query(shared)  # type: ignore[union-attr]
            except Exception:
                logger.exception("ormtune query observer %r failed", sink.observer)
            continue
        callsite = None
        if sink.callsites:
            if callsites is None:
                callsites = {}
            if sink.skip_modules not in callsites:
                callsites[sink.skip_modules] = find_callsite(sink.skip_modules, depth=2)
            callsite = callsites[sink.skip_modules]
        if sink.parameters:
            values = list(parameters) if executemany else parameters
        else:
            values = redact(parameters, executemany)
        sink.deliver(
            QueryEvent(
                statement, values, info, duration, rowcount, engine, executemany, callsite, error
            )
        )


# Dialect events, registered through the Engine class: every engine's dialect gets them.
_LISTENERS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("do_execute", _do_execute),
    ("do_execute_no_params", _do_execute_no_params),
    ("do_executemany", _do_executemany),
    ("handle_error", _handle_error),
)


def _install() -> None:
    for name, listener in _LISTENERS:
        if not event.contains(Engine, name, listener):
            event.listen(Engine, name, listener)


def _remove() -> None:
    for name, listener in _LISTENERS:
        if event.contains(Engine, name, listener):
            event.remove(Engine, name, listener)


_hooks = SharedHooks(_install, _remove)


def listening() -> bool:
    """Whether ormtune's engine listeners are installed right now."""
    return event.contains(Engine, "do_execute", _do_execute)


def _engines(given: tuple[object, ...], caller: str) -> tuple[Engine, ...]:
    engines: list[Engine] = []
    for candidate in given:
        if isinstance(candidate, AsyncEngine):
            engines.append(candidate.sync_engine)
        elif isinstance(candidate, Engine):
            engines.append(candidate)
        else:
            raise TypeError(
                f"{caller}() takes SQLAlchemy Engine or AsyncEngine objects, "
                f"but was given {candidate!r} (of type {type(candidate).__qualname__})"
            )
    return tuple(engines)


class Capture:
    """Records every statement run in this context (this thread or asyncio task, and what it
    starts) while it is open. Use as ``with`` or ``async with``; entering gives the
    :class:`QueryLog`. Leaving, normally or through an exception, stops recording and keeps
    the log."""

    __slots__ = ("_sink", "_token", "log")

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink
        self._token: Token[tuple[_Sink, ...]] | None = None
        assert sink.log is not None
        self.log: QueryLog = sink.log

    def start(self) -> QueryLog:
        if self._token is not None:
            raise RuntimeError("this capture is already open; create a new one with capture()")
        _hooks.acquire()
        self._token = _scoped.set((*_scoped.get(), self._sink))
        return self.log

    def stop(self) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        try:
            _scoped.reset(token)
        except ValueError:
            # Left in another context than it was entered in: take out only this capture.
            _scoped.set(tuple(sink for sink in _scoped.get() if sink is not self._sink))
        finally:
            _hooks.release()

    def __enter__(self) -> QueryLog:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> QueryLog:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def capture(
    *engines: Engine | AsyncEngine,
    callsites: bool = False,
    parameters: bool = False,
    skip_modules: tuple[str, ...] = (),
) -> Capture:
    """Record the SQL statements executed inside a ``with`` (or ``async with``) block.

    With no engines, statements on every engine are recorded; otherwise only those on the
    given engines (an ``AsyncEngine`` stands for its ``sync_engine``; engines derived with
    ``execution_options()`` count as their parent). ``callsites=True`` records the first frame
    of application code for each statement (a stack walk per statement, so off by default);
    ``skip_modules`` adds module-name prefixes to skip as library code, for example a project's
    own data-access layer. ``parameters=True`` keeps parameter values instead of their shapes.

    Nested captures each record everything run inside them, so an outer capture also sees the
    statements of an inner one. Threads and asyncio tasks started elsewhere are never recorded;
    tasks started inside the block inherit it.
    """
    sink = _Sink(
        _engines(engines, "capture") if engines else (),
        callsites,
        parameters,
        skip_modules if type(skip_modules) is tuple else tuple(skip_modules),
        QueryLog(),
    )
    return Capture(sink)


class Observation(Registration):
    """A registered observer; ``close()`` (or leaving its ``with`` block) unregisters it."""

    __slots__ = ()

    def __init__(self, sink: _Sink) -> None:
        def unregister() -> None:
            global _global
            with _lock:
                _global = tuple(other for other in _global if other is not sink)
            _hooks.release()

        super().__init__(unregister)


def observe(
    observer: QueryObserver,
    *engines: Engine | AsyncEngine,
    callsites: bool = False,
    parameters: bool = False,
    skip_modules: tuple[str, ...] = (),
) -> Observation:
    """Send every statement executed anywhere in the process to ``observer.on_query``.

    This is how N+1 detection, metrics and the dashboard subscribe to the one event stream.
    The options mean what they mean for :func:`capture`. An exception raised by the observer is
    logged to the ``ormtune.querylog`` logger and never reaches the application.
    """
    global _global
    if not callable(getattr(observer, "on_query", None)):
        raise TypeError(
            f"observe() takes an object with an on_query(event) method (a QueryObserver), "
            f"but was given {observer!r} (of type {type(observer).__qualname__})"
        )
    sink = _Sink(
        engines=_engines(engines, "observe"),
        callsites=callsites,
        parameters=parameters,
        skip_modules=tuple(skip_modules),
        observer=observer,
    )
    _hooks.acquire()
    with _lock:
        _global = (*_global, sink)
    return Observation(sink)


def watch(watcher: StatementWatcher) -> Registration:
    """Show every statement executed anywhere in the process to ``watcher`` before and after
    it runs (see :class:`~ormtune.typing.StatementWatcher`); ``close()`` on the returned
    registration stops it. N+1 detection watches lazy loads this way: it sees one before its
    SQL runs, and can stop it there."""
    global _watchers
    if not callable(getattr(watcher, "before_statement", None)) or not callable(
        getattr(watcher, "after_statement", None)
    ):
        raise TypeError(
            f"watch() takes an object with before_statement(context) and "
            f"after_statement(token, statement) methods (a StatementWatcher), but was given "
            f"{watcher!r} (of type {type(watcher).__qualname__})"
        )
    _hooks.acquire()
    with _lock:
        _watchers = (*_watchers, watcher)

    def unregister() -> None:
        global _watchers
        with _lock:
            _watchers = tuple(other for other in _watchers if other is not watcher)
        _hooks.release()

    return Registration(unregister)
