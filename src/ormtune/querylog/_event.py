"""One executed statement, as observers and captures see it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ormtune.querylog._callsite import CallSite
    from ormtune.querylog._sqltext import StatementInfo, StatementKind

__all__ = ["QueryEvent", "redact"]


@dataclass(slots=True, eq=False)
class QueryEvent:
    """A statement the database executed (or refused), with what is known about it.

    ``parameters`` holds parameter *shapes* (``"<int>"``, ``"<str>"``) unless the capture or
    observer asked for values: captured logs are printed in test failures, pickled and shown in
    dashboards, where secrets do not belong, so values are dropped when the event is made.
    ``duration`` is in seconds, measured around the driver's
    ``cursor.execute``. ``rowcount`` is what the driver reported, or None where it reports
    nothing useful (-1). ``callsite`` is set only when call-sites were asked for. ``error`` is
    the driver's exception when the statement failed.
    """

    sql: str
    parameters: Any
    statement: StatementInfo
    duration: float
    rowcount: int | None
    engine: Engine
    executemany: bool
    callsite: CallSite | None = None
    error: BaseException | None = None

    @property
    def fingerprint(self) -> str:
        """The statement's shape: literals as ``?``, IN-lists collapsed, whitespace normalised."""
        return self.statement.fingerprint

    @property
    def fingerprint_id(self) -> str:
        """A short, stable hash of :attr:`fingerprint`, fit for labels and URLs."""
        return self.statement.fingerprint_id

    @property
    def kind(self) -> StatementKind:
        """select, insert, update, delete, ddl or other."""
        return self.statement.kind

    @property
    def tables(self) -> tuple[str, ...]:
        """Names of the tables the statement refers to, sorted."""
        return self.statement.tables

    @property
    def database(self) -> str:
        """The engine's dialect and database name, e.g. ``postgresql/shop``."""
        url = self.engine.url
        return f"{url.get_backend_name()}/{url.database or ''}"

    def __repr__(self) -> str:
        return (
            f"<QueryEvent {self.kind} {self.duration * 1000:.3f} ms "
            f"rows={self.rowcount} {self.fingerprint[:60]!r}>"
        )


_SHAPES: dict[type, str] = {type(None): "<None>"}


def _shape(value: object) -> str:
    kind = type(value)
    shape = _SHAPES.get(kind)
    if shape is None:
        shape = _SHAPES[kind] = f"<{kind.__name__}>"
    return shape


def redact(parameters: Any, executemany: bool) -> Any:
    """Replace every parameter value with its shape, keeping the container's structure."""
    if executemany and isinstance(parameters, (list, tuple)):
        return [redact(row, False) for row in parameters]
    # Comprehensions with the memo inlined: this runs for every statement.
    shapes = _SHAPES
    if isinstance(parameters, dict):
        return {key: shapes.get(type(value)) or _shape(value) for key, value in parameters.items()}
    if isinstance(parameters, (list, tuple)):
        return tuple([shapes.get(type(value)) or _shape(value) for value in parameters])
    return _shape(parameters)
