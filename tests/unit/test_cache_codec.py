"""The plain-data codec of cached values: every supported type round-trips exactly, stored
bytes can only ever decode to data, and anything else is refused."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import ipaddress
import math
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ormtune.caching._codec import Undecodable, Unencodable, decode, encode, register_enum
from ormtune.caching._shape import nondeterministic_call
from ormtune.caching._tokens import table_group, value_member


class Colour(enum.Enum):
    RED = "r"
    BLUE = "b"


class Unregistered(enum.Enum):
    X = 1


register_enum(Colour)

VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    1.5,
    float("inf"),
    "",
    "ünïcode ✓",
    decimal.Decimal("12.3400"),
    decimal.Decimal("-0"),
    dt.datetime(2026, 11, 22, 8, 0, 1, 5),
    dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    dt.date(2026, 1, 31),
    dt.time(23, 59, 59, 999999),
    dt.timedelta(days=-2, seconds=5, microseconds=7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00\xffbytes",
    Colour.BLUE,
    ipaddress.ip_address("10.0.0.1"),
    ipaddress.ip_network("2001:db8::/32"),
    [1, [2, "x"], {"nested": decimal.Decimal("1.1")}],
    (1, "tuple"),
    {"~": "looks like a tag", "v": 1},
    {"a": None, "b": [dt.date(2020, 2, 29)]},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip_keeps_value_and_type(value: Any) -> None:
    decoded = decode(encode(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_nan_round_trips() -> None:
    decoded = decode(encode(float("nan")))
    assert math.isnan(decoded)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(json_values)
def test_any_json_document_round_trips(value: Any) -> None:
    assert decode(encode(value)) == value


@pytest.mark.parametrize("value", [object(), Unregistered.X, {1, 2}, frozenset({3})])
def test_other_types_are_refused(value: Any) -> None:
    with pytest.raises(Unencodable):
        encode(value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{not json",
        b'{"~": "nope", "v": 1}',
        b'{"~": "e", "c": "os:system", "v": "ls"}',
        b'{"~": "d", "v": "not a number"}',
        b"\xff\xfe",
    ],
)
def test_bad_bytes_are_undecodable_never_executed(data: bytes) -> None:
    with pytest.raises(Undecodable):
        decode(data)


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        ("SELECT now()", "now"),
        ("SELECT id FROM t WHERE created < CURRENT_TIMESTAMP", "current_timestamp"),
        ("SELECT random() AS r", "random"),
        ("SELECT t.now_column FROM t", None),
        ("SELECT id FROM t WHERE nowhere = 1", None),
        ("SELECT id FROM t", None),
    ],
)
def test_nondeterministic_functions_are_found(sql: str, found: str | None) -> None:
    assert nondeterministic_call(sql) == found


@pytest.mark.parametrize(
    ("name", "group"),
    [("payments", "payments"), ('public."Payments"', "payments"), ("`db`.`t`", "t")],
)
def test_table_groups_ignore_schema_and_quoting(name: str, group: str) -> None:
    assert table_group(name) == group


def test_fine_members_only_for_exact_types() -> None:
    assert value_member("user_id", 7) == "user_id=i:7"
    assert value_member("user_id", True) is None
    assert value_member("user_id", "7") is None
    key = uuid.UUID(int=5)
    assert value_member("ref", key) == f"ref=u:{key.hex}"
