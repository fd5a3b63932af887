"""N+1 checks for test suites: a detection that fails the test."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ormtune.nplusone import Detection
from ormtune.nplusone._settings import DEFAULT_REPEATED_THRESHOLD, settings

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["assert_no_nplusone"]


def assert_no_nplusone(
    *,
    allow: Iterable[str] = (),
    allow_callsites: Iterable[str] = (),
    repeated_threshold: int | None = DEFAULT_REPEATED_THRESHOLD,
    skip_modules: Iterable[str] = (),
    unused_eager: bool = False,
) -> Detection:
    """Fail the block on an N+1 or a repeated query: ``with assert_no_nplusone(): ...``.

    It is :func:`ormtune.nplusone.detect` in ``"raise"`` mode: an N+1 raises
    :class:`~ormtune.exceptions.NPlusOneError` at its second lazy load, inside the loop;
    repeated queries raise it when the block ends. Objects must be loaded while cohort tracking
    is on (the pytest fixture of the same name turns it on for the whole test).
    ``unused_eager=True`` also fails it, when it ends, on relationships loaded eagerly in it
    and never read.
    """
    return Detection(
        settings(
            "raise",
            allow,
            allow_callsites,
            repeated_threshold,
            skip_modules,
            caller="assert_no_nplusone()",
            unused_eager=unused_eager,
        )
    )
