"""Every error ormtune raises, in one tree, and the warnings it gives.

    OrmtuneError                      base class; catch this to catch anything ormtune raises
    ├── CacheBackendError             a cache store (Redis) failed or timed out; the cache
    │                                 falls back to the database and counts it
    ├── ConfigurationError(ValueError) an argument or setting ormtune cannot use
    ├── MissingDependencyError(ImportError)
    │                                 an optional dependency is not installed; names the extra
    ├── NPlusOneError(AssertionError) N+1 or repeated queries found by ormtune.nplusone in
    │                                 "raise" mode; names the loop's line and the fix
    ├── QueryCountError(AssertionError)
    │                                 a query budget was exceeded (or, when exact, missed)
    └── RepositoryError               a repository or service operation failed (ormtune.repository)
        ├── ConstraintError           the database refused a write: an integrity constraint
        │   ├── DuplicateKeyError     a unique constraint; names the constraint and its columns
        │   └── ForeignKeyError       a foreign key; names the constraint and its columns
        ├── InvalidCursorError(ValueError)
        │                             a keyset pagination cursor that is corrupt or was made
        │                             for another ordering
        ├── NotFoundError(LookupError) no row (or no live row) with the given key
        └── UnknownFieldError(ValueError)
                                      a filter, ordering or value names a field the model does
                                      not have; names the valid fields

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
    "ConstraintError",
    "DuplicateKeyError",
    "ForeignKeyError",
    "InvalidCursorError",
    "MissingDependencyError",
    "NPlusOneError",
    "NPlusOneWarning",
    "NotFoundError",
    "OrmtuneError",
    "QueryCountError",
    "RepositoryError",
    "UnknownFieldError",
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


class RepositoryError(OrmtuneError):
    """A repository or service operation failed; the subclasses say how."""


class ConstraintError(RepositoryError):
    """The database refused a write because it breaks an integrity constraint.

    ``constraint`` is the constraint's name when the database reported it (or it could be found
    in the model's metadata), ``columns`` the columns it covers, ``table`` the table. The
    driver's error is the ``__cause__``. As with any failed flush, the session's transaction
    must be rolled back before the session is used again.
    """

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        constraint: str | None = None,
        columns: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.table = table
        self.constraint = constraint
        self.columns = tuple(columns)


class DuplicateKeyError(ConstraintError):
    """A unique constraint (or unique index, or primary key) was violated."""


class ForeignKeyError(ConstraintError):
    """A foreign key was violated: a reference to a missing row, or a delete of a referenced
    row."""


class InvalidCursorError(RepositoryError, ValueError):
    """A keyset pagination cursor could not be decoded, or was made for another ordering."""


class NotFoundError(RepositoryError, LookupError):
    """No row with the given key exists (or it is soft-deleted and deleted rows were not
    asked for). ``model`` and ``key`` say which."""

    def __init__(self, message: str, *, model: type[object], key: object) -> None:
        super().__init__(message)
        self.model = model
        self.key = key


class UnknownFieldError(RepositoryError, ValueError):
    """A filter, ordering or value names a field the model does not have.

    ``field`` is the name given, ``valid`` the model's fields it could have been.
    """

    def __init__(self, message: str, *, field: str, valid: Sequence[str]) -> None:
        super().__init__(message)
        self.field = field
        self.valid = tuple(valid)
