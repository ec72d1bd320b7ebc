"""A tiny stand-in for the loop: runs a transport's connection stages on one connection, with deadlines.

Tests of the stages themselves use it so that they do not depend on the
server's loop: what ``advance`` asks ("read", "write") is waited for with a
selector, each stage's ``timeout`` is enforced, and the result is the
Connection (or the exception a stage raised).
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Sequence
from typing import Any

from sockwork.connection import Connection, ConnectionStage


class StageTimedOut(Exception):
    """A stage was not done within its timeout."""


def run_stages(stages: Sequence[ConnectionStage], conn: Connection, default_timeout: float = 10.0) -> list[str]:
    """Drive every stage to "done" on a non-blocking socket; returns what each call asked for."""
    conn.socket.setblocking(False)
    asked: list[str] = []
    for stage in stages:
        deadline = time.monotonic() + (stage.timeout if stage.timeout is not None else default_timeout)
        while True:
            want = stage.advance(conn)
            asked.append(want)
            if want == "done":
                break
            assert want in ("read", "write"), want
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StageTimedOut(f"{stage.name} not done within {stage.timeout} s")
            with selectors.DefaultSelector() as selector:
                # Registered by descriptor: a stage may have replaced the socket object (TLS wraps it).
                selector.register(conn.socket.fileno(),
                                  selectors.EVENT_READ if want == "read" else selectors.EVENT_WRITE)
                selector.select(remaining)
    return asked


def accept_connection(listener: Any) -> Connection:
    """Accept one connection from a blocking listener as the loop would: a Connection record."""
    sock, peer = listener.accept()
    sock.setblocking(False)
    return Connection(sock, peer)
