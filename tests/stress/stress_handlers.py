"""Handlers for the stress tests (importable by a server subprocess as stress_handlers:NAME)."""

from __future__ import annotations

import time

from sockwork import Connection, stream_handler


@stream_handler
def echo_lines(conn: Connection) -> None:
    """Echo line by line; a line starting with b"fail" makes the handler raise."""
    for line in conn:
        if line.startswith(b"fail"):
            raise RuntimeError(f"asked to fail: {line!r}")
        conn.write(line)


@stream_handler
def slow_echo(conn: Connection) -> None:
    """Say "started", take half a second, then echo the line: a request in flight."""
    line = conn.readline()
    conn.write(b"started\n")
    time.sleep(0.5)
    conn.write(line)
