"""Finding the line of application code that caused a statement.

The walk starts at the engine event and goes outwards through the callers until it meets a
frame that belongs to neither SQLAlchemy, ormtune nor the standard library. Under asyncio,
SQLAlchemy runs the synchronous engine inside a greenlet whose frame chain ends at the greenlet
boundary; the walk then continues in the parent greenlet's suspended frame, which leads back to
the application's coroutine (``await session.execute(...)``).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import CodeType, FrameType

# greenlet is only needed (and installed) for SQLAlchemy's asyncio support.
_HAS_GREENLET = find_spec("greenlet") is not None
if _HAS_GREENLET:
    from greenlet import getcurrent as _current_greenlet

__all__ = ["CallSite", "find_callsite"]

_LIBRARY_MODULES = ("sqlalchemy", "ormtune", "greenlet")
_STDLIB_DIRS = tuple(
    {
        os.path.normcase(os.path.realpath(sysconfig.get_paths()[name])) + os.sep
        for name in ("stdlib", "platstdlib")
    }
)


@dataclass(frozen=True, slots=True)
class CallSite:
    """A line of application code: file, line number and function name."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        path = self.filename
        cwd = os.getcwd() + os.sep
        if path.startswith(cwd):
            path = path[len(cwd) :]
        return f"{path}:{self.lineno} in {self.function}"


# skip_modules -> id(code object) -> (the code object, is it library code?). Filled lazily;
# code objects live as long as their module, and the entry holds its own so that its id cannot
# be reused by another. Keyed by id: hashing a code object hashes its bytecode, names and
# constants every time (CPython keeps no hash on it), which made this lookup the walk's cost.
_is_library_code: dict[tuple[str, ...], dict[int, tuple[CodeType, bool]]] = {}


def _classify(frame: FrameType, skip_modules: tuple[str, ...]) -> bool:
    module = frame.f_globals.get("__name__", "")
    if isinstance(module, str):
        for prefix in (*_LIBRARY_MODULES, *skip_modules):
            if module == prefix or module.startswith(prefix + "."):
                return True
    filename = frame.f_code.co_filename
    if filename.startswith("<frozen "):
        return True
    return os.path.normcase(os.path.realpath(filename)).startswith(_STDLIB_DIRS)


def find_callsite(skip_modules: tuple[str, ...] = (), depth: int = 1) -> CallSite | None:
    """The first caller outside SQLAlchemy, ormtune, the standard library and ``skip_modules``
    (module name prefixes), or None if every frame is library code.

    The walk runs once per statement wherever call-sites are wanted, through some thirty
    frames of SQLAlchemy, so it is kept to a dictionary lookup per frame; under asyncio it
    crosses from SQLAlchemy's greenlet into the parent greenlet's suspended frames.
    """
    known = _is_library_code.get(skip_modules)
    if known is None:
        known = _is_library_code.setdefault(skip_modules, {})
    frame: FrameType | None = sys._getframe(depth)
    greenlet = None
    while True:
        while frame is not None:
            code = frame.f_code
            entry = known.get(id(code))
            if entry is None or entry[0] is not code:
                entry = known[id(code)] = (code, _classify(frame, skip_modules))
            if not entry[1]:
                return CallSite(code.co_filename, frame.f_lineno, code.co_name)
            frame = frame.f_back
        # Out of frames: under asyncio, go on in the greenlet that started this one.
        if not _HAS_GREENLET:
            return None
        greenlet = (_current_greenlet() if greenlet is None else greenlet).parent
        if greenlet is None:
            return None
        frame = greenlet.gr_frame
