"""Cost of a cache hit: one ORM query returning 10 entities, served by each cache.

Every variant runs the same statement (``select(Payment).where(Payment.user_id == u)``,
10 rows, a fresh ``Session`` per query, users rotating over 50 warmed keys) on PostgreSQL:

* ``no query``: only what every variant pays around the query (the statement, its cache
  key, opening and closing a ``Session``), for scale;
* ``sqlalchemy``: no cache, the query runs;
* ``ormtune memory`` / ``redis`` / ``two-tier``: ``ormtune.cache()`` over each backend;
* ``dogpile memory`` / ``redis``: dogpile.cache regions wired the way SQLAlchemy's
  ``examples/dogpile_caching`` wires them (a ``do_orm_execute`` hook storing
  ``result.freeze()``, served with ``merge_frozen_result(load=False)``);
* ``cashews redis`` and ``ormtune redis``, both under ``AsyncSession`` (cashews is asyncio
  only), the hook awaiting cashews through SQLAlchemy's greenlet bridge.

Each round runs every variant once, in rotating order; the table shows the median time per
query over rounds and the ratio to the uncached query. Run:
``.venv-bench/bin/python bench/cache_hit.py [--rounds N] [--postgres URL] [--redis URL]``
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any

from _harness import DEFAULT_POSTGRES, median, print_report, scratch_postgres
from sqlalchemy import ForeignKey, Numeric, String, create_engine, event, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    UserDefinedOption,
    loading,
    mapped_column,
)
from sqlalchemy.util import await_only

from ormtune.backends import MemoryBackend, RedisBackend, TwoTierBackend
from ormtune.caching import QueryCache, cache

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.orm import ORMExecuteState
    from sqlalchemy.sql.base import ExecutableOption

USERS = 50
PER_ROUND = 200


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Payment(Base):
    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    amount: Mapped[float] = mapped_column(Numeric(10, 2))
    note: Mapped[str] = mapped_column(String(100))


def statement(user_id: int, option: ExecutableOption | None) -> Any:
    stmt = select(Payment).where(Payment.user_id == user_id).order_by(Payment.id)
    return stmt.options(option) if option is not None else stmt


class PeerOption(UserDefinedOption):
    """Marks a statement for the peer hooks below (their equivalent of ``cache()``)."""

    propagate_to_loaders = False


class DogpileHook:
    """dogpile.cache the way SQLAlchemy's examples/dogpile_caching uses it."""

    def __init__(self, region: Any, namespace: str = "") -> None:
        self.region = region
        self.namespace = namespace
        self.compiled: dict[Any, str] = {}

    def __call__(self, state: ORMExecuteState) -> Any:
        if not any(isinstance(o, PeerOption) for o in state.user_defined_options):
            return None
        key = state.statement._generate_cache_key().to_offline_string(  # type: ignore[attr-defined]
            self.compiled, state.statement, state.parameters or {}
        )
        frozen = self.region.get_or_create(key, lambda: state.invoke_statement().freeze())
        merge: Any = loading.merge_frozen_result
        return merge(state.session, state.statement, frozen, load=False)()


class CashewsHook(DogpileHook):
    """cashews on Redis, awaited from the ORM hook through SQLAlchemy's greenlet bridge."""

    def __call__(self, state: ORMExecuteState) -> Any:
        if not any(isinstance(o, PeerOption) for o in state.user_defined_options):
            return None
        key = state.statement._generate_cache_key().to_offline_string(  # type: ignore[attr-defined]
            self.compiled, state.statement, state.parameters or {}
        )
        key = self.namespace + key
        frozen = await_only(self.region.get(key))
        if frozen is None:
            frozen = state.invoke_statement().freeze()
            await_only(self.region.set(key, frozen, expire=300))
        merge: Any = loading.merge_frozen_result
        return merge(state.session, state.statement, frozen, load=False)()


class Variant:
    """One way of running the query: install its hook, run a batch, remove the hook."""

    def __init__(
        self,
        install: Callable[[], object],
        remove: Callable[[], None],
        batch: Callable[[], None],
    ) -> None:
        self.install = install
        self.remove = remove
        self.batch = batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    from cashews import Cache
    from dogpile.cache import make_region

    prefix = f"bench-{secrets.token_hex(4)}"
    with scratch_postgres(args.postgres, "ormtune_cache_bench") as url:
        engine = create_engine(url)
        async_engine = create_async_engine(url.set(drivername="postgresql+asyncpg"))
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add_all(User(id=u, name=f"user {u}") for u in range(1, USERS + 1))
            session.flush()
            for u in range(1, USERS + 1):
                session.add_all(Payment(user_id=u, amount=i, note="x" * 40) for i in range(10))
            session.commit()

        def sync_batch(option: ExecutableOption | None) -> Callable[[], None]:
            def run() -> None:
                for i in range(PER_ROUND):
                    with Session(engine) as session:
                        rows = session.scalars(statement(1 + i % USERS, option)).all()
                        assert len(rows) == 10

            return run

        loop = asyncio.new_event_loop()

        def async_batch(option: ExecutableOption | None) -> Callable[[], None]:
            async def run() -> None:
                for i in range(PER_ROUND):
                    async with AsyncSession(async_engine) as session:
                        rows = (await session.scalars(statement(1 + i % USERS, option))).all()
                        assert len(rows) == 10

            return lambda: loop.run_until_complete(run())

        caches = {
            "memory": QueryCache(MemoryBackend(max_entries=100_000), namespace=prefix),
            "redis": QueryCache(RedisBackend(args.redis, prefix=prefix + "r"), namespace=prefix),
            "two-tier": QueryCache(
                TwoTierBackend(RedisBackend(args.redis, prefix=prefix + "t")), namespace=prefix
            ),
        }
        host_port = args.redis.split("//", 1)[1].split("/", 1)[0]
        host, port = host_port.split(":")
        dogpile_memory = make_region().configure("dogpile.cache.memory")
        dogpile_redis = make_region(key_mangler=lambda k: prefix + "d" + str(hash(k))).configure(
            "dogpile.cache.redis",
            expiration_time=300,
            arguments={"host": host, "port": int(port), "db": 0, "redis_expiration_time": 300},
        )
        cashews = Cache()
        cashews.setup(args.redis, client_side=False)

        def hooked(hook: Any, batch: Callable[[], None]) -> Variant:
            from sqlalchemy.orm import Session as SessionClass

            return Variant(
                lambda: event.listen(SessionClass, "do_orm_execute", hook, retval=True),
                lambda: event.remove(SessionClass, "do_orm_execute", hook),
                batch,
            )

        peer = PeerOption()

        def no_query() -> None:
            # What every variant pays around the query: the statement, its cache key, a Session.
            option = cache()
            for i in range(PER_ROUND):
                with Session(engine):
                    statement(1 + i % USERS, option)._generate_cache_key()

        variants = {
            "no query (statement, cache key, Session)": Variant(
                lambda: None, lambda: None, no_query
            ),
            "sqlalchemy (no cache)": Variant(lambda: None, lambda: None, sync_batch(None)),
            "ormtune memory": Variant(
                caches["memory"].install, caches["memory"].uninstall, sync_batch(cache())
            ),
            "ormtune two-tier": Variant(
                caches["two-tier"].install, caches["two-tier"].uninstall, sync_batch(cache())
            ),
            "ormtune redis": Variant(
                caches["redis"].install, caches["redis"].uninstall, sync_batch(cache())
            ),
            "dogpile memory": hooked(DogpileHook(dogpile_memory), sync_batch(peer)),
            "dogpile redis": hooked(DogpileHook(dogpile_redis), sync_batch(peer)),
            "asyncio: sqlalchemy (no cache)": Variant(
                lambda: None, lambda: None, async_batch(None)
            ),
            "asyncio: ormtune redis": Variant(
                caches["redis"].install, caches["redis"].uninstall, async_batch(cache())
            ),
            "asyncio: cashews redis": hooked(
                CashewsHook(cashews, prefix + "c:"), async_batch(peer)
            ),
        }
        names = list(variants)
        for name in names:  # warm: learn, fill, and a first pass of hits
            variants[name].install()
            for _ in range(3):
                variants[name].batch()
            variants[name].remove()
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_number in range(args.rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                variant = variants[name]
                variant.install()
                started = time.perf_counter()
                variant.batch()
                times[name].append((time.perf_counter() - started) / PER_ROUND)
                variant.remove()
        for query_cache in caches.values():
            stats = query_cache.stats.overall
            assert stats.hits > 0, f"a cache never hit: {stats}"
        loop.run_until_complete(cashews.delete_match(prefix + "c:*"))
        loop.run_until_complete(async_engine.dispose())
        loop.close()
        engine.dispose()

    sync_base = median(times["sqlalchemy (no cache)"])
    async_base = median(times["asyncio: sqlalchemy (no cache)"])
    rows = []
    for name in names:
        base = async_base if name.startswith("asyncio") else sync_base
        per_query = median(times[name])
        rows.append([name, f"{per_query * 1e6:.0f}", f"{base / per_query:.1f}x"])
    headers = ["variant (10 entities, PostgreSQL)", "µs per query (median)", "faster than no cache"]
    print_report(headers, rows, {"rounds": str(args.rounds), "queries/round": str(PER_ROUND)})


if __name__ == "__main__":
    main()
