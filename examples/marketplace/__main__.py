"""``python -m marketplace serve|migrate|generate``.

::

    python -m marketplace serve --mode tuned --port 8000 [--database-url URL] [--redis-url URL]
    python -m marketplace migrate [--database-url URL] [--downgrade]
    python -m marketplace generate --users 1000 [--database-url URL] [--seed 0]

``serve`` migrates the database first, generates data when ``--users`` is given, and runs
``marketplace.asgi:app`` under uvicorn (``--workers`` processes) with the settings passed on
through the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from marketplace.settings import DEFAULT_DATABASE_URL, MODES

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m marketplace")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the app under uvicorn")
    serve.add_argument("--mode", choices=MODES, default="tuned")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--redis-url", default=None, help="tuned mode's shared cache")
    serve.add_argument("--users", "--scale", default=None, help="generate this many users first")
    serve.add_argument("--log-level", default="warning", help="uvicorn's log level")
    serve.add_argument(
        "--json-logs", action="store_true", help="ormtune's request and slow-query logs as JSON"
    )
    migrate = commands.add_parser("migrate", help="run the Alembic migrations")
    migrate.add_argument("--downgrade", action="store_true", help="down to an empty database")
    generate = commands.add_parser("generate", help="generate the data set")
    generate.add_argument("--users", "--scale", default="1000", help="1000, 1k, 10k, 100k")
    generate.add_argument("--seed", type=int, default=0)
    for command in (serve, migrate, generate):
        command.add_argument("--database-url", default=None, help=f"default {DEFAULT_DATABASE_URL}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    url = args.database_url or os.environ.get("MARKETPLACE_DATABASE_URL") or DEFAULT_DATABASE_URL
    from marketplace.db import downgrade, upgrade

    if args.command == "migrate":
        (downgrade if args.downgrade else upgrade)(url)
        return 0
    from marketplace.data import main as generate_main

    if args.command == "generate":
        return generate_main(
            ["--users", args.users, "--seed", str(args.seed), "--database-url", url]
        )
    import uvicorn

    if args.mode == "tuned" and args.workers > 1 and not args.redis_url:
        print(
            "--workers > 1 in tuned mode needs --redis-url: each process's in-memory cache "
            "cannot see the other processes' commits, so it could serve stale rows",
            file=sys.stderr,
        )
        return 2
    upgrade(url)
    if args.users:
        generate_main(["--users", args.users, "--database-url", url])
    os.environ["MARKETPLACE_MODE"] = args.mode
    os.environ["MARKETPLACE_DATABASE_URL"] = url
    if args.redis_url:
        os.environ["MARKETPLACE_REDIS_URL"] = args.redis_url
    if args.json_logs:
        os.environ["MARKETPLACE_JSON_LOGS"] = "1"
    uvicorn.run(
        "marketplace.asgi:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
