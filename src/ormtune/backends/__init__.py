"""Cache backends: where cached query results and the versions of their dependencies live.

``MemoryBackend`` keeps everything in the process (the default). ``RedisBackend`` shares
entries and versions across processes and hosts through Redis; ``TwoTierBackend`` puts a
per-process memory tier in front of it. All implement :class:`ormtune.typing.CacheBackend`
and share one version scheme that never repeats a version once a token was bumped (see
``_scheme.py``). The ``redis`` package is imported only when a Redis backend is built.
"""

from __future__ import annotations

from ormtune.backends._memory import MemoryBackend, MemoryStats
from ormtune.backends._redis import RedisBackend
from ormtune.backends._twotier import TwoTierBackend, TwoTierStats

__all__ = ["MemoryBackend", "MemoryStats", "RedisBackend", "TwoTierBackend", "TwoTierStats"]
