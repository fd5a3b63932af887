"""Label values with a ceiling: whatever an application does, a metric keeps a bounded number of
series, because every distinct label value is a time series Prometheus stores for ever."""

from __future__ import annotations

import threading

__all__ = ["OVERFLOW", "BoundedLabel", "status_class"]

OVERFLOW = "other"
"""The value every label value past the ceiling is recorded under."""


class BoundedLabel:
    """Passes the first ``limit`` distinct values through and maps every later one to
    :data:`OVERFLOW`; empty or missing values become ``"none"``.

    Route templates, table names and relationship names are bounded by the application's code,
    so the ceiling is a guard against a bug (a raw path used as a route), not a sampling
    scheme: it is never reached by a well-behaved application.
    """

    __slots__ = ("_lock", "_seen", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            return "none"
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self.limit:
                return OVERFLOW
            self._seen.add(value)
            return value


_STATUS_CLASSES = {code: f"{code}xx" for code in range(1, 6)}


def status_class(status: int) -> str:
    """``"2xx"`` for 204; ``"other"`` for anything outside 100-599."""
    return _STATUS_CLASSES.get(status // 100, OVERFLOW)
