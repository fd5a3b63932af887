"""The error tree drawn in ormtune.exceptions' docstring."""

from __future__ import annotations

import pytest

from ormtune import exceptions
from ormtune.exceptions import (
    ConfigurationError,
    ConstraintError,
    DuplicateKeyError,
    ForeignKeyError,
    InvalidCursorError,
    MissingDependencyError,
    NotFoundError,
    OrmtuneError,
    QueryCountError,
    RepositoryError,
    UnknownFieldError,
)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (ConfigurationError, ValueError),
        (MissingDependencyError, ImportError),
        (QueryCountError, AssertionError),
        (NotFoundError, LookupError),
        (UnknownFieldError, ValueError),
        (InvalidCursorError, ValueError),
        (DuplicateKeyError, ConstraintError),
        (ForeignKeyError, ConstraintError),
        (ConstraintError, RepositoryError),
    ],
)
def test_every_error_is_an_ormtune_error_and_the_matching_builtin(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, OrmtuneError)
    assert issubclass(error, builtin)


def test_the_docstring_draws_every_error() -> None:
    assert exceptions.__doc__ is not None
    for name in exceptions.__all__:
        assert name in exceptions.__doc__


def test_missing_dependency_names_the_extra() -> None:
    error = MissingDependencyError("redis", "redis", "The Redis cache backend")
    assert str(error) == (
        "The Redis cache backend needs the 'redis' package, which is not installed. "
        "Install it with: pip install 'ormtune[redis]'"
    )
    assert error.name == "redis"
    with pytest.raises(ImportError):
        raise error
