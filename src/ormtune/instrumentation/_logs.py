"""Structured logs through the standard ``logging`` module: a JSON formatter, per-query lines,
and the guard that keeps a broken handler from breaking a request.

Three loggers, so each can be routed and levelled on its own:

* ``ormtune.request`` — one INFO line per HTTP request (the middleware);
* ``ormtune.sql`` — one DEBUG line per statement (:class:`QueryLogger`), with fingerprint,
  duration, row count and call-site; parameters only as shapes unless enabled;
* ``ormtune.slow_query`` — one WARNING line per slow statement (``SlowQueryLog``).

Fields travel as ``extra=`` attributes on the ``LogRecord``, so any formatter can use them;
:class:`JsonFormatter` writes every one of them, plus the current request's id, route and
method, as one JSON object per line. With structlog, add :func:`add_request_context` to the
processor chain (it is a plain structlog-style processor; structlog is not required).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ormtune.instrumentation._context import current_request
from ormtune.querylog import find_callsite, redact

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

    from ormtune.querylog import QueryEvent

__all__ = [
    "JsonFormatter",
    "QueryLogger",
    "add_request_context",
    "query_fields",
    "request_logger",
    "safe_log",
    "slow_query_logger",
    "sql_logger",
]

request_logger = logging.getLogger("ormtune.request")
sql_logger = logging.getLogger("ormtune.sql")
slow_query_logger = logging.getLogger("ormtune.slow_query")

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def safe_log(
    logger: logging.Logger, level: int, message: str, *args: object, extra: Mapping[str, Any]
) -> None:
    """``logger.log``, except that nothing a handler or formatter raises reaches the caller:
    logging must never break the request it describes.

    The record is made with ``Logger.makeRecord`` and passed to ``Logger.handle``, as
    ``Logger.log`` does, minus its stack walk for the caller's file and line: the caller is
    always ormtune, so that walk would cost a request time and tell nothing.
    """
    try:
        if not logger.isEnabledFor(level):
            return
        # makeRecord only reads ``extra`` (copying each item onto the record): no copy here.
        record = logger.makeRecord(
            logger.name, level, "(ormtune)", 0, message, args, None, None, extra
        )
        logger.handle(record)
    except Exception:
        try:
            logging.getLogger("ormtune.instrumentation").debug(
                "a log handler failed", exc_info=True
            )
        except Exception:
            return


def _request_fields() -> dict[str, Any]:
    request = current_request()
    if request is None:
        return {}
    fields: dict[str, Any] = {"request_id": request.request_id, "method": request.method}
    if request.route is not None:
        fields["route"] = request.route
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the current request's ``request_id`` / ``method`` / ``route``, every
    ``extra=`` field, and ``exception`` with the traceback when there is one.

    Values JSON cannot encode are written as their ``str()``; the formatter never raises on a
    field's value.
    """

    _encode = json.JSONEncoder(default=str, ensure_ascii=False, separators=(", ", ": ")).encode

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # one tuple: threads swap it atomically

    def _timestamp(self, created: float) -> str:
        seconds = int(created)
        cached, text = self._second
        if seconds != cached:  # one strftime per second, not per line
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            self._second = (seconds, text)
        return f"{text}.{int((created - seconds) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = current_request()
        if request is not None:
            entry["request_id"] = request.request_id
            entry["method"] = request.method
            if request.route is not None:
                entry["route"] = request.route
        entry.update(
            {
                key: value
                for key, value in record.__dict__.items()
                if key not in _RESERVED and key[:1] != "_"
            }
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return self._encode(entry)


def add_request_context(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor adding the current request's ``request_id``, ``method`` and
    ``route`` to every event (fields already set win)."""
    for key, value in _request_fields().items():
        event_dict.setdefault(key, value)
    return event_dict


class QueryLogger:
    """Logs every statement at DEBUG on ``ormtune.sql``: a :class:`~ormtune.typing.QueryObserver`.

    Costs one ``isEnabledFor`` check per statement while DEBUG is off. When on, each line
    carries ``fingerprint``, ``fingerprint_id``, ``operation``, ``tables``, ``duration_ms``,
    ``rowcount``, ``database``, ``callsite`` (found by a stack walk, only while the level is
    enabled) and ``parameters`` as shapes (``<int>``) unless ``parameters=True``.
    """

    def __init__(
        self,
        *,
        parameters: bool = False,
        callsites: bool = True,
        skip_modules: tuple[str, ...] = (),
        logger: logging.Logger = sql_logger,
    ) -> None:
        self.parameters = parameters
        self.callsites = callsites
        self.skip_modules = tuple(skip_modules)
        self.logger = logger
        # Whether the events this observer gets hold parameter values (observe(...,
        # parameters=True)) rather than shapes; set by whoever subscribes it.
        self.receives_values = False

    def on_query(self, event: QueryEvent) -> None:
        if not self.logger.isEnabledFor(logging.DEBUG):
            return
        callsite = event.callsite
        if callsite is None and self.callsites:
            callsite = find_callsite(self.skip_modules)
        fields = query_fields(event, values=self.parameters, received=self.receives_values)
        fields["callsite"] = str(callsite) if callsite is not None else None
        safe_log(
            self.logger,
            logging.DEBUG,
            "%s %.3f ms %s",
            event.kind,
            event.duration * 1000,
            event.fingerprint,
            extra=fields,
        )


def query_fields(event: QueryEvent, *, values: bool, received: bool) -> dict[str, Any]:
    """The structured fields of one statement, for a log line. ``values``: log parameter
    values; ``received``: the event holds values (otherwise it already holds shapes)."""
    if values or not received:
        parameters = event.parameters
    else:  # values were asked for EXPLAIN, not for the log
        parameters = redact(event.parameters, event.executemany)
    fields: dict[str, Any] = {
        "event": "query",
        "fingerprint": event.fingerprint,
        "fingerprint_id": event.fingerprint_id,
        "operation": event.kind,
        "tables": list(event.tables),
        "duration_ms": round(event.duration * 1000, 3),
        "rowcount": event.rowcount,
        "database": event.database,
        "parameters": parameters,
    }
    if event.error is not None:
        fields["error"] = f"{type(event.error).__name__}: {event.error}"
    return fields
