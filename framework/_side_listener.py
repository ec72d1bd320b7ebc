"""A small listener beside the server (the metrics endpoint), served by the server's own loop.

    server's loop selector ──► this listener's selector (one descriptor: epoll is itself pollable)
                                  ├── its listening socket ──► accept (at most MAX_CONNECTIONS held)
                                  └── its connections      ──► read the request ──► respond() ──► write ──► close

It never takes a worker and starts no thread: a process that forks (``fork``,
``prefork``) has no other thread to fork from, and a prefork supervisor, whose
loop only watches its workers, answers at once. A scrape is served between two
rounds of the loop; with the ``inline`` dispatcher it waits for the running
handler.

Rule 1: bounded: at most MAX_CONNECTIONS connections (a new one closes the
oldest), REQUEST_BYTES of request each, and none older than TIMEOUT seconds
once the listener runs again.
Rule 2: nothing here blocks: every socket is non-blocking, and what a client
does not read is kept for the next time it is writable.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable
from typing import final

__all__ = ["SideListener"]

MAX_CONNECTIONS = 16
REQUEST_BYTES = 16384
TIMEOUT = 10.0

Respond = Callable[[bytes, bool], bytes | None]
"""``respond(received, eof)``: the whole reply for what was received so far (the connection closes after
it), or None to wait for more. Called on accept with ``b""`` too, for protocols where the server speaks first."""


@final
class _Client:
    __slots__ = ("data", "out", "since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""
        self.out: memoryview | None = None  # the reply, while it is being written
        self.since = time.monotonic()


@final
class SideListener:
    """Listens on ``(host, port)`` (port 0: the OS picks; read ``address``) and answers with ``respond``.

    ``fileno()`` is for the owner's selector; call ``run_ready()`` when it is readable. ``close()`` ends every
    connection and the listening socket; ``close_in_child()`` does so in a forked child without touching
    the parent's copies (only this process's descriptors are closed).
    """

    def __init__(self, host: str, port: int, respond: Respond) -> None:
        self._respond = respond
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=MAX_CONNECTIONS)
        try:
            self._sock.setblocking(False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._sock, selectors.EVENT_READ, None)
            self._fileno = self._selector.fileno()  # (PollSelector has none: a TypeError names the problem)
        except BaseException:
            self._sock.close()
            raise
        self._clients: dict[int, _Client] = {}

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def fileno(self) -> int:
        return self._fileno

    def run_ready(self) -> None:
        """Serve what is ready now, without blocking; close connections past TIMEOUT."""
        for key, mask in self._selector.select(0):
            client = key.data
            if client is None:
                self._accept()
            elif mask & selectors.EVENT_WRITE:
                self._write(client)
            else:
                self._read(client)
        now = time.monotonic()
        for client in [c for c in self._clients.values() if now - c.since > TIMEOUT]:
            self._drop(client)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, a client gone already: try again next time
                return
            if len(self._clients) >= MAX_CONNECTIONS:
                self._drop(min(self._clients.values(), key=lambda c: c.since))
            sock.setblocking(False)
            client = self._clients[sock.fileno()] = _Client(sock)
            self._selector.register(sock, selectors.EVENT_READ, client)
            self._answer(client, eof=False)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.data += data
        if len(client.data) > REQUEST_BYTES:
            self._drop(client)
            return
        self._answer(client, eof=not data)

    def _answer(self, client: _Client, eof: bool) -> None:
        reply = self._respond(client.data, eof)
        if reply is None:
            if eof:
                self._drop(client)
            return
        client.out = memoryview(reply)
        self._selector.modify(client.sock, selectors.EVENT_WRITE, client)
        self._write(client)

    def _write(self, client: _Client) -> None:
        assert client.out is not None
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_WR)
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.sock)
        client.sock.close()

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        self._selector.close()
        self._sock.close()

    def close_in_child(self) -> None:
        """In a forked child: close this process's copies only. No unregistering: an epoll set is shared
        across fork, and removing a connection from it would remove it for the parent too."""
        for client in self._clients.values():
            client.sock.close()
        self._clients.clear()
        self._selector.close()
        self._sock.close()
