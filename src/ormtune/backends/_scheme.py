"""The version scheme every ormtune backend shares, and why it is ABA-free.

A token is ``(group, member)``; a group is one table of one database. A backend keeps each
group's members together, and gives the group a *generation* when it creates it: a number
drawn from a sequence that only grows (in-process: a counter; Redis: ``INCR`` of one key per
namespace, floored by the server clock, see ``_redis.py``). A member's version is its
generation and a per-member bump counter packed into one int::

    version = generation << COUNTER_BITS | counter

A member that was never bumped has counter 0, so its version is stable until it is bumped
(or its group is dropped). A bump increments the counter. Whenever a group disappears, for
any reason (evicted under memory pressure, dropped because it grew past its member bound,
flushed, or the counter would overflow), it is re-created with a *new* generation, so every
version it can report afterwards differs from every version it reported before.

Why no version repeats (ABA-freedom): two reads of a member give the same version only if
they see the same generation and the same counter. Within one generation the counter only
grows; a generation is never issued twice; so once a member has been read as ``v`` and then
bumped, it reads as ``(g, c + k)`` with ``k >= 1`` or as ``(g', c')`` with ``g' != g``,
never as ``v`` again. ``clear()`` drops entries only, never generations or counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

COUNTER_BITS: Final = 32
"""Bits of a version that count bumps within one generation; a group is reset before its
counter would reach ``2**COUNTER_BITS``."""

COUNTER_LIMIT: Final = (1 << COUNTER_BITS) - 1
_COUNTER_MASK: Final = COUNTER_LIMIT

HEADER_MAGIC: Final = "OT1 "
"""First bytes of a framed entry (see :func:`header`)."""


def pack(generation: int, counter: int) -> int:
    """One version from a generation and a bump counter."""
    return generation << COUNTER_BITS | counter


def header_versions(frame: bytes) -> tuple[int, ...]:
    """The versions a :func:`header` names (``frame`` as bytes, newline included)."""
    body = frame[len(HEADER_MAGIC) : -1]
    if not body:
        return ()
    return tuple(
        int(generation) << COUNTER_BITS | int(counter)
        for generation, _, counter in (part.partition(b".") for part in body.split(b","))
    )


def header(versions: Iterable[int]) -> str:
    """The frame that precedes an entry's value in a remote store.

    ``"OT1 <gen>.<counter>,<gen>.<counter>,...\\n"``: the versions the entry was stored with,
    in the caller's token order. The newline ends it and occurs nowhere else in it, so an
    entry is valid exactly when the header built from the *current* versions is a prefix of
    it, which a Lua script checks with one string comparison and no parsing.
    """
    return (
        HEADER_MAGIC + ",".join(f"{v >> COUNTER_BITS}.{v & _COUNTER_MASK}" for v in versions) + "\n"
    )
