"""Message handlers: the loop frames, the worker computes.

A message handler is a function ``fn(message, conn) -> reply | None`` that
gets one complete message and returns the reply. On a stream transport the
server's loop reads each connection without blocking into a bounded buffer,
splits it into messages with a :class:`Framing` (lines, or length-prefixed),
hands complete messages to a worker and writes the replies back without
blocking, in order. A slow or trickling client costs buffer bytes, never a
worker; a message over ``max_message`` bytes is refused (the connection is
closed and counted ``refused``); one that is not complete within
``limits.message_timeout`` of its first byte is cut (``timed_out``).

On a datagram transport no framing is needed: each datagram is one message
and the reply goes back to its sender (the same function serves both)::

    @message_handler                      # lines: b"PING" in, b"PONG" out (+ b"\\n" on streams)
    def ping(message, conn):
        return b"PONG" if message == b"PING" else None
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol, final, overload

from .connection import Connection, StageFailed

__all__ = ["Framing", "LengthPrefixed", "Lines", "MessageHandler", "message_handler", "send_datagram"]

DEFAULT_MAX_MESSAGE = 65536
_READ = 65536


class Framing(Protocol):
    """How a byte stream is cut into messages, and how a reply is put back on it."""

    max_message: int

    def split(self, buffer: bytearray) -> list[bytes]:
        """Remove the complete messages at the front of ``buffer`` and return them.

        Raises ValueError (with a message for the log) for a message over
        ``max_message`` bytes, complete or not, or a malformed frame.
        """

    def finish(self, buffer: bytearray) -> list[bytes]:
        """At the end of the stream: the last message left in ``buffer`` (emptied), if it is one.

        Raises ValueError if what is left cannot be a message (a truncated frame).
        """

    def frame(self, reply: bytes) -> bytes:
        """The bytes that carry ``reply`` on the stream."""


@final
class Lines:
    """Messages end with ``b"\\n"`` (a ``b"\\r"`` before it is dropped too); replies get a ``b"\\n"`` appended."""

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = _positive("max_message", max_message)

    def __repr__(self) -> str:
        return f"Lines(max_message={self.max_message})"

    def split(self, buffer: bytearray) -> list[bytes]:
        messages: list[bytes] = []
        start = 0
        limit = self.max_message
        while (end := buffer.find(b"\n", start)) >= 0:
            if end - start > limit:
                break
            stop = end - 1 if end > start and buffer[end - 1] == 13 else end  # b"\r"
            messages.append(bytes(buffer[start:stop]))
            start = end + 1
        if start:
            del buffer[:start]
        if messages:
            return messages  # answered first; a line over the limit behind them is refused next time
        newline = buffer.find(b"\n")
        if (newline if newline >= 0 else len(buffer)) > limit:
            raise ValueError(f"sent a line longer than {limit} bytes")
        return messages

    def finish(self, buffer: bytearray) -> list[bytes]:
        """A last line without its ``b"\n"`` is still a line."""
        rest = bytes(buffer[:-1] if buffer.endswith(b"\r") else buffer)
        buffer.clear()
        return [rest] if rest else []

    def frame(self, reply: bytes) -> bytes:
        return reply + b"\n"


_LENGTH = struct.Struct("!I")


@final
class LengthPrefixed:
    """Each message is preceded by its length, 4 bytes big-endian; replies are framed the same way."""

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = _positive("max_message", max_message)

    def __repr__(self) -> str:
        return f"LengthPrefixed(max_message={self.max_message})"

    def split(self, buffer: bytearray) -> list[bytes]:
        messages: list[bytes] = []
        start = 0
        header = _LENGTH.size
        while len(buffer) - start >= header:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > self.max_message:
                if messages:
                    break  # answered first; the oversized one is refused next time
                raise ValueError(f"announced a {length}-byte message; the limit is {self.max_message} bytes")
            if len(buffer) - start - header < length:
                break
            messages.append(bytes(buffer[start + header:start + header + length]))
            start += header + length
        if start:
            del buffer[:start]
        return messages

    def finish(self, buffer: bytearray) -> list[bytes]:
        if buffer:
            left = len(buffer)
            buffer.clear()
            raise ValueError(f"ended the stream in the middle of a message ({left} bytes of it sent)")
        return []

    def frame(self, reply: bytes) -> bytes:
        if len(reply) > 0xFFFFFFFF:
            raise ValueError(f"a reply of {len(reply)} bytes does not fit a 4-byte length")
        return _LENGTH.pack(len(reply)) + reply


FRAMINGS: dict[str, Callable[[int], Framing]] = {"lines": Lines, "length": LengthPrefixed}
"""The built-in framings by name, for ``message_handler(framing=...)``; a config file chooses any registered
framing, built-in or a plugin's (the ``sockwork_add_framings`` hook), by name."""


MessageFunction = Callable[[bytes, Connection], "bytes | None"]


@final
class MessageHandler:
    """A handler factory made by :func:`message_handler` (see the module docstring).

    The server's loop uses ``sockwork_framing`` and ``sockwork_answer``;
    called as a classic handler factory (a forked child, a dispatcher that
    serves in another process, the legacy module) it serves the connection
    itself, blocking, with the same framing.
    """

    sockwork_speaks_first = "client"
    sockwork_takes_connection = True
    sockwork_kind: str | None = None  # serves streams and datagrams alike, unless a maker says otherwise

    def __init__(self, fn: MessageFunction, framing: Framing) -> None:
        self.fn = fn
        self.sockwork_framing = framing
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__doc__ = getattr(fn, "__doc__", None)

    def __repr__(self) -> str:
        return f"<message handler {self.__qualname__} {self.sockwork_framing!r}>"

    def sockwork_answer(self, messages: list[bytes], conn: Connection) -> list[bytes]:
        """One turn: the replies to ``messages``, framed, in order."""
        fn, frame = self.fn, self.sockwork_framing.frame
        replies = []
        for message in messages:
            reply = fn(message, conn)
            if reply is not None:
                replies.append(frame(reply))
        return replies

    def __call__(self, request: Any, client_address: Any, server: Any) -> None:
        if isinstance(request, tuple):  # a datagram is one message; the reply goes back unframed
            payload, sock = request
            reply = self.fn(payload, Connection(sock, client_address, server))
            if reply is not None:
                send_datagram(sock, reply, client_address)
            return
        conn = request if isinstance(request, Connection) else Connection(request, client_address, server)
        framing = self.sockwork_framing
        buffer = conn.buffer
        ended = False
        while True:
            try:
                messages = framing.finish(buffer) if ended else framing.split(buffer)
            except ValueError as exc:
                raise StageFailed(str(exc)) from None
            if messages:
                conn.socket.sendall(b"".join(self.sockwork_answer(messages, conn)))
            if ended:
                return
            data = conn.socket.recv(_READ)
            ended = not data
            buffer += data


@overload
def message_handler(fn: MessageFunction, /) -> MessageHandler: ...


@overload
def message_handler(
    *, framing: str | Framing = "lines", max_message: int = DEFAULT_MAX_MESSAGE,
) -> Callable[[MessageFunction], MessageHandler]: ...


def message_handler(
    fn: MessageFunction | None = None, /, *, framing: str | Framing = "lines", max_message: int = DEFAULT_MAX_MESSAGE,
) -> MessageHandler | Callable[[MessageFunction], MessageHandler]:
    """Turn ``fn(message, conn) -> reply | None`` into a message handler (usable as a decorator, with or
    without arguments).

    ``framing``: ``"lines"`` (default), ``"length"`` (4-byte big-endian
    length prefix) or a :class:`Framing` object; ``max_message``: the
    longest message accepted, in bytes (for the named framings). ``conn``
    is the client's :class:`~sockwork.Connection`: ``conn.peer`` its address,
    ``conn.state`` a dict kept for the life of the connection.
    """
    if isinstance(framing, str):
        if framing not in FRAMINGS:
            raise ValueError(f"unknown framing {framing!r}; choose one of {', '.join(sorted(FRAMINGS))} "
                             "or give a Framing object")
        chosen = FRAMINGS[framing](max_message)
    elif callable(getattr(framing, "split", None)) and callable(getattr(framing, "frame", None)):
        chosen = framing
    else:
        raise TypeError(f"'framing' must be a name or an object with split() and frame(), got {framing!r}")

    def wrap(function: MessageFunction) -> MessageHandler:
        if not callable(function):
            raise TypeError(f"message_handler() needs a function taking (message, conn), got {function!r}")
        return MessageHandler(function, chosen)

    return wrap if fn is None else wrap(fn)


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{name}' must be an int >= 1, got {value!r}")
    return value


def send_datagram(sock: socket.socket, data: bytes, client_address: Any) -> None:
    """Answer a datagram client, with a clear error for one that cannot be answered."""
    if not client_address:
        raise ValueError(
            "cannot reply to a datagram client whose socket has no address "
            "(a Unix datagram client must bind its socket to a path to get replies)"
        )
    sock.sendto(data, client_address)
