"""Statement building shared by every repository: filters, ordering, keyset cursors, eager
loads. Pure functions over a mapped class; nothing here executes anything."""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

from sqlalchemy import BigInteger, ColumnElement, Integer, SmallInteger, and_, inspect, or_
from sqlalchemy.orm import (
    ColumnProperty,
    Mapper,
    QueryableAttribute,
    RelationshipProperty,
    joinedload,
    selectinload,
)
from sqlalchemy.orm.interfaces import ORMOption

from ormtune.exceptions import ConfigurationError, InvalidCursorError, UnknownFieldError
from ormtune.integrity import jsonable

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sqlalchemy.orm.strategy_options import _AbstractLoad

__all__ = [
    "LoadSpec",
    "OrderSpec",
    "Page",
    "check_keyset",
    "decode_cursor",
    "encode_cursor",
    "fields_of",
    "keyset_where",
    "loader_options",
    "mapper_of",
    "order_columns",
    "top_relationships",
    "where_from_filters",
]

M = TypeVar("M")

LoadSpec: TypeAlias = "QueryableAttribute[Any] | tuple[QueryableAttribute[Any], ...] | ORMOption"
"""One declared eager load: a relationship attribute, a path of them, or a loader option."""

OrderSpec: TypeAlias = "str | ColumnElement[Any] | QueryableAttribute[Any]"
"""One ordering term: ``"field"``, ``"-field"`` (descending), or a SQL expression."""


@dataclass(frozen=True, slots=True)
class Page(Generic[M]):
    """One page of keyset pagination: the items, and the cursor of the next page (``None`` on
    the last page). Pass ``next_cursor`` as ``after=`` to get the next page."""

    items: list[M]
    next_cursor: str | None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None


def fields_of(mapper: Mapper[Any]) -> dict[str, QueryableAttribute[Any]]:
    """The column attributes of a mapper, by attribute name."""
    return {prop.key: getattr(mapper.class_, prop.key) for prop in mapper.column_attrs}


def _field(mapper: Mapper[Any], name: str, what: str) -> QueryableAttribute[Any]:
    fields = fields_of(mapper)
    try:
        return fields[name]
    except KeyError:
        valid = sorted(fields)
        raise UnknownFieldError(
            f"{mapper.class_.__name__} has no field {name!r} ({what}); "
            f"valid fields: {', '.join(valid)}",
            field=name,
            valid=valid,
        ) from None


_OPERATORS = {
    "eq": lambda c, v: c.is_(None) if v is None else c == v,
    "ne": lambda c, v: c.is_not(None) if v is None else c != v,
    "lt": lambda c, v: c < v,
    "le": lambda c, v: c <= v,
    "lte": lambda c, v: c <= v,
    "gt": lambda c, v: c > v,
    "ge": lambda c, v: c >= v,
    "gte": lambda c, v: c >= v,
    "in": lambda c, v: c.in_(list(v)),
    "not_in": lambda c, v: c.not_in(list(v)),
    "is_null": lambda c, v: c.is_(None) if v else c.is_not(None),
    "like": lambda c, v: c.like(v),
    "ilike": lambda c, v: c.ilike(v),
    "startswith": lambda c, v: c.startswith(v, autoescape=True),
    "contains": lambda c, v: c.contains(v, autoescape=True),
}


def where_from_filters(
    mapper: Mapper[Any], filters: Mapping[str, object] | None
) -> list[ColumnElement[bool]]:
    """``{"status": "paid", "amount__gte": 10}`` as WHERE criteria (``None`` means IS NULL).

    Operators: eq (the default), ne, lt, le/lte, gt, ge/gte, in, not_in, is_null, like, ilike,
    startswith, contains. An unknown field or operator raises
    :class:`~ormtune.exceptions.UnknownFieldError` naming the valid ones.
    """
    criteria: list[ColumnElement[bool]] = []
    for name, value in (filters or {}).items():
        field, _, operator = name.partition("__")
        column = _field(mapper, field, f"in filter {name!r}")
        build = _OPERATORS.get(operator or "eq")
        if build is None:
            valid = sorted(_OPERATORS)
            raise UnknownFieldError(
                f"Unknown filter operator {operator!r} in {name!r}; "
                f"valid operators: {', '.join(valid)}",
                field=name,
                valid=valid,
            )
        criteria.append(build(column, value))
    return criteria


def order_columns(
    mapper: Mapper[Any], order_by: Sequence[OrderSpec] | None, *, tiebreak: bool = True
) -> list[tuple[Any, bool, str | None]]:
    """(column, descending, field name or None) for each term, with the primary key appended
    as a tie-breaker (so offset and keyset pages never skip or repeat rows)."""
    terms: list[tuple[Any, bool, str | None]] = []
    for term in order_by or ():
        if isinstance(term, str):
            descending = term.startswith("-")
            name = term.lstrip("-+")
            terms.append((_field(mapper, name, f"in order_by {term!r}"), descending, name))
        else:
            terms.append((term, False, None))
    if tiebreak:
        named = {name for _, _, name in terms}
        for column in mapper.primary_key:
            key = mapper.get_property_by_column(column).key
            if key not in named:
                terms.append((getattr(mapper.class_, key), False, key))
    return terms


def keyset_where(
    terms: Sequence[tuple[Any, bool, str | None]], values: Sequence[object]
) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the order ``terms`` (mixed directions allowed)."""
    alternatives = []
    for i, (column, descending, _) in enumerate(terms):
        equal = [terms[j][0] == values[j] for j in range(i)]
        beyond = column < values[i] if descending else column > values[i]
        alternatives.append(and_(*equal, beyond))
    return or_(*alternatives)


def check_keyset(mapper: Mapper[Any], terms: Sequence[tuple[Any, bool, str | None]]) -> None:
    """Raise ConfigurationError unless every ordering term is a non-null field."""
    for column, _, name in terms:
        if name is None:
            raise ConfigurationError(
                "keyset pagination orders by field names only ('field' or '-field'), "
                f"not by expressions such as {column!r}"
            )
        prop = mapper.attrs[name]
        if isinstance(prop, ColumnProperty) and prop.columns[0].nullable:
            raise ConfigurationError(
                f"keyset pagination cannot order by {mapper.class_.__name__}.{name}: it is "
                "nullable, and NULLs have no place in a keyset; order by non-null fields"
            )


def _signature(terms: Sequence[tuple[Any, bool, str | None]]) -> list[str]:
    return [("-" if descending else "") + str(name) for _, descending, name in terms]


def encode_cursor(
    mapper: Mapper[Any], terms: Sequence[tuple[Any, bool, str | None]], item: object
) -> str:
    """An opaque cursor holding ``item``'s values of the ordering fields."""
    check_keyset(mapper, terms)
    values = [jsonable(getattr(item, str(name))) for _, _, name in terms]
    raw = json.dumps([_signature(terms), values], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# Signed bits of the integer types, as PostgreSQL and MariaDB store them. SQLite stores 64 bits
# in any INTEGER column.
_INTEGER_BITS = ((BigInteger, 64), (SmallInteger, 16), (Integer, 32))


def _integer_bits(column_type: object, dialect_name: str) -> int:
    if dialect_name == "sqlite":
        return 64
    return next((bits for kind, bits in _INTEGER_BITS if isinstance(column_type, kind)), 64)


def _decode_value(prop: ColumnProperty[Any], raw: object, dialect_name: str) -> object:
    """The value of one ordering field, checked against the field's type: a cursor's values
    come from clients, and one the database cannot compare (a null, a boolean for a number,
    an integer wider than the column) must be an invalid cursor, not a database error."""
    column_type = prop.columns[0].type
    python_type = column_type.python_type
    if raw is None or (isinstance(raw, bool) and python_type is not bool):
        raise ValueError(f"{raw!r} is not a value of {prop.key}")
    if python_type is int:
        bits = _integer_bits(column_type, dialect_name)
        if not isinstance(raw, int) or not -(2 ** (bits - 1)) <= raw < 2 ** (bits - 1):
            raise ValueError(f"{raw!r} is not a value of {prop.key}")
        return raw
    if isinstance(raw, python_type):
        return raw
    if python_type is datetime.datetime:
        return datetime.datetime.fromisoformat(str(raw))
    if python_type is datetime.date:
        return datetime.date.fromisoformat(str(raw))
    if python_type is uuid.UUID and isinstance(raw, str):
        return uuid.UUID(raw)
    if python_type in (decimal.Decimal, float) and isinstance(raw, str | int | float):
        return python_type(raw)
    if python_type in (decimal.Decimal, float, uuid.UUID):
        raise ValueError(f"{raw!r} is not a value of {prop.key}")
    return raw


def decode_cursor(
    mapper: Mapper[Any],
    terms: Sequence[tuple[Any, bool, str | None]],
    cursor: str,
    dialect_name: str = "",
) -> list[object]:
    """The ordering values in ``cursor``; :class:`~ormtune.exceptions.InvalidCursorError` if
    it is corrupt, was made for another ordering, or holds values the fields cannot take
    (checked for the database named by ``dialect_name``)."""
    check_keyset(mapper, terms)
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        signature, values = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if signature != _signature(terms) or len(values) != len(terms):
            raise InvalidCursorError(
                f"This cursor was made for ordering {signature}, not {_signature(terms)}; "
                "start again without a cursor"
            )
        return [
            _decode_value(mapper.attrs[str(name)], value, dialect_name)  # type: ignore[arg-type]
            for (_, _, name), value in zip(terms, values, strict=True)
        ]
    except InvalidCursorError:
        raise
    except (ValueError, TypeError, ArithmeticError, binascii.Error) as exc:
        raise InvalidCursorError(f"Not a valid pagination cursor: {cursor!r}") from exc


def loader_options(specs: Sequence[LoadSpec]) -> list[ORMOption]:
    """Declared loads as loader options: collections by ``selectinload``, scalar (many-to-one,
    one-to-one) relationships by ``joinedload``; loader options pass through unchanged."""
    options: list[ORMOption] = []
    for spec in specs:
        if isinstance(spec, ORMOption):
            options.append(spec)
            continue
        path = spec if isinstance(spec, tuple) else (spec,)
        option: _AbstractLoad | None = None
        for attribute in path:
            prop = getattr(attribute, "property", None)
            if not isinstance(prop, RelationshipProperty):
                raise ConfigurationError(
                    f"declared loads name relationships, and {attribute!r} is not one"
                )
            if option is None:
                option = selectinload(attribute) if prop.uselist else joinedload(attribute)
            else:
                option = (
                    option.selectinload(attribute) if prop.uselist else option.joinedload(attribute)
                )
        if option is not None:
            options.append(option)
    return options


def top_relationships(specs: Sequence[LoadSpec]) -> list[str]:
    """The first relationship of each declared path (what ``get`` checks is loaded)."""
    names = []
    for spec in specs:
        if isinstance(spec, ORMOption):
            continue
        first = spec[0] if isinstance(spec, tuple) else spec
        names.append(first.key)
    return names


def mapper_of(model: type[object]) -> Mapper[Any]:
    mapper = inspect(model, raiseerr=False)
    if not isinstance(mapper, Mapper):
        raise ConfigurationError(f"{model!r} is not a mapped class")
    return mapper
