"""Every error ormtune raises, in one tree.

    OrmtuneError                      base class; catch this to catch anything ormtune raises
    ├── ConfigurationError(ValueError) an argument or setting ormtune cannot use
    ├── MissingDependencyError(ImportError)
    │                                 an optional dependency is not installed; names the extra
    └── QueryCountError(AssertionError)
                                      a query budget was exceeded (or, when exact, missed)

Errors that say what the *caller* got wrong in the type of an argument are plain ``TypeError``,
as Python's own functions raise them. Third-party errors are translated in one place with
``raise ... from exc`` so the original stays attached as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "MissingDependencyError",
    "OrmtuneError",
    "QueryCountError",
]


class OrmtuneError(Exception):
    """Base class of every error ormtune raises."""


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
