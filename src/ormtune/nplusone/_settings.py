"""What a detection is told to do, checked once, with errors that name the bad argument."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Final, Literal, cast

from ormtune.exceptions import ConfigurationError

if TYPE_CHECKING:
    from ormtune.querylog import CallSite

__all__ = ["DEFAULT_REPEATED_THRESHOLD", "MODES", "Mode", "Settings", "settings"]

Mode = Literal["off", "log", "warn", "raise"]
"""``off``: nothing is recorded. ``log``: each finding is logged to the ``ormtune.nplusone``
logger at WARNING. ``warn``: each finding is an :class:`~ormtune.exceptions.NPlusOneWarning`
at the line of the loop. ``raise``: :class:`~ormtune.exceptions.NPlusOneError`, at the second
lazy load for an N+1, at the end of the block for repeated queries and unused eager loads."""

MODES: Final[tuple[Mode, ...]] = ("off", "log", "warn", "raise")

DEFAULT_REPEATED_THRESHOLD: Final = 5
"""A SELECT run this many times from one line in one unit of work is reported. Five, as
Sentry's N+1 detector uses: two or three runs of one statement are common in honest code
(a retry, a page and its count), five from one line is a loop."""


@dataclass(frozen=True, slots=True)
class Settings:
    """A detection's checked configuration."""

    mode: Mode
    allow: tuple[str, ...]
    allow_callsites: tuple[str, ...]
    repeated_threshold: int | None
    skip_modules: tuple[str, ...]
    unused_eager: bool = False

    def allows(self, relationship: str | None, callsite: CallSite | None) -> bool:
        """Whether the allow-lists exempt a finding on ``relationship`` at ``callsite``."""
        if relationship is not None and any(fnmatchcase(relationship, p) for p in self.allow):
            return True
        if callsite is None or not self.allow_callsites:
            return False
        names = _callsite_names(callsite)
        return any(fnmatchcase(name, p) for p in self.allow_callsites for name in names)


def _callsite_names(callsite: CallSite) -> list[str]:
    """``file:line`` and ``file:function``, with the file absolute and relative to the working
    directory, so that ``*/reports.py:*``, ``app/reports.py:120`` and ``*:build_report`` all
    match as written."""
    files = [callsite.filename]
    cwd = os.getcwd() + os.sep
    if callsite.filename.startswith(cwd):
        files.append(callsite.filename[len(cwd) :])
    return [f"{f}:{part}" for f in files for part in (str(callsite.lineno), callsite.function)]


def _type_name(value: object) -> str:
    return type(value).__qualname__


def _mode(value: object, caller: str) -> Mode:
    choices = ", ".join(repr(mode) for mode in MODES)
    if not isinstance(value, str):
        raise TypeError(
            f"{caller} mode must be one of {choices}, but was given {value!r} "
            f"(of type {_type_name(value)})"
        )
    if value not in MODES:
        raise ConfigurationError(f"{caller} mode must be one of {choices}, but was given {value!r}")
    return value


def _strings(value: object, what: str, example: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        given = f"the string {value!r}" if isinstance(value, str) else repr(value)
        raise TypeError(
            f"{what} must be a list or tuple of strings, as in ({example!r},), "
            f"but was given {given}"
        )
    entries = tuple(cast("Iterable[object]", value))
    for entry in entries:
        if not isinstance(entry, str):
            raise TypeError(
                f"{what} entries must be strings, but was given {entry!r} "
                f"(of type {_type_name(entry)})"
            )
        if not entry:
            raise ConfigurationError(f"{what} entries must not be empty")
    return cast("tuple[str, ...]", entries)


def _relationship_patterns(value: object, caller: str) -> tuple[str, ...]:
    patterns = _strings(value, f"{caller} allow", "User.payments")
    for pattern in patterns:
        head, dot, tail = pattern.rpartition(".")
        if not dot or not head or not tail:
            raise ConfigurationError(
                f"{caller} allow entries name relationships as 'Class.attribute' (wildcards "
                f"allowed, as in 'User.*'), but was given {pattern!r}; to allow a line of "
                f"code, use allow_callsites"
            )
    return patterns


def _threshold(value: object, caller: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{caller} repeated_threshold must be a whole number (or None to turn repeated-query "
            f"detection off), but was given {value!r} (of type {_type_name(value)})"
        )
    if value < 2:
        raise ConfigurationError(
            f"{caller} repeated_threshold must be 2 or more (a statement that runs once is not "
            f"repeated), but was given {value}"
        )
    return value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(
            f"{what} must be True or False, but was given {value!r} (of type {_type_name(value)})"
        )
    return value


def settings(
    mode: object,
    allow: object,
    allow_callsites: object,
    repeated_threshold: object,
    skip_modules: object,
    *,
    caller: str,
    unused_eager: object = False,
) -> Settings:
    """Check every argument, raising ``TypeError`` for a wrong type and
    :class:`~ormtune.exceptions.ConfigurationError` for a value ormtune cannot use; ``caller``
    (``"detect()"``, ``"@pytest.mark.nplusone"``) starts each message."""
    return Settings(
        mode=_mode(mode, caller),
        allow=_relationship_patterns(allow, caller),
        allow_callsites=_strings(allow_callsites, f"{caller} allow_callsites", "*/reports.py:*"),
        repeated_threshold=_threshold(repeated_threshold, caller),
        skip_modules=_strings(skip_modules, f"{caller} skip_modules", "myapp.repositories"),
        unused_eager=_flag(unused_eager, f"{caller} unused_eager"),
    )
