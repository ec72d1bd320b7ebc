"""The "bare threads" reference rows: the least a pool of Python threads costs per request.

Not a product and not sockwork: nothing but sockets, one epoll with one-shot events and worker
threads, serving the echo protocol, so that every run shows sockwork's own overhead as a ratio
("× bare"). Measured next to sockwork's ``pool``, the difference is what the framework adds per
request (its accounting, limits, hooks, the loop's bookkeeping), not what Python threads cost.

- ``bare-threads`` (hand-off, the shape of sockwork's ``pool``): the main thread accepts; one loop
  thread waits on the epoll and queues each connection that became readable to a worker; the worker
  serves one turn (``recv``, ``sendall``) and re-arms the connection (``EPOLLONESHOT``), or closes it
  at its end.
- ``bare-lf`` (leader/followers): no loop thread; every worker waits on the shared epoll itself, one
  event at a time, serves the turn it got and re-arms.

Both run as many workers as ``pool`` does by default (4 per CPU, at most 32). Over UDP both are the
same: every worker blocks in ``recvfrom`` on the one socket and answers with ``sendto``. Linux only
(epoll); plain TCP, Unix stream and UDP only (no TLS, no line protocol).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

BARE = {"bare-threads": "hand-off", "bare-lf": "leader/followers"}
ONESHOT = select.EPOLLIN | select.EPOLLONESHOT if hasattr(select, "EPOLLONESHOT") else 0


def bare_unsupported(implementation: str, spec: dict[str, Any]) -> str | None:
    """Why a bare row cannot serve ``spec``, or None."""
    if not hasattr(select, "epoll"):
        return "needs epoll (Linux)"
    if spec["kind"] not in ("tcp", "unix", "udp") or spec["protocol"] != "echo" or spec.get("tls"):
        return "serves only the echo protocol, over plain TCP, Unix or UDP"
    return None


def workers() -> int:
    """As many as ``pool``'s default: 4 per CPU, at most 32."""
    return min(32, 4 * (os.cpu_count() or 1))


def serve_bare(implementation: str, spec: dict[str, Any], path: str) -> None:
    """Run one bare server until SIGTERM; print its address first."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # every thread started below inherits it
    if spec["kind"] == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        _start(workers(), _datagram_worker(sock))
        bound: Any = sock.getsockname()
    else:
        server = _Streams(spec, path)
        server.start(leader_followers=implementation == "bare-lf")
        bound = path if spec["kind"] == "unix" else server.listener.getsockname()
    print(json.dumps(bound), flush=True)
    signal.sigwait({signal.SIGTERM})  # then the process ends, with its daemon threads


def _start(count: int, target: Callable[[], None]) -> None:
    for _ in range(count):
        threading.Thread(target=target, daemon=True).start()


def _datagram_worker(sock: socket.socket) -> Callable[[], None]:
    def work() -> None:
        recvfrom, sendto = sock.recvfrom, sock.sendto
        while True:
            data, address = recvfrom(65536)
            with contextlib.suppress(OSError):
                sendto(data, address)
    return work


class _Streams:
    """A listener, the open connections by descriptor, and the epoll that watches them."""

    def __init__(self, spec: dict[str, Any], path: str) -> None:
        self.tcp = spec["kind"] == "tcp"
        self.listener = socket.socket(socket.AF_INET if self.tcp else socket.AF_UNIX, socket.SOCK_STREAM)
        if self.tcp:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0) if self.tcp else path)
        self.listener.listen(1024)
        self.epoll = select.epoll()
        self.connections: dict[int, socket.socket] = {}

    def start(self, leader_followers: bool) -> None:
        if leader_followers:
            _start(workers(), self._follow)
        else:
            ready: queue.SimpleQueue[int] = queue.SimpleQueue()
            _start(workers(), lambda: self._take(ready.get))
            _start(1, lambda: self._hand_off(ready.put))
        _start(1, self._accept)

    def _accept(self) -> None:
        while True:
            sock, _ = self.listener.accept()
            if self.tcp:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections[sock.fileno()] = sock
            self.epoll.register(sock.fileno(), ONESHOT)

    def _hand_off(self, put: Callable[[int], None]) -> None:
        poll = self.epoll.poll
        while True:
            for fd, _ in poll(-1, 64):
                put(fd)

    def _take(self, get: Callable[[], int]) -> None:
        turn = self._turn
        while True:
            turn(get())

    def _follow(self) -> None:
        poll, turn = self.epoll.poll, self._turn
        while True:
            for fd, _ in poll(-1, 1):
                turn(fd)

    def _turn(self, fd: int) -> None:
        """One request: read what came, send it back, re-arm; or close at the connection's end."""
        sock = self.connections.get(fd)
        if sock is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                sock.sendall(data)
                self.epoll.modify(fd, ONESHOT)
                return
        except OSError:
            pass
        del self.connections[fd]  # before close(): the next accept may reuse the number
        sock.close()  # which also takes it out of the epoll
