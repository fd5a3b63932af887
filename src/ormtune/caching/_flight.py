"""Single flight: concurrent misses on one key run the query once per process.

The first caller of a key becomes its leader and fills the entry; callers that miss on the
same key meanwhile wait (bounded by ``timeout``) and then look it up again. Threads wait on a
``threading.Event``; asyncio tasks on a future of their own event loop, so a waiting task
never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["AsyncSingleFlight", "SingleFlight"]


class SingleFlight:
    """Leader election per key among threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, threading.Event] = {}

    def lead_or_wait(self, key: str, timeout: float) -> bool:
        """``True``: the caller leads and must call :meth:`land`. ``False``: another caller
        led; it has landed (or ``timeout`` passed), so look the key up again."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                self._flights[key] = threading.Event()
                return True
        flight.wait(timeout)
        return False

    def land(self, key: str) -> None:
        with self._lock:
            flight = self._flights.pop(key, None)
        if flight is not None:
            flight.set()


class AsyncSingleFlight:
    """Leader election per key among the tasks of one event loop."""

    def __init__(self) -> None:
        self._flights: dict[tuple[int, str], asyncio.Future[None]] = {}

    async def lead_or_wait(self, key: str, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        slot = (id(loop), key)
        flight = self._flights.get(slot)
        if flight is None:
            self._flights[slot] = loop.create_future()
            return True
        with contextlib.suppress(TimeoutError):  # the leader is slow: fill it ourselves
            await asyncio.wait_for(asyncio.shield(flight), timeout)
        return False

    def land(self, key: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        flight = self._flights.pop((id(loop), key), None)
        if flight is not None and not flight.done():
            flight.set_result(None)
