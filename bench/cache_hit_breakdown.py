"""Where the time of a memory cache hit goes: the query of ``bench/cache_hit.py``, in stages.

Each line adds one stage to the one before, so the differences are the stages' costs:

* ``Session``: opening and closing a ``Session``;
* ``+ statement``: building ``select(Payment).where(Payment.user_id == u).order_by(...)``;
* ``+ cache key``: SQLAlchemy's ``_generate_cache_key()`` of it (any statement cache needs it);
* ``+ execute(), answered by a bare hook``: ``Session.execute()`` and ``.all()`` answered
  by a ``do_orm_execute`` hook that only takes the cache key and returns a result frozen in
  advance (empty), the least a cache in that hook can cost;
* ``hit, 0 entities``: the query served by ``ormtune.cache()`` on a ``MemoryBackend``, for a
  user without payments: ormtune's hook instead of the bare one, nothing to materialise;
* ``hit, 10 entities``: the benchmark's query (10 ORM objects created in the session);
* ``sqlalchemy (no cache)``: the query run on PostgreSQL, for scale.

Times are CPU seconds of this process (``time.process_time``), which a shared machine
disturbs less than wall time; the uncached query also waits for PostgreSQL, so its wall time
is shown too. Rounds interleave the stages, medians are reported. Run:
``.venv-bench/bin/python bench/cache_hit_breakdown.py [--rounds N] [--postgres URL]``
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from _harness import DEFAULT_POSTGRES, median, print_report, scratch_postgres
from cache_hit import USERS, Base, Payment, User, statement
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session, UserDefinedOption

from ormtune.backends import MemoryBackend
from ormtune.caching import QueryCache, cache

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Result
    from sqlalchemy.orm import ORMExecuteState

PER_ROUND = 500


class Marker(UserDefinedOption):
    """Marks the statements the bare hook answers."""

    propagate_to_loaders = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    args = parser.parse_args()

    with scratch_postgres(args.postgres, "ormtune_cache_breakdown") as url:
        engine = create_engine(url)
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add_all(User(id=u, name=f"user {u}") for u in range(USERS + 1))
            session.flush()
            for u in range(1, USERS + 1):  # user 0 has no payments
                session.add_all(Payment(user_id=u, amount=i, note="x" * 40) for i in range(10))
            session.commit()
        query_cache = QueryCache(MemoryBackend(max_entries=100_000), namespace="breakdown")
        option = cache()

        def session_only() -> None:
            for _ in range(PER_ROUND):
                with Session(engine):
                    pass

        def with_statement() -> None:
            for i in range(PER_ROUND):
                with Session(engine):
                    statement(1 + i % USERS, option)

        def with_cache_key() -> None:
            for i in range(PER_ROUND):
                with Session(engine):
                    statement(1 + i % USERS, option)._generate_cache_key()

        # The least any do_orm_execute cache can cost: a hook that takes the cache key and
        # returns a result frozen in advance (run with ormtune's cache uninstalled).
        with Session(engine) as session:
            empty = session.execute(statement(0, None)).freeze()

        def bare_hook(state: ORMExecuteState) -> Result[Any] | None:
            if not any(isinstance(o, Marker) for o in state.user_defined_options):
                return None
            state.statement._generate_cache_key()  # type: ignore[attr-defined]
            return empty()

        def bare() -> None:
            query_cache.uninstall()
            event.listen(Session, "do_orm_execute", bare_hook, retval=True)
            try:
                hits(lambda i: 0, 0, Marker())()
            finally:
                event.remove(Session, "do_orm_execute", bare_hook)
                query_cache.install()

        def hits(
            users: Callable[[int], int], expected: int, opt: object = option
        ) -> Callable[[], None]:
            def run() -> None:
                for i in range(PER_ROUND):
                    with Session(engine) as session:
                        rows = session.scalars(statement(users(i), opt)).all()  # type: ignore[arg-type]
                        assert len(rows) == expected

            return run

        stages: dict[str, Callable[[], None]] = {
            "Session": session_only,
            "+ statement": with_statement,
            "+ cache key (the 'no query' line)": with_cache_key,
            "+ execute(), answered by a bare hook, 0 entities": bare,
            "hit, 0 entities": hits(lambda i: 0, 0),
            "hit, 10 entities": hits(lambda i: 1 + i % USERS, 10),
            "sqlalchemy (no cache), 10 entities": hits(lambda i: 1 + i % USERS, 10, None),
        }
        query_cache.install()
        try:
            names = list(stages)
            for name in names:  # warm: learn, fill, then hits
                for _ in range(3):
                    stages[name]()
            cpu: dict[str, list[float]] = {name: [] for name in names}
            wall: dict[str, list[float]] = {name: [] for name in names}
            for round_number in range(args.rounds):
                shift = round_number % len(names)
                for name in names[shift:] + names[:shift]:
                    started_cpu, started = time.process_time(), time.perf_counter()
                    stages[name]()
                    cpu[name].append((time.process_time() - started_cpu) / PER_ROUND)
                    wall[name].append((time.perf_counter() - started) / PER_ROUND)
            assert query_cache.stats.overall.hits > 0
        finally:
            query_cache.uninstall()
            engine.dispose()

    rows = []
    previous = 0.0
    for name in names:
        per_query = median(cpu[name])
        step = "" if name.startswith("sqlalchemy") else f"{(per_query - previous) * 1e6:+.0f}"
        rows.append([name, f"{per_query * 1e6:.0f}", step, f"{median(wall[name]) * 1e6:.0f}"])
        previous = per_query
    headers = ["stage (memory backend, PostgreSQL)", "CPU µs per query", "step", "wall µs"]
    print_report(headers, rows, {"rounds": str(args.rounds), "queries/round": str(PER_ROUND)})


if __name__ == "__main__":
    main()
