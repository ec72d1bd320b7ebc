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
from collections.abc import Callable
from typing import Any, Literal, final, overload

import attrs

from .connection import KEEP_ALIVE, Connection
from .hookspecs import hookimpl
from .messages import DEFAULT_MAX_MESSAGE, LengthPrefixed, Lines, MessageHandler, message_handler, send_datagram
from .registry import FramingEntry, HandlerEntry, HandlerSamples, NoOptions
from .validators import positive_int

__all__ = [
    "Connection", "FramingOptions", "LinesOptions", "datagram_handler", "discard", "echo", "lines", "send_datagram",
    "stream_handler",
]

_CHUNK = 65536


@overload
def stream_handler(fn: Callable[[Connection], object], /) -> Callable[[Any, Any, Any], object]: ...


@overload
def stream_handler(
    *, speaks_first: Literal["client", "server"] = "client",
) -> Callable[[Callable[[Connection], object]], Callable[[Any, Any, Any], object]]: ...


def stream_handler(
    fn: Callable[[Connection], object] | None = None, /, *, speaks_first: Literal["client", "server"] = "client",
) -> Callable[[Any, Any, Any], object] | Callable[[Callable[[Connection], object]], Callable[[Any, Any, Any], object]]:
    """Turn ``fn(conn)`` into a handler factory for stream transports.

    Usable as a decorator, with or without arguments. The connection is
    closed by the server after ``fn`` returns, unless it returns
    :data:`~sockwork.KEEP_ALIVE`: then the connection waits in the loop and
    ``fn`` is called again, with the same ``conn``, when the client sends more.

    ``speaks_first``: ``"client"`` (the default) means the connection waits
    in the loop, without a worker, until the client has sent something, so
    silent clients cost no worker. A protocol where the server speaks first
    (an SMTP or FTP greeting) must say ``"server"``: ``fn`` then runs at accept.
    """
    if speaks_first not in ("client", "server"):
        raise ValueError(f"'speaks_first' must be 'client' or 'server', got {speaks_first!r}")

    def wrap(function: Callable[[Connection], object]) -> Callable[[Any, Any, Any], object]:
        if not callable(function):
            raise TypeError(f"stream_handler() needs a function taking a Connection, got {function!r}")

        @functools.wraps(function)
        def handle(request: Any, client_address: Any, server: Any) -> object:
            if isinstance(request, tuple):
                raise TypeError(f"{function.__qualname__} is a stream handler; it cannot serve datagrams")
            if isinstance(request, Connection):  # the loop's record, kept across keep-alive turns
                return function(request)
            return function(Connection(request, client_address, server))

        # Read when a Server is assembled and by its loop:
        handle.sockwork_kind = "stream"  # type: ignore[attr-defined]
        handle.sockwork_speaks_first = speaks_first  # type: ignore[attr-defined]
        handle.sockwork_takes_connection = True  # type: ignore[attr-defined]
        return handle

    return wrap if fn is None else wrap(fn)


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


def echo(request: Any, client_address: Any, server: Any) -> object:
    """Send back whatever arrives: each datagram, or a stream until its end.

    On a stream, one turn sends back what one read returns, then gives the
    connection back to the loop (KEEP_ALIVE): a silent or slow client holds no worker.
    """
    if isinstance(request, tuple):
        payload, sock = request
        send_datagram(sock, payload, client_address)
        return None
    chunk = request.recv(_CHUNK)
    if not chunk:
        return None
    request.sendall(chunk)
    return KEEP_ALIVE


def discard(request: Any, client_address: Any, server: Any) -> object:
    """Read and drop everything (stream: until its end); never answer."""
    if isinstance(request, tuple):
        return None
    return KEEP_ALIVE if request.recv(_CHUNK) else None


echo.sockwork_speaks_first = discard.sockwork_speaks_first = "client"  # type: ignore[attr-defined]
# On a stream they get the loop's Connection, whose recv/sendall turn the kernel's timeout into TimeoutError.
echo.sockwork_takes_connection = discard.sockwork_takes_connection = True  # type: ignore[attr-defined]


@final
@attrs.frozen(kw_only=True)
class LinesOptions:
    """Options of the ``lines`` handler."""

    max_line: int = attrs.field(default=_CHUNK, validator=positive_int)
    """Longest line accepted, in bytes; a client sending a longer one is
    refused (its connection closed, counted ``refused``)."""


def lines(options: LinesOptions) -> MessageHandler:
    """A line protocol to try things with: each line is answered ``"<n>: <line>"``.

    A message handler: the loop reads and splits the lines, a worker only
    numbers them. The counter is per connection (``conn.state``), to show
    state kept across one client's lines.
    """

    @message_handler(framing="lines", max_message=options.max_line)
    def number_lines(line: bytes, conn: Connection) -> bytes:
        count = conn.state["count"] = conn.state.get("count", 0) + 1
        return b"%d: %s" % (count, line)

    number_lines.sockwork_kind = "stream"  # a count per connection means nothing for datagrams
    return number_lines


@hookimpl(trylast=True)
def sockwork_add_handlers() -> list[HandlerEntry]:
    return [
        HandlerEntry(
            "echo", lambda options: echo, NoOptions,
            description="send back whatever arrives (streams and datagrams)",
            async_factory=lambda options: _aio().echo,
            samples=HandlerSamples(stream=[(b"ping", b"ping")], datagram=[(b"ping", b"ping")]),
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
            samples=HandlerSamples(stream=[(b"hello\n", b"1: hello\n"), (b"a\nb\n", b"1: a\n2: b\n")]),
        ),
    ]


def _aio() -> Any:
    from . import aio  # asyncio is imported only when an async form is asked for

    return aio


@final
@attrs.frozen(kw_only=True)
class FramingOptions:
    """Options of the built-in framings, ``lines`` and ``length``."""

    max_message: int = attrs.field(default=DEFAULT_MAX_MESSAGE, validator=positive_int)
    """Longest message accepted, in bytes; a client sending a longer one is refused (counted ``refused``)."""


@hookimpl(trylast=True)
def sockwork_add_framings() -> list[FramingEntry]:
    return [
        FramingEntry("lines", lambda options: Lines(options.max_message), FramingOptions,
                     description="messages end with a newline (a CR before it dropped); replies get one"),
        FramingEntry("length", lambda options: LengthPrefixed(options.max_message), FramingOptions,
                     description="a 4-byte big-endian length before each message and each reply"),
    ]
