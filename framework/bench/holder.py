"""The holder of waiting connections for ``silent``: a process of its own, until SIGTERM.

It opens ``silent + trickle`` TCP connections and holds them: the silent ones send nothing, the
trickling ones a byte every ``every`` seconds each (staggered). Whatever the server sends is read and
dropped. It prints one JSON line when it has opened what it could (every connection, or none
completed for HOLD_STALL seconds, or HOLD_SETUP_LIMIT passed): ``{"established", "pending"}``; and
one when it stops: ``{"established", "closed_by_server"}`` (connections the server ended meanwhile).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import selectors
import signal
import socket
import threading
import time
from typing import Any

from .mux import CONNECTS_IN_FLIGHT

HOLD_INTERVAL = 0.0005  # seconds between two connects of the holder: a thread-per-connection server keeps up
HOLD_STALL = 2.0  # the holder stops opening connections after this long without one completing
HOLD_SETUP_LIMIT = 30.0  # ... or after this long in all


def hold(address: Any, silent: int, trickle: int, every: float) -> None:
    """Hold the connections until SIGTERM (see the module's docstring)."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    holder = _Holder(tuple(address), silent, trickle, every)
    while not stopping.is_set():
        holder.step(time.monotonic())
    holder.close()
    print(json.dumps({"established": holder.established, "closed_by_server": holder.closed}), flush=True)


class _Holder:
    def __init__(self, target: tuple[Any, ...], silent: int, trickle: int, every: float) -> None:
        self.target, self.trickle, self.every = target, trickle, every
        self.selector = selectors.DefaultSelector()
        self.waiting = list(range(silent + trickle))  # connection numbers below ``trickle`` trickle
        self.waiting.reverse()
        self.socks: dict[int, socket.socket] = {}
        self.connecting = self.established = self.closed = 0
        self.began = self.last_progress = self.next_connect = time.monotonic()
        self.ready = False
        self.next_byte: list[tuple[float, int]] = []

    def step(self, now: float) -> None:
        """One round: say "ready" when it is, connect, trickle, then wait for events."""
        if not self.ready and ((not self.waiting and not self.connecting) or now - self.last_progress > HOLD_STALL
                               or now - self.began > HOLD_SETUP_LIMIT):
            self._say_ready(now)
        while self.waiting and self.connecting < CONNECTS_IN_FLIGHT and now >= self.next_connect:
            self.next_connect = now + HOLD_INTERVAL
            self._connect(self.waiting.pop())
        while self.next_byte and self.next_byte[0][0] <= now:
            _, number = heapq.heappop(self.next_byte)
            if number in self.socks:
                with contextlib.suppress(OSError):  # closed by the server: noticed by the read below
                    self.socks[number].send(b"x")
                heapq.heappush(self.next_byte, (now + self.every, number))
        wait = 0.2 if not self.next_byte else max(0.0, min(0.2, self.next_byte[0][0] - now))
        if self.waiting:
            wait = min(wait, HOLD_INTERVAL)
        for key, _events in self.selector.select(wait):
            number, state = key.data
            sock: socket.socket = key.fileobj  # type: ignore[assignment]  # registered sockets
            if state == "connecting":
                self._connected(number, sock)
            else:
                self._readable(number, sock)

    def _say_ready(self, now: float) -> None:
        self.ready = True
        print(json.dumps({"established": self.established, "pending": self.connecting + len(self.waiting)}),
              flush=True)
        self.waiting.clear()  # what did not connect by now is not tried again (the pending may still complete)
        self.next_byte = [(now + self.every * n / max(1, self.trickle), n)
                          for n in range(self.trickle) if n in self.socks]
        heapq.heapify(self.next_byte)

    def _connect(self, number: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(self.target)
        self.connecting += 1
        self.selector.register(sock, selectors.EVENT_WRITE, (number, "connecting"))

    def _connected(self, number: int, sock: socket.socket) -> None:
        self.connecting -= 1
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.selector.unregister(sock)
            sock.close()
            return
        self.established += 1
        self.last_progress = time.monotonic()
        self.socks[number] = sock
        self.selector.modify(sock, selectors.EVENT_READ, (number, "open"))

    def _readable(self, number: int, sock: socket.socket) -> None:
        try:
            gone = not sock.recv(65536)
        except BlockingIOError:
            gone = False
        except OSError:
            gone = True
        if gone:
            self.closed += 1
            self.selector.unregister(sock)
            sock.close()
            del self.socks[number]

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]  # sockets
        self.selector.close()
