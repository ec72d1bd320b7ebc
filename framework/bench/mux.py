"""Many persistent stream clients on one selector per client process (``many``, ``lines``, ``silent``).

Each client sends a request, waits for its reply, again. Clients connect a few at a time: one takes
a slot (CONNECTS_IN_FLIGHT) from its connect until its first reply, or for at most SLOT_HOLD seconds
after its connection completed, so a backlog of 5 is not flooded, yet a server that never answers
some clients does not stop the others from connecting. A failed client connects again after
RECONNECT_PAUSE.
"""

from __future__ import annotations

import errno
import heapq
import math
import os
import selectors
import socket
import time
from typing import Any

from . import workloads
from .tally import ClientTally, Setup, client_report, read_line, read_window, say_ready

CONNECTS_IN_FLIGHT = 2  # per multiplexing process: the standard library's backlog of 5 must not drop SYNs
SLOT_HOLD = 0.02  # see the module's docstring
RECONNECT_PAUSE = 0.05  # seconds before a multiplexed client whose connection failed connects again


class MuxClient:
    """One multiplexed client: a non-blocking connection and the request it has outstanding."""

    __slots__ = ("answered", "began", "expected", "inbox", "number", "outbox", "sock", "tally")

    def __init__(self, tally: ClientTally) -> None:
        self.tally = tally
        self.sock: socket.socket | None = None
        self.began = 0.0
        self.number = 0  # requests sent on this connection; 0 while it connects
        self.answered = False  # has had a reply (ever)
        self.expected = b""
        self.inbox = bytearray()
        self.outbox = b""


def mux_clients(spec: dict[str, Any], address: Any, clients: int, control: int, out: Any) -> dict[str, Any]:
    """Run ``clients`` multiplexed clients of ``spec`` through set-up and the driver's window."""
    if spec["kind"] not in ("tcp", "unix"):
        raise ValueError(f"multiplexed clients need a stream transport, not {spec['kind']!r}")
    return _Mux(spec, address, clients, control, out).run()


class _Mux:
    """The selector, the clients on it, and the connect slots and pauses between them."""

    def __init__(self, spec: dict[str, Any], address: Any, clients: int, control: int, out: Any) -> None:
        self.spec, self.control, self.out = spec, control, out
        self.payload = workloads.payload(spec)
        self.target = workloads.target(spec, address)
        self.selector = selectors.DefaultSelector()
        self.everyone = [MuxClient(ClientTally(math.inf, math.inf)) for _ in range(clients)]
        self.to_connect: list[MuxClient] = self.everyone[::-1]  # popped from the end: in order
        self.pauses: list[tuple[float, int, MuxClient]] = []  # (when, tie-breaker, client): connect again
        self.slots: dict[int, float] = {}  # id(client) -> when its slot frees itself
        self.setup = Setup(clients)
        self.stop = math.inf
        self.answered_at_setup = -1  # not yet set up

    def run(self) -> dict[str, Any]:
        while (now := time.perf_counter()) < self.stop:
            self._schedule(now)
            wait = min(self.stop - now, 0.05)
            if self.pauses:
                wait = min(wait, self.pauses[0][0] - now)
            for key, events in self.selector.select(max(0.0, wait)):
                if key.data is None:  # the driver's window
                    self._open_window()
                else:
                    self._on_event(key.data, events, time.perf_counter())
        for client in self.everyone:
            if client.sock is not None:
                client.sock.close()
        self.selector.close()
        return client_report(self.answered_at_setup, [c.tally for c in self.everyone])

    def _schedule(self, now: float) -> None:
        """Say "set up" when it is; connect whoever may (after a pause, within the slots)."""
        if self.answered_at_setup < 0 and self.setup.over(now):
            self.answered_at_setup = len(self.everyone) - self.setup.waiting
            say_ready(self.out, self.answered_at_setup)
            self.selector.register(self.control, selectors.EVENT_READ, None)
        while self.pauses and self.pauses[0][0] <= now:
            self.to_connect.append(heapq.heappop(self.pauses)[2])
        for expired in [slot for slot, until in self.slots.items() if until <= now]:
            del self.slots[expired]
        while self.to_connect and len(self.slots) < CONNECTS_IN_FLIGHT:
            self._connect(self.to_connect.pop(), now)

    def _open_window(self) -> None:
        start, self.stop = read_window(read_line(self.control))
        self.selector.unregister(self.control)
        for each in self.everyone:
            each.tally.start, each.tally.stop = start, self.stop

    def _fail(self, client: MuxClient, now: float) -> None:
        client.tally.record(client.began, now, False)
        self.slots.pop(id(client), None)
        if client.sock is not None:
            self.selector.unregister(client.sock)
            client.sock.close()
            client.sock = None
        heapq.heappush(self.pauses, (now + RECONNECT_PAUSE, id(client), client))

    def _send_request(self, client: MuxClient, now: float) -> None:
        assert client.sock is not None
        client.number += 1
        client.began = now
        client.expected = workloads.expected(self.spec, self.payload, client.number)
        client.inbox.clear()
        try:
            sent = client.sock.send(self.payload)
        except BlockingIOError:
            sent = 0
        client.outbox = self.payload[sent:]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbox else 0)
        self.selector.modify(client.sock, events, client)

    def _connect(self, client: MuxClient, now: float) -> None:
        sock = workloads.socket_for(self.spec)
        sock.setblocking(False)
        client.sock, client.number, client.began = sock, 0, now
        self.slots[id(client)] = math.inf
        self.selector.register(sock, selectors.EVENT_WRITE, client)
        err = sock.connect_ex(self.target)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._fail(client, now)

    def _on_event(self, client: MuxClient, events: int, now: float) -> None:
        sock = client.sock
        if sock is None:  # closed by an earlier event of this round
            return
        try:
            if client.number == 0:  # connecting
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                if not client.answered:
                    self.slots[id(client)] = now + SLOT_HOLD
                self._send_request(client, now)
                return
            if events & selectors.EVENT_WRITE and client.outbox:
                sent = sock.send(client.outbox)
                client.outbox = client.outbox[sent:]
                if not client.outbox:
                    self.selector.modify(sock, selectors.EVENT_READ, client)
            if events & selectors.EVENT_READ:
                self._receive(client, sock, now)
        except (OSError, ValueError):
            self._fail(client, now)

    def _receive(self, client: MuxClient, sock: socket.socket, now: float) -> None:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        client.inbox += chunk
        if len(client.inbox) < len(client.expected):
            return
        if client.inbox != client.expected:
            raise ValueError("a wrong reply")
        client.tally.record(client.began, now, True)
        if not client.answered:
            client.answered = True
            self.setup.answered()
            self.slots.pop(id(client), None)
        if now < self.stop:
            self._send_request(client, now)
