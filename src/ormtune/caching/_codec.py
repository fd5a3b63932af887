"""Plain-data encoding of cached values: JSON with a few tagged types, never pickle.

Cached rows may be read by another process from a shared store, so they are encoded as data
that can only ever decode to data: JSON, with the Python types database drivers return
(``Decimal``, ``datetime``, ``UUID``, ``bytes``, ...) tagged as ``{"~": tag, "v": value}``.
Dictionaries (JSON columns) are tagged too, so a stored dictionary that happens to have a
``"~"`` key can never be mistaken for a tag. Enum members decode only to enum classes the
process registered from its own mapped columns, so stored bytes cannot name arbitrary code.
A value of any other type raises :class:`Unencodable`, and the result is not cached.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import ipaddress
import json
import math
import uuid
from typing import Any

__all__ = ["Undecodable", "Unencodable", "decode", "encode", "encode_key_part", "register_enum"]


class Unencodable(TypeError):
    """A value has a type the cache cannot store as plain data."""


class Undecodable(ValueError):
    """Stored bytes are not a valid encoding (corrupt, or written by an incompatible version)."""


_ENUMS: dict[str, type[enum.Enum]] = {}


def _enum_name(cls: type[enum.Enum]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_enum(cls: type[enum.Enum]) -> None:
    """Allow members of ``cls`` to be decoded (called for the enum types of mapped columns)."""
    _ENUMS[_enum_name(cls)] = cls


_PLAIN = frozenset({str, int, bool, type(None)})


def _enc(value: Any) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        return {"~": "f", "v": repr(value)}
    if kind is list or kind is tuple:
        items = [_enc(item) for item in value]
        return items if kind is list else {"~": "tu", "v": items}
    if kind is dict:
        return {"~": "m", "v": [[_enc(k), _enc(v)] for k, v in value.items()]}
    if kind is decimal.Decimal:
        return {"~": "d", "v": str(value)}
    if kind is dt.datetime:
        return {"~": "dt", "v": value.isoformat()}
    if kind is dt.date:
        return {"~": "da", "v": value.isoformat()}
    if kind is dt.time:
        return {"~": "ti", "v": value.isoformat()}
    if kind is dt.timedelta:
        return {"~": "td", "v": [value.days, value.seconds, value.microseconds]}
    if kind is uuid.UUID:
        return {"~": "u", "v": value.hex}
    if kind is bytes or kind is bytearray or kind is memoryview:
        return {"~": "b", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, enum.Enum):
        name = _enum_name(type(value))
        if name not in _ENUMS:
            raise Unencodable(f"enum {name} is not the type of a mapped column")
        return {"~": "e", "c": name, "v": value.name}
    if kind in _IP_TYPES:
        return {"~": "ip", "c": _IP_TYPES[kind], "v": str(value)}
    raise Unencodable(f"a value of type {kind.__module__}.{kind.__qualname__} cannot be cached")


_IP_TYPES: dict[type, str] = {
    ipaddress.IPv4Address: "a4",
    ipaddress.IPv6Address: "a6",
    ipaddress.IPv4Network: "n4",
    ipaddress.IPv6Network: "n6",
    ipaddress.IPv4Interface: "i4",
    ipaddress.IPv6Interface: "i6",
}
_IP_CLASSES: dict[str, Any] = {tag: cls for cls, tag in _IP_TYPES.items()}


def _ip(d: dict[str, Any]) -> Any:
    return _IP_CLASSES[d["c"]](d["v"])


def _enum(d: dict[str, Any]) -> Any:
    return _ENUMS[d["c"]][d["v"]]


_DECODERS: dict[str, Any] = {
    "f": lambda d: float(d["v"]),
    "tu": lambda d: tuple(d["v"]),
    "m": lambda d: dict(d["v"]),
    "d": lambda d: decimal.Decimal(d["v"]),
    "dt": lambda d: dt.datetime.fromisoformat(d["v"]),
    "da": lambda d: dt.date.fromisoformat(d["v"]),
    "ti": lambda d: dt.time.fromisoformat(d["v"]),
    "td": lambda d: dt.timedelta(days=d["v"][0], seconds=d["v"][1], microseconds=d["v"][2]),
    "u": lambda d: uuid.UUID(hex=d["v"]),
    "b": lambda d: base64.b64decode(d["v"]),
    "e": _enum,
    "ip": _ip,
}


def _object_hook(d: dict[str, Any]) -> Any:
    return _DECODERS[d["~"]](d)


def encode(value: Any) -> bytes:
    """Plain-data bytes for ``value``; raises :class:`Unencodable` for unsupported types."""
    return json.dumps(_enc(value), separators=(",", ":"), ensure_ascii=False).encode()


def encode_key_part(value: Any) -> str:
    """A stable text form of ``value`` for building cache keys (same rules as :func:`encode`)."""
    return json.dumps(_enc(value), separators=(",", ":"), sort_keys=True)


_DECODER = json.JSONDecoder(object_hook=_object_hook)


def decode(data: bytes) -> Any:
    """The value :func:`encode` was given; raises :class:`Undecodable` for anything else."""
    try:
        return _DECODER.decode(data.decode())
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, ArithmeticError) as exc:
        raise Undecodable(f"cached bytes cannot be decoded: {exc}") from exc
