"""Client processes, and clients on a thread each (the multiplexed ones are in ``mux``).

A client process runs in two phases. Setting up: its clients connect and exchange requests until
each has had one reply, or until no client got its first reply for SETUP_STALL seconds (a server
that starves some clients), or SETUP_LIMIT passed; then it prints one line, {"answered": n}. The
driver, once every client process has said so, writes the measured window to their stdin,
{"start": t, "stop": t} in wall-clock seconds; the clients go on exchanging (the time before
"start" is the warm-up) and, after "stop", print their report. So connecting 1,000 clients to a
listen backlog of 5 (whose dropped SYNs are retried after 1 s, 3 s, ...) happens before the
warm-up, and the window is the same for every client process.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
import threading
import time
from typing import Any

from . import tls, workloads
from .mux import mux_clients
from .tally import ClientTally, Setup, client_report, read_line, read_window, say_ready

GRACE = 0.25  # seconds a client waits past the window before it gives up on a reply (then: in flight, not counted)
UDP_REPLY_TIMEOUT = 1.0  # a datagram or its reply can be lost: after this long, an error


def run_clients(spec: dict[str, Any], address: Any, clients: int, control: int, out: Any,
                directory: str | None = None) -> dict[str, Any]:
    """Drive ``clients`` clients of ``spec``: set up, say so on ``out``, read the window from the
    file descriptor ``control``, measure. ``directory`` holds the run's CA certificate (``tls``).

    Returns ``{"answered_at_setup": n, "clients": [ClientTally.report(), ...], "latencies": [seconds, ...]}``.
    """
    if spec["client"] == "mux":
        return mux_clients(spec, address, clients, control, out)
    return ThreadClients(spec, address, clients, directory).run(control, out)


# ---- A thread per client ------------------------------------------------------------------

class ThreadClients:
    """A thread per client, blocking sockets (each thread: connect, exchange, [close], again)."""

    def __init__(self, spec: dict[str, Any], address: Any, clients: int, directory: str | None = None) -> None:
        if spec["protocol"] != "echo":
            raise ValueError(f"the thread clients speak echo only, not {spec['protocol']!r}")
        self.spec = spec
        self.tls: ssl.SSLContext | None = None
        if spec.get("tls"):
            if directory is None:
                raise ValueError("the tls workload's clients need the run's directory (its CA certificate)")
            self.tls = tls.client_context(directory)
        self.payload = workloads.payload(spec)
        self.target = workloads.target(spec, address)
        self.udp = spec["kind"] == "udp"
        self.setup = Setup(clients)
        self.lock = threading.Lock()
        self.tallies = [ClientTally(math.inf, math.inf) for _ in range(clients)]  # nothing counts before the window
        self.current: dict[int, socket.socket] = {}  # each thread's socket: shut down after the window to end a wait
        self.finished = threading.Event()

    def run(self, control: int, out: Any) -> dict[str, Any]:
        workers = [threading.Thread(target=self._client, args=(n,)) for n in range(len(self.tallies))]
        for worker in workers:
            worker.start()
        try:
            answered = self._wait_for_setup()
            say_ready(out, answered)
            start, stop = read_window(read_line(control))
            for tally in self.tallies:
                tally.start, tally.stop = start, stop  # floats: each read by its thread as a whole
            time.sleep(max(0.0, stop + GRACE - time.perf_counter()))
        finally:
            self.finished.set()
            with self.lock:  # a client still waiting for a reply (or a connection) now: it will not be counted
                for sock in self.current.values():
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            for worker in workers:
                worker.join()
        return client_report(answered, self.tallies)

    def _wait_for_setup(self) -> int:
        while True:
            with self.lock:
                if self.setup.over(time.perf_counter()):
                    return len(self.tallies) - self.setup.waiting
            time.sleep(0.05)

    def _exchange(self, sock: socket.socket) -> bool:
        payload = self.payload
        if self.udp:
            sock.send(payload)
            return sock.recv(65536) == payload
        sock.sendall(payload)
        received = bytearray()
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                return False
            received += chunk
        return received == payload

    def _connect(self, number: int) -> socket.socket:
        sock = workloads.socket_for(self.spec)
        if self.udp:
            sock.settimeout(UDP_REPLY_TIMEOUT)  # a datagram or its reply may be lost
        with self.lock:
            self.current[number] = sock
        try:
            sock.connect(self.target)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=tls.SERVER_NAME)  # the handshake
                with self.lock:
                    self.current[number] = sock  # the one to shut down: the plain one is detached
        except OSError:
            sock.close()
            raise
        return sock

    def _client(self, number: int) -> None:
        tally = self.tallies[number]
        sock = None
        first = True
        while not self.finished.is_set() and (began := time.perf_counter()) < tally.stop:
            try:
                if sock is None:
                    sock = self._connect(number)
                ok = self._exchange(sock)
                if not self.spec["persistent"]:
                    sock.close()
                    sock = None
            except OSError:
                ok = False
                if sock is not None:
                    sock.close()
                sock = None
            if ok and first:
                first = False
                with self.lock:
                    self.setup.answered()
            tally.record(began, time.perf_counter(), ok)
        if sock is not None:
            sock.close()
