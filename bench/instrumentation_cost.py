"""CPU instructions per request that ormtune's instrumentation adds, counted by callgrind.

The HTTP benchmark (``instrumentation_overhead.py``) measures what matters, requests per second
under a real server, but on a shared machine its rounds scatter by more than the effect. This
one counts instead of timing: an ASGI app whose handler runs 5 statements on an SQLite
database (in memory, so no I/O), called directly, in one process, sequentially, with and
without the full instrumentation (``instrument(engine)``, ``OrmtuneMiddleware`` with metrics,
the ``ormtune`` loggers at INFO with ``JsonFormatter`` into a file). Each variant runs under
``valgrind --tool=callgrind`` twice, with ``--small`` and ``--large`` requests; the difference
divided by the difference in requests is its instructions per request, free of start-up cost
and of other processes' load. Instructions are not time, but a change that removes work from
the request path shows up here exactly.

    .venv-bench/bin/python bench/instrumentation_cost.py      # needs valgrind
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, text

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import callgrind_instructions, command_line, environment, markdown_table

if TYPE_CHECKING:
    from collections.abc import Sequence

QUERIES = 5
VARIANTS = ("plain", "sqlalchemy", "listeners", "instrumented")
LABELS = {
    "plain": "plain",
    "sqlalchemy": "connection events, no-op listeners (SQLAlchemy's dispatch alone)",
    "listeners": "ormtune's statement hooks + no-op observer",
    "instrumented": "middleware + metrics + JSON logs (INFO)",
}


def _noop_before(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    return statement, parameters


def _noop(*args: Any) -> None:
    return


def build(variant: str, log_path: str) -> tuple[Any, Any]:
    """The ASGI app of one variant, and its engine."""
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("create table items (id integer primary key, value integer)"))
        conn.execute(text("insert into items values (1, 2), (2, 4), (3, 6), (4, 8), (5, 10)"))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        total = 0
        with engine.connect() as conn:
            for key in range(1, QUERIES + 1):
                row = conn.execute(text("select id, value from items where id = :id"), {"id": key})
                total += row.one()[1]
        body = str(total).encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    if variant == "plain":
        return app, engine
    if variant == "sqlalchemy":
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        # The connection events ormtune listened to until it moved to the dialect's execution
        # events, with listeners that do nothing: what SQLAlchemy's dispatch costs any
        # before/after_cursor_execute listener, before the listener's own work.
        event.listen(Engine, "before_cursor_execute", _noop_before, retval=True)
        event.listen(Engine, "after_cursor_execute", _noop)
        event.listen(Engine, "handle_error", _noop)
        return app, engine
    if variant == "listeners":
        from ormtune.querylog import QueryEvent, observe

        class Nothing:
            def on_query(self, event: QueryEvent) -> None:
                return

        observe(Nothing(), engine)  # ormtune's engine listeners alone: the floor
        return app, engine
    from prometheus_client import CollectorRegistry

    from ormtune.instrumentation import JsonFormatter, OrmtuneMiddleware, instrument

    instrumentation = instrument(engine, registry=CollectorRegistry(), slow_query_threshold=0.5)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ormtune")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return OrmtuneMiddleware(app, metrics=instrumentation.metrics), engine


async def serve(app: Any, requests: int) -> None:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/items/1",
        "root_path": "",
        "headers": [(b"host", b"bench")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for _ in range(requests):
        sent.clear()
        await app(scope, receive, send)
        if sent[0]["status"] != 200 or sent[1]["body"] != b"30":
            raise RuntimeError(f"unexpected response {sent!r}")


def instructions(variant: str, requests: int, log_path: str) -> int:
    """Instructions callgrind counted for a whole run of ``requests`` requests."""
    return callgrind_instructions(
        [
            sys.executable,
            __file__,
            "--inner",
            variant,
            "--requests",
            str(requests),
            "--log",
            log_path,
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=1300)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {', '.join(VARIANTS)} (plain is always run)",
    )
    parser.add_argument("--inner", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        app, engine = build(args.inner, args.log)
        asyncio.run(serve(app, args.requests))
        engine.dispose()
        return
    chosen = {name.strip() for name in args.variants.split(",")} | {"plain"}
    unknown = chosen - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    per_request: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "requests.log")
        for variant in (name for name in VARIANTS if name in chosen):
            small = instructions(variant, args.small, log_path)
            large = instructions(variant, args.large, log_path)
            per_request[variant] = (large - small) / (args.large - args.small)
    plain = per_request["plain"]
    print(
        f"Command: `{command_line()}` ({environment({'requests': f'{args.small}/{args.large}'})})"
    )
    print()
    rows = [
        [
            LABELS[variant],
            f"{count:.0f}",
            f"{count - plain:+.0f}",
            f"{(count - plain) / plain:+.1%}",
        ]
        for variant, count in per_request.items()
    ]
    headers = ["variant", "instructions/request", "added", "added %"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
