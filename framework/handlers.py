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
from collections.abc import Callable, Iterator
from typing import Any, final

import attrs

from .hookspecs import hookimpl
from .registry import HandlerEntry, NoOptions
from .validators import positive_int

__all__ = ["Connection", "LinesOptions", "datagram_handler", "discard", "echo", "lines", "stream_handler"]

_CHUNK = 65536


@final
class Connection:
    """A connected stream client, as a stream function sees it.

    Reads are buffered; writes go straight out (``write`` sends everything).
    ``peer`` is the client's address, ``socket`` the connected socket for
    anything not covered here (timeouts: ``conn.socket.settimeout(5)``).
    """

    __slots__ = ("_buffer", "peer", "server", "socket")

    def __init__(self, sock: socket.socket, peer: Any, server: Any = None) -> None:
        self.socket = sock
        self.peer = peer
        self.server = server
        self._buffer = bytearray()

    def __repr__(self) -> str:
        return f"<Connection peer={self.peer!r}>"

    def recv(self, size: int = _CHUNK) -> bytes:
        """Up to ``size`` bytes, as soon as any are there; ``b""`` at end of stream."""
        if self._buffer:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            return data
        return self.socket.recv(size)

    def read(self, size: int = -1) -> bytes:
        """Exactly ``size`` bytes (fewer only at end of stream); all until EOF if negative."""
        buffer = self._buffer
        while size < 0 or len(buffer) < size:
            chunk = self.socket.recv(_CHUNK if size < 0 else max(size - len(buffer), _CHUNK))
            if not chunk:
                break
            buffer += chunk
        end = len(buffer) if size < 0 else min(size, len(buffer))
        data = bytes(buffer[:end])
        del buffer[:end]
        return data

    def readline(self, limit: int = _CHUNK) -> bytes:
        """One line including its ``b"\\n"``; at end of stream what is left (maybe ``b""``).

        A line longer than ``limit`` bytes comes back in pieces of ``limit``
        bytes, so a client cannot make the server buffer without bound.
        """
        buffer = self._buffer
        start = 0
        while True:
            newline = buffer.find(b"\n", start)
            if newline >= 0:
                end = min(newline + 1, limit)
                break
            if len(buffer) >= limit:
                end = limit
                break
            start = len(buffer)
            chunk = self.socket.recv(_CHUNK)
            if not chunk:
                end = len(buffer)
                break
            buffer += chunk
        line = bytes(buffer[:end])
        del buffer[:end]
        return line

    def __iter__(self) -> Iterator[bytes]:
        """The lines of the stream, until its end."""
        while line := self.readline():
            yield line

    def write(self, data: bytes) -> None:
        """Send all of ``data``."""
        self.socket.sendall(data)

    sendall = write


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
        ),
        HandlerEntry(
            "discard", lambda options: discard, NoOptions,
            description="read and drop everything, never answer (streams and datagrams)",
        ),
        HandlerEntry(
            "lines", lines, LinesOptions,
            description="answer each line with '<n>: <line>' (streams)",
        ),
    ]
