"""``python -m sockwork``: run a server from the command line.

With no arguments it serves the built-in echo handler on tcp://127.0.0.1:9999.
SIGINT or SIGTERM stops it gracefully (stop accepting, drain, exit 0); a
second signal during the drain exits at once with status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ._server import Server
from .errors import ServerError

__all__ = ["main"]

DEFAULT_TRANSPORT = "tcp://127.0.0.1:9999"
DEFAULT_DISPATCHER = "thread"
DEFAULT_HANDLER = "echo"

logger = logging.getLogger("sockwork")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sockwork", description="Run a sockwork server.")
    parser.add_argument("--transport", default=DEFAULT_TRANSPORT, metavar="URL",
                        help=f"where to listen, e.g. tcp://[::1]:8000 or unix:///run/app.sock (default: {DEFAULT_TRANSPORT})")
    parser.add_argument("--dispatcher", default=DEFAULT_DISPATCHER, metavar="NAME",
                        help=f"concurrency strategy: inline, thread, fork, pool, ... (default: {DEFAULT_DISPATCHER})")
    parser.add_argument("--handler", default=DEFAULT_HANDLER, metavar="NAME",
                        help=f"registered handler to serve (default: {DEFAULT_HANDLER})")
    parser.add_argument("--drain-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long running requests may finish after a stop signal (default: 10)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        server = Server(transport=args.transport, dispatcher=args.dispatcher, handler=args.handler,
                        drain_timeout=args.drain_timeout)
    except (ServerError, OSError) as exc:
        print(f"sockwork: {exc}", file=sys.stderr)
        return 2
    with server:
        _stop_on_signals(server)
        print(
            f"sockwork: serving {args.handler!r} on {server.url} with dispatcher "
            f"{args.dispatcher!r} (pid {os.getpid()})",
            flush=True,
        )
        server.serve_forever()
        logger.info("stopping: draining requests still running (up to %ss)", args.drain_timeout)
    logger.info("stopped")
    return 0


def _stop_on_signals(server: Server) -> None:
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:
            os.write(2, b"sockwork: second signal, exiting without waiting for running requests\n")
            os._exit(1)
        stopping = True
        server.shutdown()  # from the serving thread: returns at once, the loop ends next

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
