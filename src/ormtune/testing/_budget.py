"""Query budgets: fail a block of code that runs more statements than it should."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ormtune.exceptions import ConfigurationError, QueryCountError
from ormtune.querylog import Capture, QueryLog, capture

if TYPE_CHECKING:
    from types import TracebackType

    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["QueryBudget", "assert_max_queries", "assert_num_queries", "check_count"]


def check_count(value: object, what: str) -> int:
    """``value`` as a query count, or a clear error: TypeError for a non-integer (bools are not
    counts), ConfigurationError (a ValueError) for a negative number."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{what} must be a whole number of queries, but was given {value!r} "
            f"(of type {type(value).__qualname__})"
        )
    if value < 0:
        raise ConfigurationError(f"{what} must be 0 or more, but was given {value}")
    return value


def failure_message(log: QueryLog, expected: int, *, exact: bool) -> str:
    """The text of a failed budget: expected and actual counts, then the statements grouped by
    fingerprint, repeated ones first, each with its call-sites."""
    limit = "" if exact else " or less"
    noun = "query" if expected == 1 else "queries"
    verb = "was" if log.count == 1 else "were"
    head = f"Expected to perform {expected} {noun}{limit} but {log.count} {verb} done"
    if not log.count:
        return head
    return f"{head}\n{log.report(timings=False)}"


class QueryBudget:
    """A ``with`` / ``async with`` block that may run at most (or, with ``exact``, exactly)
    ``expected`` statements; on leaving it raises :class:`~ormtune.QueryCountError` with the
    statements listed. If the block raised, that exception goes on unchanged."""

    __slots__ = ("_capture", "exact", "expected")

    def __init__(self, expected: int, capture: Capture, *, exact: bool) -> None:
        self.expected = expected
        self.exact = exact
        self._capture = capture

    @property
    def log(self) -> QueryLog:
        return self._capture.log

    def __enter__(self) -> QueryLog:
        return self._capture.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        __tracebackhide__ = True
        self._capture.stop()
        if exc_type is None:
            self.verify()

    async def __aenter__(self) -> QueryLog:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        __tracebackhide__ = True
        self.__exit__(exc_type, exc, tb)

    def verify(self) -> None:
        """Raise :class:`~ormtune.QueryCountError` if the recorded count breaks the budget."""
        __tracebackhide__ = True
        actual = self.log.count
        if actual > self.expected or (self.exact and actual != self.expected):
            raise QueryCountError(
                failure_message(self.log, self.expected, exact=self.exact),
                expected=self.expected,
                actual=actual,
                log=self.log,
            )


def assert_max_queries(
    expected: int,
    *engines: Engine | AsyncEngine,
    callsites: bool = True,
    skip_modules: tuple[str, ...] = (),
) -> QueryBudget:
    """Fail the block if it runs more than ``expected`` statements (on ``engines``, or on any
    engine). Call-sites are recorded so a failure points at the code that ran each statement."""
    count = check_count(expected, "assert_max_queries() count")
    return QueryBudget(
        count, capture(*engines, callsites=callsites, skip_modules=skip_modules), exact=False
    )


def assert_num_queries(
    expected: int,
    *engines: Engine | AsyncEngine,
    callsites: bool = True,
    skip_modules: tuple[str, ...] = (),
) -> QueryBudget:
    """Fail the block unless it runs exactly ``expected`` statements."""
    count = check_count(expected, "assert_num_queries() count")
    return QueryBudget(
        count, capture(*engines, callsites=callsites, skip_modules=skip_modules), exact=True
    )
