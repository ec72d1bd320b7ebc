"""A connection's life before and between its handler's turns: the record, the stages, keep-alive.

    accept ──► stages (PROXY header, TLS handshake: non-blocking, in the loop) ──► wait for bytes
           ──► handler in a worker ──► KEEP_ALIVE: back to waiting │ anything else: closed

A :class:`Connection` is the record of one accepted stream connection; the
loop keeps it while the connection waits (a descriptor and a few hundred
bytes, no thread) and hands it to the handler's turn. A
:class:`ConnectionStage` is a non-blocking step a transport runs on it before
any handler does.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any, Literal, Protocol, final, runtime_checkable

from .errors import ServerError

__all__ = ["KEEP_ALIVE", "Connection", "ConnectionStage", "StageFailed", "StageWant"]

_CHUNK = 65536
_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)


@final
class _KeepAlive:
    __slots__ = ()

    def __repr__(self) -> str:
        return "sockwork.KEEP_ALIVE"


KEEP_ALIVE: Any = _KeepAlive()
"""Return this from a stream handler to give the connection back to the loop.

The handler served one request and the client may send another: instead of
a worker blocking in ``recv`` while the client thinks, the connection waits
in the loop (under ``idle_timeout``) and the handler is called again, with
the same :class:`Connection` (its ``state`` and any buffered bytes kept),
when the next bytes arrive. Anything else a handler returns ends the
connection as before.
"""

StageWant = Literal["done", "read", "write"]


class StageFailed(ServerError):
    """A client failed a connection stage (a malformed PROXY header, a TLS handshake it got wrong).

    The connection is closed, one INFO line names the stage, the client and
    this message, and it is counted as ``refused``: the client's fault, never
    a handler failure.
    """


class ClosedBeforeSpeaking(ConnectionAbortedError):
    """The client closed the connection before sending a byte, as a balancer's TCP health check (or a
    port scan) does: raised by a stage, counted ``disconnected`` and logged at DEBUG only, being no news."""


@runtime_checkable
class ConnectionStage(Protocol):
    """A non-blocking step the loop runs on an accepted stream connection before dispatch.

    Transports list theirs in ``stages`` (an optional capability; a PROXY
    header, then a TLS handshake). The loop calls ``advance(conn)`` once the
    connection is accepted, then whenever its socket is ready for what the
    stage last asked: ``"read"`` or ``"write"`` (call again when readable /
    writable) or ``"done"`` (on to the next stage, then to the handler). The
    socket is non-blocking; ``advance`` must never block, and must read only
    the bytes it consumes (peek at the rest), because classic handlers read
    the socket directly.

    It may replace ``conn.socket`` (with a TLS-wrapped socket, say: then set
    the class attribute ``replaces_socket = True``, so that assembly refuses
    dispatchers that take the bare descriptor over, such as ``asyncio``) and
    ``conn.peer`` (the real client behind a proxy), and add to ``conn.info``.
    Raising :class:`StageFailed` refuses the client; ``BlockingIOError``
    means "call again when readable"; :class:`ClosedBeforeSpeaking` that the
    client closed without a byte (``disconnected``, logged at DEBUG only); any
    other ``OSError`` means it went away (counted ``disconnected``); a stage not done ``timeout``
    seconds after it began is cut (counted ``timed_out``). Any other
    exception is a bug in the stage: logged with its traceback, the
    connection closed and counted as failed; the server keeps serving.
    """

    name: str
    """What the logs call it: ``"PROXY header"``, ``"TLS handshake"``."""
    timeout: float | None
    """Seconds the client gets to complete this stage (None: only ``idle_timeout`` applies)."""

    def advance(self, conn: Connection) -> StageWant: ...


@final
class Connection:
    """A connected stream client: what a stream function gets, and what the loop keeps while it waits.

    Reads are buffered; writes go straight out (``write`` sends everything).
    ``peer`` is the client's address (behind a PROXY-protocol balancer: the
    real client's), ``socket`` the connected socket for anything not covered
    here (timeouts: ``conn.socket.settimeout(5)``). ``info`` holds what
    connection stages learned (``"proxy"``, ``"tls"``); ``state`` is the
    handler's own, kept for the life of the connection across keep-alive
    requests (see :data:`KEEP_ALIVE`).
    """

    __slots__ = ("_buffer", "info", "peer", "server", "socket", "state")

    def __init__(self, sock: socket.socket, peer: Any, server: Any = None) -> None:
        self.socket = sock
        self.peer = peer
        self.server = server
        self.info: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes read from the socket and not yet consumed (a pipelined next request, say)."""
        return len(self._buffer)

    @property
    def buffer(self) -> bytearray:
        """The read buffer itself, for the loop and framings: they append what they read and
        split messages off its front. Handlers read through ``recv``, ``read`` and ``readline``."""
        return self._buffer

    def __repr__(self) -> str:
        return f"<Connection peer={self.peer!r}>"

    def recv(self, size: int = _CHUNK) -> bytes:
        """Up to ``size`` bytes, as soon as any are there; ``b""`` at end of stream."""
        if self._buffer:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            return data
        return self._recv(size)

    def peek(self, size: int = _CHUNK) -> bytes:
        """Up to ``size`` bytes from the front of the stream, left in place for whoever reads next.

        What a connection stage looks at before it decides (a greeting, a header): first
        the bytes this record holds, then those the kernel holds (``MSG_PEEK``). Never
        blocks, so it may return fewer than ``size`` bytes: return ``"read"`` from
        ``advance`` to be called again when more have arrived. Raises
        ``BlockingIOError`` when nothing has arrived yet (a stage may let it propagate:
        it means "read"), and ``ConnectionAbortedError`` at the end of the stream (the
        client left: counted ``disconnected``). A TLS socket cannot peek (``ValueError``):
        a stage after the handshake consumes with :meth:`recv`.
        """
        held = bytes(self._buffer[:size])
        if len(held) >= size:
            return held
        try:
            more = self.socket.recv(size - len(held), _PEEK)
        except BlockingIOError:
            if held:
                return held
            raise
        if not more and not held:
            raise ConnectionAbortedError("the client closed the connection")
        return held + more

    def _recv(self, size: int) -> bytes:
        try:
            return self.socket.recv(size)
        except BlockingIOError:  # the kernel's receive timeout (see Limits.idle_timeout)
            raise TimeoutError("timed out") from None

    def read(self, size: int = -1) -> bytes:
        """Exactly ``size`` bytes (fewer only at end of stream); all until EOF if negative."""
        buffer = self._buffer
        while size < 0 or len(buffer) < size:
            chunk = self._recv(_CHUNK if size < 0 else max(size - len(buffer), _CHUNK))
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
            chunk = self._recv(_CHUNK)
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
        try:
            self.socket.sendall(data)
        except BlockingIOError:  # the kernel's send timeout (see Limits.idle_timeout)
            raise TimeoutError("timed out") from None

    sendall = write
