"""The cache across processes sharing Redis, and through a Redis outage.

Real processes (``spawn``), real Redis, real databases. The stress test checks every read
against the committed history: no read may return a value older than the last commit that
finished before the read began.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import ForeignKey, create_engine, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ormtune.backends import RedisBackend, TwoTierBackend
from ormtune.caching import QueryCache, cache
from ormtune.testing import assert_max_queries
from tests.backend_support import PrivateRedis
from tests.integration.test_cache import SERVER_DATABASES

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.connection import Connection
    from pathlib import Path

    from sqlalchemy import Engine

    from ormtune.typing import CacheBackend
    from tests.conftest import Backend


class DistBase(DeclarativeBase):
    pass


class Owner(DistBase):
    __tablename__ = "d_owners"

    id: Mapped[int] = mapped_column(primary_key=True)


class Counter(DistBase):
    __tablename__ = "d_counters"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("d_owners.id"))
    value: Mapped[int]


ROWS = 4


@pytest.fixture
def db(backend: Backend) -> Iterator[Engine]:
    engine = create_engine(backend.sync_url)
    DistBase.metadata.drop_all(engine)
    DistBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Owner(id=1), Owner(id=2)])
        session.flush()
        session.add_all([Counter(id=i, owner_id=1 + i % 2, value=0) for i in range(1, ROWS + 1)])
        session.commit()
    yield engine
    DistBase.metadata.drop_all(engine)
    engine.dispose()


def make_backend(kind: str, redis_url: str, prefix: str) -> CacheBackend:
    remote = RedisBackend(redis_url, prefix=prefix)
    return remote if kind == "redis" else TwoTierBackend(remote)


def read_counter(engine: Engine, row: int) -> int:
    with Session(engine) as session:
        stmt = select(Counter).where(Counter.id == row).options(cache(name="counter"))
        counter = session.scalars(stmt).one()
        return counter.value


def write_counter(engine: Engine, row: int) -> int:
    with Session(engine) as session:
        counter = session.get(Counter, row, with_for_update=True)
        assert counter is not None
        counter.value += 1
        value = counter.value
        session.commit()
        return value


def _peer(db_url: str, redis_url: str, prefix: str, kind: str, conn: Connection) -> None:
    engine = create_engine(db_url)
    with QueryCache(make_backend(kind, redis_url, prefix)) as query_cache:
        while True:
            command, row = conn.recv()
            if command == "stop":
                conn.send(query_cache.stats.overall.hits)
                break
            conn.send(
                read_counter(engine, row) if command == "read" else write_counter(engine, row)
            )
    engine.dispose()


@SERVER_DATABASES
@pytest.mark.parametrize("kind", ["redis", "two-tier"])
def test_two_processes_read_each_others_commits_at_once(
    db: Engine, backend: Backend, redis_url: str, redis_prefix: str, kind: str
) -> None:
    context = multiprocessing.get_context("spawn")
    peers = []
    for _ in range(2):
        here, there = context.Pipe()
        process = context.Process(
            target=_peer, args=(backend.sync_url, redis_url, redis_prefix, kind, there)
        )
        process.start()
        peers.append((process, here))
    (_, to_a), (_, to_b) = peers

    def ask(pipe: Connection, command: str, row: int = 1) -> int:
        pipe.send((command, row))
        assert pipe.poll(30), "peer did not answer"
        answer: int = pipe.recv()
        return answer

    try:
        for _ in range(3):  # learn, fill, hit: both processes now serve row 1 from Redis
            assert ask(to_a, "read") == 0
            assert ask(to_b, "read") == 0
        for step in range(1, 6):
            writer, reader = (to_a, to_b) if step % 2 else (to_b, to_a)
            assert ask(writer, "write") == step
            assert ask(reader, "read") == step  # right after commit() returned elsewhere
            assert ask(reader, "read") == step
        hits = [ask(to_a, "stop"), ask(to_b, "stop")]
        assert min(hits) >= 1
    finally:
        for process, _ in peers:
            process.join(30)
            if process.is_alive():
                process.kill()


def _stress_writer(db_url: str, redis_url: str, prefix: str, seconds: float, out: Any) -> None:
    engine = create_engine(db_url)
    rng = random.Random()
    log = []
    with QueryCache(make_backend("redis", redis_url, prefix)):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            row = rng.randrange(1, ROWS + 1)
            value = write_counter(engine, row)
            log.append((row, value, time.monotonic()))  # after commit() returned
    out.put(("w", log))
    engine.dispose()


def _stress_reader(
    db_url: str, redis_url: str, prefix: str, kind: str, seconds: float, out: Any
) -> None:
    engine = create_engine(db_url)
    rng = random.Random()
    log = []
    with QueryCache(make_backend(kind, redis_url, prefix)) as query_cache:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            row = rng.randrange(1, ROWS + 1)
            started = time.monotonic()
            log.append((row, read_counter(engine, row), started))
        hits = query_cache.stats.overall.hits
    out.put(("r", log, hits))
    engine.dispose()


@SERVER_DATABASES
def test_stress_no_read_is_older_than_the_last_finished_commit(
    db: Engine, backend: Backend, redis_url: str, redis_prefix: str
) -> None:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    seconds = 4.0
    processes = [
        context.Process(
            target=_stress_writer, args=(backend.sync_url, redis_url, redis_prefix, seconds, out)
        )
        for _ in range(2)
    ] + [
        context.Process(
            target=_stress_reader,
            args=(backend.sync_url, redis_url, redis_prefix, kind, seconds, out),
        )
        for kind in ("redis", "two-tier", "redis")
    ]
    for process in processes:
        process.start()
    results = [out.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
    commits = sorted(
        (end, row, value) for result in results if result[0] == "w" for row, value, end in result[1]
    )
    reads = [entry for result in results if result[0] == "r" for entry in result[1]]
    hits = sum(result[2] for result in results if result[0] == "r")
    assert len(commits) > 20
    assert len(reads) > 100
    assert hits > 0, "the readers never hit the cache: the test would prove nothing"
    stale = []
    for row, seen, started in reads:
        finished_before = [v for end, r, v in commits if r == row and end < started]
        if finished_before and seen < max(finished_before):
            stale.append((row, seen, max(finished_before)))
    assert stale == [], f"{len(stale)} stale reads of {len(reads)}, e.g. {stale[:5]}"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(str(tmp_path))
    server.start()
    yield server
    server.stop()


@SERVER_DATABASES
def test_redis_outage_falls_back_to_the_database_and_recovers(
    db: Engine, private_redis: PrivateRedis
) -> None:
    backend = RedisBackend(private_redis.url, prefix=f"outage-{uuid.uuid4().hex[:6]}")
    with QueryCache(backend) as query_cache:
        for _ in range(2):
            read_counter(db, 1)
        with assert_max_queries(0):
            assert read_counter(db, 1) == 0
        private_redis.stop()
        assert read_counter(db, 1) == 0  # from the database
        assert write_counter(db, 1) == 1  # the commit goes through; its bump is kept
        assert read_counter(db, 1) == 1
        stats = query_cache.stats.overall
        assert stats.errors >= 2
        assert stats.bypasses["cache backend recovering"] >= 1
        private_redis.start()
        for _ in range(2):
            assert read_counter(db, 1) == 1
        with assert_max_queries(0):
            assert read_counter(db, 1) == 1
        with Session(db) as session:
            session.execute(update(Counter).where(Counter.id == 1).values(value=5))
            session.commit()
        assert read_counter(db, 1) == 5
    backend.close()
