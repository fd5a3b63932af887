"""The two memos of a cache hit: parameter values as memo keys (equal only when the entry key
would be equal) and decoded entries (reused only for equal bytes under the same shape)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any, cast

import pytest

from ormtune.caching._cache import _exact_values
from ormtune.caching._codec import encode
from ormtune.caching._materialize import PlanMemo
from ormtune.caching._shape import Shape


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (([1], []), ([True], [])),
        (([0], []), ([False], [])),
        (([1], []), (["1"], [])),
        (([None], []), (["None"], [])),
        (([[1, 2]], []), ([(1, 2)], [])),
        (([[[1], 2]], []), ([[1, [2]]], [])),
        (([1, 2], []), ([[1, 2]], [])),
        (([1], []), ([], [("a", 1)])),
        (([], [("a", 1)]), ([], [("b", 1)])),
        (([uuid.UUID(int=1)], []), ([1], [])),
    ],
)
def test_values_that_encode_differently_are_different_memo_keys(
    one: tuple[list[Any], list[Any]], other: tuple[list[Any], list[Any]]
) -> None:
    first, second = _exact_values(*one), _exact_values(*other)
    assert first is not None
    assert second is not None
    assert first != second


def test_equal_values_of_equal_types_are_one_memo_key() -> None:
    values: list[Any] = [7, "x", None, True, [1, 2], uuid.UUID(int=5)]
    again: list[Any] = [7, "x", None, True, [1, 2], uuid.UUID(int=5)]
    assert _exact_values(values, [("p", 3)]) == _exact_values(again, [("p", 3)])


@pytest.mark.parametrize(
    "value",
    [
        0.0,  # -0.0 == 0.0, but they encode differently
        decimal.Decimal("1.0"),  # == Decimal("1.00")
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),  # == the same instant in another zone
        dt.date(2026, 1, 1),
        [1, 2.5],
        {"a": 1},
    ],
)
def test_values_without_exact_equality_are_never_remembered(value: Any) -> None:
    assert _exact_values([value], []) is None
    assert _exact_values([], [("p", value)]) is None


def test_an_execution_parameter_that_is_not_a_mapping_is_never_remembered() -> None:
    assert _exact_values([1], [[{"a": 1}]]) is None


def shape() -> Shape:
    return Shape(
        digest="d",
        groups=frozenset(),
        fine_group=None,
        fine=(),
        frozen=cast("Any", None),
        entity_positions=(),
    )


def entry(*values: Any) -> bytes:
    """An entry of plain values (no objects), as serialise() writes for a column query."""
    return encode([list(values), True, [], []])


def test_equal_bytes_under_one_shape_are_decoded_once() -> None:
    memo, one = PlanMemo(1 << 20), shape()
    data = entry(1, "a", decimal.Decimal("2.50"))
    plan = memo.get(data, one)
    assert plan.rows == [1, "a", decimal.Decimal("2.50")]
    assert memo.get(data, one) is plan
    assert memo.get(bytes(bytearray(data)), one) is plan  # equal bytes, another object
    assert memo.get(data, shape()) is not plan  # another shape: decoded for it
    assert memo.get(entry(2, "a", decimal.Decimal("2.50")), one).rows[0] == 2


def test_entries_with_mutable_values_are_decoded_on_every_hit() -> None:
    memo, one = PlanMemo(1 << 20), shape()
    data = entry({"n": [1]})
    first = memo.get(data, one)
    second = memo.get(data, one)
    assert first is not second
    assert first.rows[0] is not second.rows[0]
    assert len(memo) == 0


def test_the_memo_keeps_at_most_max_bytes_of_entries() -> None:
    one = shape()
    entries = [entry(i, "x" * 20) for i in range(3)]
    memo = PlanMemo(2 * len(entries[0]))
    plans = [memo.get(data, one) for data in entries]
    assert len(memo) == 2
    assert memo.get(entries[2], one) is plans[2]
    assert memo.get(entries[0], one) is not plans[0]  # the oldest went first
    nothing = PlanMemo(0)
    nothing.get(entries[0], one)
    assert len(nothing) == 0
