"""Every error ormtune raises, in one tree, and the warnings it gives.

    OrmtuneError                      base class; catch this to catch anything ormtune raises
    ├── CacheBackendError             a cache store (Redis) failed or timed out; the cache
    │                                 falls back to the database and counts it
    ├── ConfigurationError(ValueError) an argument or setting ormtune cannot use
    ├── MissingDependencyError(ImportError)
    │                                 an optional dependency is not installed; names the extra
    ├── NPlusOneError(AssertionError) N+1 or repeated queries found by ormtune.nplusone in
    │                                 "raise" mode; names the loop's line and the fix
    └── QueryCountError(AssertionError)
                                      a query budget was exceeded (or, when exact, missed)

    UserWarning
    └── NPlusOneWarning               the same findings in "warn" mode, one warning each,
                                      reported at the line of the loop

Errors that say what the *caller* got wrong in the type of an argument are plain ``TypeError``,
as Python's own functions raise them. Third-party errors are translated in one place with
``raise ... from exc`` so the original stays attached as ``__cause__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CacheBackendError",
    "ConfigurationError",
    "MissingDependencyError",
    "NPlusOneError",
    "NPlusOneWarning",
    "OrmtuneError",
    "QueryCountError",
]


class OrmtuneError(Exception):
    """Base class of every error ormtune raises."""


class CacheBackendError(OrmtuneError):
    """A cache backend could not reach its store, or the store answered with an error.

    Raised by :class:`~ormtune.typing.CacheBackend` implementations, with the driver's error
    as ``__cause__``. ``ormtune.caching`` catches it, serves the query from the database and
    counts the failure, so an unreachable cache never fails a request.
    """


class ConfigurationError(OrmtuneError, ValueError):
    """An argument or setting has a value ormtune cannot use; the message names it."""


class MissingDependencyError(OrmtuneError, ImportError):
    """An optional dependency is missing; the message names the pip extra that installs it."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        self.feature = feature
        super().__init__(
            f"{feature} needs the {package!r} package, which is not installed. "
            f"Install it with: pip install 'ormtune[{extra}]'",
            name=package,
        )


class NPlusOneError(OrmtuneError, AssertionError):
    """N+1 detection in "raise" mode found wasted queries.

    A lazy load that makes an N+1 raises this at the second lazy load, inside the loop, so the
    traceback points at the line to fix; repeated queries raise it when the detection block
    ends. It is an ``AssertionError`` so test runners report it as a failed assertion.
    ``findings`` holds the :class:`~ormtune.nplusone.Finding` objects it reports.
    """

    def __init__(self, message: str, *, findings: Sequence[object]) -> None:
        super().__init__(message)
        self.findings = tuple(findings)


class NPlusOneWarning(UserWarning):
    """N+1 detection in "warn" mode found wasted queries; the warning's location is the loop."""


class QueryCountError(OrmtuneError, AssertionError):
    """A block of code ran more queries than its budget allowed (or not exactly as many).

    It is an ``AssertionError`` so test runners report it as a failed assertion. ``log`` holds
    the captured statements for inspection.
    """

    def __init__(self, message: str, *, expected: int, actual: int, log: object) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual
        self.log = log
