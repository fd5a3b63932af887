"""pytest plugin: query budgets as fixtures and a marker.

* ``assert_max_queries`` fixture: ``with assert_max_queries(3): ...``
* ``assert_num_queries`` fixture: ``with assert_num_queries(3): ...`` (exactly three)
* ``@pytest.mark.max_queries(n)`` (or ``max_queries(n, exact=True)``): the test's body may run
  at most ``n`` statements; fixture set-up and tear-down are not counted.

A marker whose count is not a whole number of 0 or more stops the run at collection, naming the
test and the value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ormtune.exceptions import OrmtuneError
from ormtune.testing import assert_max_queries as _assert_max_queries
from ormtune.testing import assert_num_queries as _assert_num_queries
from ormtune.testing._budget import QueryBudget, check_count

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

_MARKER = "max_queries"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(n, exact=False): fail the test if its body runs more than n SQL statements "
        "(exactly n with exact=True); from ormtune",
    )


def _budget_of(item: pytest.Item) -> tuple[int, bool] | None:
    marker = item.get_closest_marker(_MARKER)
    if marker is None:
        return None
    unknown = set(marker.kwargs) - {"exact"}
    if len(marker.args) != 1 or unknown:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{_MARKER} takes one count and optionally exact=True, "
            f"as in @pytest.mark.{_MARKER}(3); got args={marker.args!r} kwargs={marker.kwargs!r}"
        )
    try:
        count = check_count(marker.args[0], f"@pytest.mark.{_MARKER} count")
    except (TypeError, OrmtuneError) as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
    return count, bool(marker.kwargs.get("exact", False))


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    for item in items:
        _budget_of(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    __tracebackhide__ = True
    budget_spec = _budget_of(item)
    if budget_spec is None:
        return (yield)
    count, exact = budget_spec
    budget: QueryBudget = (_assert_num_queries if exact else _assert_max_queries)(count)
    with budget:
        result = yield
    return result


@pytest.fixture
def assert_max_queries() -> Callable[..., QueryBudget]:
    """``with assert_max_queries(n[, engine, ...]):`` fails if the block runs more than ``n``
    statements, listing them with their call-sites."""
    return _assert_max_queries


@pytest.fixture
def assert_num_queries() -> Callable[..., QueryBudget]:
    """``with assert_num_queries(n[, engine, ...]):`` fails unless the block runs exactly ``n``
    statements."""
    return _assert_num_queries


__all__: list[str] = []
