"""The application's configuration: which mode, which database, which cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, cast, get_args

__all__ = ["DEFAULT_DATABASE_URL", "Mode", "Settings"]

Mode = Literal["naive", "tuned", "handwritten"]
MODES: tuple[Mode, ...] = get_args(Mode)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///marketplace.db"


@dataclass(frozen=True, slots=True)
class Settings:
    """How one application instance runs.

    * ``mode``: ``naive`` (ormtune not installed: plain lazy loading, no cache), ``tuned``
      (the same code with ormtune installed: autoload, query cache, metrics, middleware) or
      ``handwritten`` (explicit loader options in the repositories, no autoload, no cache).
    * ``database_url``: an asyncio URL (``sqlite+aiosqlite``, ``postgresql+asyncpg``,
      ``mariadb+aiomysql``); a sync URL of the same database is accepted and mapped to its
      asyncio driver.
    * ``redis_url``: tuned mode only; None keeps the cache in this process's memory, a URL
      shares it through Redis (keys under ``cache_prefix``).
    * ``token_ttl_seconds``: how long an access token is valid.
    * ``pool_size``: server databases' connection pool (as many again may overflow).
    """

    mode: Mode = "tuned"
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    token_ttl_seconds: int = 12 * 3600
    cache_prefix: str = "marketplace"
    pool_size: int = 20

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"mode must be one of {', '.join(MODES)}, not {self.mode!r} "
                "(set MARKETPLACE_MODE or pass --mode)"
            )
        if self.token_ttl_seconds <= 0:
            raise ValueError(f"token_ttl_seconds must be positive, not {self.token_ttl_seconds}")
        if self.pool_size <= 0:
            raise ValueError(f"pool_size must be positive, not {self.pool_size}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings from ``MARKETPLACE_MODE``, ``MARKETPLACE_DATABASE_URL``,
        ``MARKETPLACE_REDIS_URL``, ``MARKETPLACE_TOKEN_TTL``, ``MARKETPLACE_CACHE_PREFIX`` and
        ``MARKETPLACE_POOL_SIZE`` (each optional)."""
        env = os.environ if environ is None else environ
        mode = env.get("MARKETPLACE_MODE", "tuned")
        return cls(
            mode=cast("Mode", mode),
            database_url=env.get("MARKETPLACE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=env.get("MARKETPLACE_REDIS_URL") or None,
            token_ttl_seconds=int(env.get("MARKETPLACE_TOKEN_TTL", 12 * 3600)),
            cache_prefix=env.get("MARKETPLACE_CACHE_PREFIX", "marketplace"),
            pool_size=int(env.get("MARKETPLACE_POOL_SIZE", 20)),
        )
