"""Handlers for the stress tests (importable by a server subprocess as stress_handlers:NAME)."""

from __future__ import annotations

import asyncio
import time

from sockwork import Connection, aio, stream_handler
from sockwork.testing import HandlerForms


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


@aio.stream_handler
async def echo_lines_async(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """echo_lines for the asyncio dispatcher."""
    while line := await reader.readline():
        if line.startswith(b"fail"):
            raise RuntimeError(f"asked to fail: {line!r}")
        writer.write(line)
        await writer.drain()


@aio.stream_handler
async def slow_echo_async(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """slow_echo for the asyncio dispatcher."""
    line = await reader.readline()
    writer.write(b"started\n")
    await asyncio.sleep(0.5)
    writer.write(line)


ECHO_LINES = HandlerForms(echo_lines, echo_lines_async)
