"""Handler helpers: adapt plain functions, and the built-in named handlers.

A handler factory is any callable ``(request, client_address, server)``.
Writing one by hand means knowing what a request is (a socket, or
``(payload, socket)``); these helpers spare you that:

- :func:`stream_handler` wraps ``fn(conn)`` where ``conn`` is a
  :class:`Connection` (read, readline, write, peer address);
- :func:`datagram_handler` wraps ``fn(payload, client_address)`` that returns
  the reply bytes, or None for no reply.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from typing import Any, final

import attrs

from .connection import Connection
from .hookspecs import hookimpl
from .registry import HandlerEntry, NoOptions
from .validators import positive_int

__all__ = ["Connection", "LinesOptions", "datagram_handler", "discard", "echo", "lines", "stream_handler"]

_CHUNK = 65536


def stream_handler(fn: Callable[[Connection], object]) -> Callable[[Any, Any, Any], None]:
    """Turn ``fn(conn)`` into a handler factory for stream transports.

    Usable as a decorator. The connection is closed by the server after
    ``fn`` returns.
    """
    if not callable(fn):
        raise TypeError(f"stream_handler() needs a function taking a Connection, got {fn!r}")

    @functools.wraps(fn)
    def handle(request: Any, client_address: Any, server: Any) -> None:
        if isinstance(request, tuple):
            raise TypeError(f"{fn.__qualname__} is a stream handler; it cannot serve datagrams")
        fn(Connection(request, client_address, server))

    handle.sockwork_kind = "stream"  # type: ignore[attr-defined]  # checked when a Server is assembled
    return handle


def datagram_handler(fn: Callable[[bytes, Any], bytes | None]) -> Callable[[Any, Any, Any], None]:
    """Turn ``fn(payload, client_address) -> reply | None`` into a datagram handler factory.

    Usable as a decorator. A reply is sent back to ``client_address``.
    """
    if not callable(fn):
        raise TypeError(f"datagram_handler() needs a function taking (payload, client_address), got {fn!r}")

    @functools.wraps(fn)
    def handle(request: Any, client_address: Any, server: Any) -> None:
        if not isinstance(request, tuple):
            raise TypeError(f"{fn.__qualname__} is a datagram handler; it cannot serve streams")
        payload, sock = request
        reply = fn(payload, client_address)
        if reply is not None:
            send_datagram(sock, reply, client_address)

    handle.sockwork_kind = "datagram"  # type: ignore[attr-defined]  # checked when a Server is assembled
    return handle


def send_datagram(sock: socket.socket, data: bytes, client_address: Any) -> None:
    """Answer a datagram client, with a clear error for one that cannot be answered."""
    if not client_address:
        raise ValueError(
            "cannot reply to a datagram client whose socket has no address "
            "(a Unix datagram client must bind its socket to a path to get replies)"
        )
    sock.sendto(data, client_address)


def echo(request: Any, client_address: Any, server: Any) -> None:
    """Send back whatever arrives: each datagram, or a stream until its end."""
    if isinstance(request, tuple):
        payload, sock = request
        send_datagram(sock, payload, client_address)
        return
    while chunk := request.recv(_CHUNK):
        request.sendall(chunk)


def discard(request: Any, client_address: Any, server: Any) -> None:
    """Read and drop everything (stream: until its end); never answer."""
    if not isinstance(request, tuple):
        while request.recv(_CHUNK):
            pass


@final
@attrs.frozen(kw_only=True)
class LinesOptions:
    """Options of the ``lines`` handler."""

    max_line: int = attrs.field(default=_CHUNK, validator=positive_int)
    """Longest line read at once; a longer one is answered in pieces."""


def lines(options: LinesOptions) -> Callable[[Any, Any, Any], None]:
    """A line protocol to try things with: each line is answered ``"<n>: <line>"``.

    The counter is per connection, to show state kept across one client's lines.
    """
    max_line = options.max_line

    @stream_handler
    def number_lines(conn: Connection) -> None:
        count = 0
        while line := conn.readline(max_line):
            count += 1
            conn.write(b"%d: %s" % (count, line))

    return number_lines


@hookimpl(trylast=True)
def sockwork_add_handlers() -> list[HandlerEntry]:
    return [
        HandlerEntry(
            "echo", lambda options: echo, NoOptions,
            description="send back whatever arrives (streams and datagrams)",
            async_factory=lambda options: _aio().echo,
        ),
        HandlerEntry(
            "discard", lambda options: discard, NoOptions,
            description="read and drop everything, never answer (streams and datagrams)",
            async_factory=lambda options: _aio().discard,
        ),
        HandlerEntry(
            "lines", lines, LinesOptions,
            description="answer each line with '<n>: <line>' (streams)",
            async_factory=lambda options: _aio().lines(options),
        ),
    ]


def _aio() -> Any:
    from . import aio  # asyncio is imported only when an async form is asked for

    return aio
