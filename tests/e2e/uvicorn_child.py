"""``python -m tests.e2e.uvicorn_child FD``: serve ``marketplace.asgi:app`` (configured by the
``MARKETPLACE_*`` environment variables) with uvicorn on the listening socket inherited as file
descriptor ``FD`` (see :func:`tests.e2e.harness.serve`)."""

from __future__ import annotations

import socket
import sys

import uvicorn


def main(argv: list[str]) -> None:
    listener = socket.socket(fileno=int(argv[1]))
    config = uvicorn.Config(
        "marketplace.asgi:app", lifespan="on", access_log=False, log_level="info"
    )
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main(sys.argv)
