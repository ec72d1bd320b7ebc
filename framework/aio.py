"""Async handlers: ``async def`` functions served on an event loop by the ``asyncio`` dispatcher.

The shapes are asyncio's own, so code written for ``asyncio.start_server``
moves over unchanged:

- a stream handler is ``async def handle(reader, writer)`` with an
  ``asyncio.StreamReader`` and ``asyncio.StreamWriter`` (exactly what
  ``start_server`` passes); ``writer.get_extra_info("peername")`` is the client;
- a datagram handler is ``async def handle(payload, client_address)`` returning
  the reply bytes, or None for no reply (as :func:`sockwork.datagram_handler`,
  awaited). One that sends more than one reply takes a third parameter,
  ``async def handle(payload, client_address, transport)``, and calls
  ``transport.sendto(data, client_address)`` as with asyncio's datagram transport.

Mark one with :func:`stream_handler` or :func:`datagram_handler` (or pass a
bare ``async def`` function: assembly reads it as the transport's kind). The
mark says "async" (the ``sockwork_async`` capability): assembling an async
handler with a blocking dispatcher, or a blocking handler with ``asyncio``,
fails with a message naming the right dispatcher. The server closes the
connection after the handler returns.

The built-in handlers ``echo``, ``lines`` and ``discard`` have async forms
here; the registry's entries point to them, so ``sockwork serve --dispatcher
asyncio`` serves ``echo`` with no code.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, final

from .connection import StageFailed
from .interfaces import capability

__all__ = [
    "AsyncHandler", "DatagramFunction", "StreamFunction", "as_async_handler", "datagram_handler", "discard", "echo",
    "lines", "runs_async", "stream_handler",
]

_CHUNK = 65536

StreamFunction = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[object]]
"""``async def handle(reader, writer)``, as ``asyncio.start_server`` calls it."""
DatagramFunction = Callable[..., Awaitable[bytes | None]]
"""``async def handle(payload, client_address) -> reply | None``, or with a third parameter,
``transport``, to ``sendto`` more replies."""


@final
class AsyncHandler:
    """An async handler: a stream form, a datagram form, or both (the built-in ``echo``).

    A dispatcher that runs async handlers (``runs_async``) awaits ``stream(reader,
    writer)`` for each connection or ``datagram(payload, client_address)`` for
    each datagram. Called the blocking way, ``(request, client_address, server)``,
    it raises TypeError naming the dispatcher to use: assembly refuses that pairing
    first, so only code that bypasses assembly gets there.
    """

    sockwork_async = True

    __slots__ = ("__qualname__", "__wrapped__", "datagram", "datagram_sends", "stream")

    def __init__(self, stream: StreamFunction | None = None, datagram: DatagramFunction | None = None,
                 name: str | None = None) -> None:
        if stream is None and datagram is None:
            raise TypeError("an AsyncHandler needs a stream form, a datagram form, or both")
        for form, what in ((stream, "stream"), (datagram, "datagram")):
            if form is not None and not inspect.iscoroutinefunction(form):
                raise TypeError(f"the {what} form of an async handler must be an 'async def' function, got {form!r}")
        self.stream = stream
        self.datagram = datagram
        self.datagram_sends = datagram is not None and _positional(datagram) >= 3
        """The datagram form takes a third parameter: something to ``sendto`` more replies with."""
        self.__wrapped__ = stream or datagram
        self.__qualname__ = name or getattr(self.__wrapped__, "__qualname__", repr(self.__wrapped__))

    @property
    def sockwork_kind(self) -> str | None:
        """``"stream"`` or ``"datagram"`` when it has only that form; None when it has both."""
        if self.stream is None:
            return "datagram"
        return "stream" if self.datagram is None else None

    def __repr__(self) -> str:
        return f"<async handler {self.__qualname__}>"

    def __call__(self, request: Any, client_address: Any, server: Any) -> None:
        raise TypeError(f"{self.__qualname__} is an async handler: serve it with dispatcher 'asyncio' "
                        "(or prefork with inner = 'asyncio')")


def stream_handler(fn: StreamFunction) -> AsyncHandler:
    """Mark ``async def fn(reader, writer)`` as an async stream handler (usable as a decorator)."""
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"sockwork.aio.stream_handler() needs an 'async def fn(reader, writer)', got {fn!r}; "
                        "for a blocking function use sockwork.stream_handler")
    return AsyncHandler(stream=fn)


def datagram_handler(fn: DatagramFunction) -> AsyncHandler:
    """Mark ``async def fn(payload, client_address) -> reply | None`` as an async datagram handler."""
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"sockwork.aio.datagram_handler() needs an 'async def fn(payload, client_address)', "
                        f"got {fn!r}; for a blocking function use sockwork.datagram_handler")
    return AsyncHandler(datagram=fn)


def as_async_handler(handler: object, kind: str | None) -> AsyncHandler | None:
    """``handler`` as an :class:`AsyncHandler` if it is async, else None.

    A bare ``async def`` function is read as the transport's ``kind``: ``(reader,
    writer)`` on a stream transport, ``(payload, client_address)`` on a datagram one.
    """
    if isinstance(handler, AsyncHandler):
        return handler
    if inspect.iscoroutinefunction(handler):
        return AsyncHandler(datagram=handler) if kind == "datagram" else AsyncHandler(stream=handler)
    return None


def _positional(fn: Callable[..., object]) -> int:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in kinds)


def runs_async(dispatcher: object) -> bool:
    """Whether ``dispatcher`` serves async handlers (its ``runs_async`` capability)."""
    return bool(capability(dispatcher, "runs_async"))


# ---- The built-in handlers' async forms ---------------------------------------------

async def _echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()


async def _echo_datagram(payload: bytes, client_address: Any) -> bytes:
    return payload


async def _discard_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(_CHUNK):
        pass


async def _discard_datagram(payload: bytes, client_address: Any) -> None:
    return None


echo = AsyncHandler(_echo_stream, _echo_datagram, name="echo")
"""Send back whatever arrives: each datagram, or a stream until its end."""

discard = AsyncHandler(_discard_stream, _discard_datagram, name="discard")
"""Read and drop everything; never answer."""


def lines(options: Any) -> AsyncHandler:
    """The async form of the ``lines`` handler: each line answered ``"<n>: <line>"``.

    The blocking form's behaviour exactly (its ``Lines`` framing): ``"\\r\\n"`` reads as ``"\\n"``, a
    last line without one is answered too, and a line longer than ``options.max_line`` refuses the
    connection (``StageFailed``: counted ``refused``) once the lines before it are answered.
    """
    max_line: int = options.max_line

    async def number_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count = 0
        buffer = bytearray()
        ended = False
        while True:
            newline = buffer.find(b"\n")
            if (newline if newline >= 0 else len(buffer)) > max_line:
                raise StageFailed(f"sent a line longer than {max_line} bytes")
            if newline < 0:
                if not ended:
                    chunk = await reader.read(_CHUNK)
                    ended = not chunk
                    buffer += chunk
                    continue
                newline = len(buffer)  # the last line, without its b"\n"
                if not buffer[:-1 if buffer.endswith(b"\r") else None]:
                    return
            line = buffer[:newline - 1] if buffer[newline - 1:newline] == b"\r" else buffer[:newline]
            del buffer[:newline + 1]
            count += 1
            writer.write(b"%d: %s\n" % (count, line))
            await writer.drain()

    return AsyncHandler(stream=number_lines, name="lines")
