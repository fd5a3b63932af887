"""Two small pieces every ormtune hook shares: listeners installed while anyone needs them, and a
handle that ends a registration exactly once."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = ["Registration", "SharedHooks"]


class SharedHooks:
    """Event listeners installed by the first :meth:`acquire` and removed by the last
    :meth:`release`, so an application that uses none of ormtune's features pays nothing."""

    __slots__ = ("_install", "_lock", "_remove", "_users")

    def __init__(self, install: Callable[[], None], remove: Callable[[], None]) -> None:
        self._install = install
        self._remove = remove
        self._lock = threading.Lock()
        self._users = 0

    @property
    def active(self) -> bool:
        """Whether anyone holds the listeners (one attribute read: for per-query checks)."""
        return self._users > 0

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                self._install()

    def release(self) -> None:
        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                self._remove()


class Registration:
    """Something registered until :meth:`close` (or the end of its ``with`` block); closing twice
    is harmless."""

    __slots__ = ("_closed", "_on_close")

    def __init__(self, on_close: Callable[[], None]) -> None:
        self._on_close = on_close
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._on_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
