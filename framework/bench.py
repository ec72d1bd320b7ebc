"""Side-by-side benchmark: sockwork's dispatchers and legacy classes against socketserver.

    python -m sockwork.bench [--quick] [--workloads short,persistent,...] [--json FILE]
    sockwork bench ...   (the same)

Each server runs in a process of its own and is driven by separate client
processes over loopback (or a Unix socket). Every run warms up first; the
implementations take turns round by round (A B C A B C) so that drift of a
shared machine affects all alike. Reported per run: requests/s, latency
percentiles, **server CPU time per request** (the server process tree's
utime+stime, which stays meaningful when the clients share the CPUs), peak
RSS, the most threads and processes seen, errors. The standard library's
classic server is always the reference row; ratios are against it.

Every client is counted. Only what happens inside the measured window counts:
a reply that arrives in it is a request done, a failure seen in it is an
error, and a client that got neither a reply nor an error in the whole window
(it waited for an answer that never came) is an error too -- one per client.
Fairness is reported per run: how many clients got at least one reply, and
the fewest replies any client got next to the median.

Workloads (64-byte echo unless said otherwise):
  short       a new TCP connection per request, 8 clients at a time
  persistent  32 clients, each with one TCP connection, request after request
  large       4 clients, 64 KiB requests over persistent TCP connections
  udp         8 clients with one datagram outstanding each
  unix        8 clients over persistent Unix stream connections
  many        1,000 keep-alive TCP clients (multiplexed in two client processes)
  lines       1,000 keep-alive TCP clients of a line protocol (``lines``: each line answered ``"<n>: <line>"``)
  silent      16 keep-alive clients measured while 2,000 connections that send nothing and 100 that
              trickle a byte every 2 s are held open (opened first, by a process of their own)
  http10      http.server serving a 1 KiB file, HTTP/1.0 (a connection per request)
  http11      the same with HTTP/1.1 keep-alive

Implementations: ``stdlib`` (the standard library's Threading*Server, always
the reference row), ``legacy`` (``sockwork.socketserver``'s), any registered
sockwork dispatcher by name (``thread``, ``pool``, ``prefork``, ...), and the
event-loop peers ``asyncio-streams`` and ``uvloop-streams`` (asyncio's
streams, on uvloop's loop; skipped, and said so, when uvloop is not installed).
What sockwork's servers run is each workload's ``handler`` (a registered
name: the built-in ``echo`` or ``lines``); the other rows run the same
protocol written their own way (a classic handler class, an asyncio coroutine).

The two HTTP workloads run ``http.server.ThreadingHTTPServer`` with
``SimpleHTTPRequestHandler`` on the standard ``socketserver`` and on
``sockwork.socketserver`` (installed as ``socketserver`` before ``http.server``
is imported), nothing else, and are driven by ``wrk -t1 -c16`` (a C load
generator: the distribution's ``wrk`` package). Without ``wrk`` on PATH they are
skipped, and the report says so.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import importlib
import importlib.util
import json
import math
import os
import platform
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

# Each workload is one line. "handler" is what sockwork's own rows serve (a registered name or a
# "module:attribute" reference): switching a workload to another handler is a change of that word.
# "protocol" is what the bytes mean, for the clients and for the rows that are not sockwork
# (echo: the request comes back; lines: each line comes back as "<n>: <line>").
# "limits": "off" runs sockwork without idle_timeout (socketserver has none), "defaults" as `sockwork serve` does.
# "client": "threads" (a thread per client) or "mux" (clients multiplexed on a selector, for many of them).
_ECHO = {"protocol": "echo", "handler": "echo"}
WORKLOADS: dict[str, dict[str, Any]] = {
    "short": {"kind": "tcp", "clients": 8, "size": 64, "persistent": False, **_ECHO, "limits": "off",
              "client": "threads"},
    "persistent": {"kind": "tcp", "clients": 32, "size": 64, "persistent": True, **_ECHO, "limits": "off",
                   "client": "threads"},
    "large": {"kind": "tcp", "clients": 4, "size": 65536, "persistent": True, **_ECHO, "limits": "off",
              "client": "threads"},
    "udp": {"kind": "udp", "clients": 8, "size": 64, "persistent": True, **_ECHO, "limits": "off",
            "client": "threads"},
    "unix": {"kind": "unix", "clients": 8, "size": 64, "persistent": True, **_ECHO, "limits": "off",
             "client": "threads"},
    "many": {"kind": "tcp", "clients": 1000, "size": 64, "persistent": True, **_ECHO, "limits": "defaults",
             "client": "mux"},
    "lines": {"kind": "tcp", "clients": 1000, "size": 64, "persistent": True, "protocol": "lines",
              "handler": "lines", "limits": "defaults", "client": "mux"},
    "silent": {"kind": "tcp", "clients": 16, "size": 64, "persistent": True, **_ECHO, "limits": "defaults",
               "client": "mux", "silent": 2000, "trickle": 100, "trickle_every": 2.0},
    "http10": {"kind": "http", "clients": 16, "size": 1024, "persistent": False, "protocol": "HTTP/1.0"},
    "http11": {"kind": "http", "clients": 16, "size": 1024, "persistent": True, "protocol": "HTTP/1.1"},
}
HTTP_IMPLEMENTATIONS = ("stdlib", "legacy")  # http.server runs on socketserver classes only
WRK_THREADS = 1
WRK_MISSING = ("wrk is not installed (not found on PATH): the HTTP workloads ({}) are skipped. "
               "Install the distribution's package, e.g. `apt-get install wrk`, to run them.")
# wrk reports through this script, in numbers rather than its rounded text ("4.30ms", "3.70k").
WRK_REPORT_MARK = "SOCKWORK-WRK "
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "bytes": %d, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
    .. '"latency_us": {"p50": %d, "p99": %d, "p99.9": %d, "max": %d}}\\n',
    "SOCKWORK-WRK ", summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""
# Implementations: the reference first. "legacy" is sockwork.socketserver's Threading* class; the
# event-loop peers are asyncio's streams on asyncio's own loop and on uvloop's. Any other name is a
# sockwork dispatcher.
PEERS = {"asyncio-streams": None, "uvloop-streams": "uvloop"}  # name -> the module it needs beyond the stdlib
IMPLEMENTATIONS = ("stdlib", "legacy", "thread", "pool", "prefork", "asyncio-streams", "uvloop-streams")
CLIENT_PROCESSES = 2
GRACE = 0.25  # seconds a client waits past the window before it gives up on a reply (then: in flight, not counted)
UDP_REPLY_TIMEOUT = 1.0  # a datagram or its reply can be lost: after this long, an error
CONNECTS_IN_FLIGHT = 2  # per multiplexing process: the standard library's backlog of 5 must not drop SYNs
SLOT_HOLD = 0.02  # see _mux_clients
RECONNECT_PAUSE = 0.05  # seconds before a multiplexed client whose connection failed connects again
HOLD_INTERVAL = 0.0005  # seconds between two connects of the holder: a thread-per-connection server keeps up
HOLD_STALL = 2.0  # the holder stops opening connections after this long without one completing
HOLD_SETUP_LIMIT = 30.0  # ... or after this long in all


# ---- The server side -------------------------------------------------------------

class EchoHandler:
    """The echo protocol as a classic handler class (the stdlib and legacy rows)."""

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        if isinstance(request, tuple):
            data, sock = request
            sock.sendto(data, client_address)
            return
        with contextlib.suppress(ConnectionError):  # a client that goes away (RST at close) is no failure
            while chunk := request.recv(65536):
                request.sendall(chunk)


class LinesHandler:
    """The lines protocol as a classic handler class: each line answered ``"<n>: <line>"``, as ``lines`` does."""

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        count = 0
        with request.makefile("rb") as rfile, contextlib.suppress(ConnectionError):
            while line := rfile.readline(65536):
                count += 1
                request.sendall(b"%d: %s" % (count, line))


CLASSIC_HANDLERS = {"echo": EchoHandler, "lines": LinesHandler}


def _serve(implementation: str, workload: str, path: str) -> None:
    """Run one server until SIGTERM; print its address first."""
    spec = WORKLOADS[workload]
    kind = spec["kind"]
    if implementation in PEERS:
        _serve_event_loop(implementation, spec, path)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # for sigwait below, in every thread
    address: Any = path if kind == "unix" else ("127.0.0.1", 0)
    server: Any
    if kind == "http":
        server = _http_server(implementation, spec["protocol"], path)
        bound, stop, run, close = server.server_address, server.shutdown, server.serve_forever, server.server_close
    elif implementation in ("stdlib", "legacy"):
        if implementation == "stdlib":
            import socketserver as module
        else:
            from sockwork import socketserver as module  # type: ignore[no-redef]  # same API, either module
        cls = {"tcp": module.ThreadingTCPServer, "udp": module.ThreadingUDPServer,
               "unix": module.ThreadingUnixStreamServer}[kind]
        server = cls(address, CLASSIC_HANDLERS[spec["protocol"]])
        bound = server.server_address
        stop = server.shutdown
        run = server.serve_forever
        close = server.server_close
    else:
        from sockwork import Limits, Server

        url = {"tcp": "tcp://127.0.0.1:0", "udp": "udp://127.0.0.1:0", "unix": f"unix://{path}"}[kind]
        limits = Limits(idle_timeout=None) if spec["limits"] == "off" else Limits()
        # "pool+metrics": the dispatcher with the metrics endpoint on (what measuring costs, docs/production.md).
        dispatcher, _, extra = implementation.partition("+")
        server = Server(transport=url, dispatcher=dispatcher, handler=spec["handler"], limits=limits,
                        metrics="tcp://127.0.0.1:0" if extra == "metrics" else None)
        bound, stop, run, close = server.address, server.shutdown, server.serve_forever, server.close
    threading.Thread(target=lambda: (signal.sigwait({signal.SIGTERM}), stop()), daemon=True).start()
    print(json.dumps(bound), flush=True)
    try:
        run()
    finally:
        close()


def _serve_event_loop(implementation: str, spec: dict[str, Any], path: str) -> None:
    """The workload's protocol on asyncio streams (or a datagram endpoint), on asyncio's loop or uvloop's."""
    import asyncio

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count = 0
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                count += 1
                writer.write(b"%d: %s" % (count, line))
                await writer.drain()
        writer.close()

    class Datagrams(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(data, addr)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        handle = {"echo": echo, "lines": lines}[spec["protocol"]]
        closing: Any
        if spec["kind"] == "udp":
            closing, _ = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
            bound = closing.get_extra_info("sockname")
        elif spec["kind"] == "unix":
            closing = await asyncio.start_unix_server(handle, path)
            bound = path
        else:
            closing = await asyncio.start_server(handle, "127.0.0.1", 0)
            bound = closing.sockets[0].getsockname()
        print(json.dumps(bound), flush=True)
        await stop.wait()
        closing.close()

    if PEERS[implementation] == "uvloop":
        importlib.import_module("uvloop").run(serve())
    else:
        asyncio.run(serve())


def _http_server(implementation: str, protocol: str, directory: str) -> Any:
    """http.server's ThreadingHTTPServer serving ``directory``, on the chosen socketserver."""
    if "http.server" in sys.modules:
        raise RuntimeError("http.server was imported before the socketserver under it was chosen")
    if implementation == "legacy":
        from sockwork import socketserver as ours

        sys.modules["socketserver"] = ours
    elif implementation != "stdlib":
        raise ValueError(f"http.server runs on 'stdlib' or 'legacy', not {implementation!r}")
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = protocol

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=directory, **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one stderr line per request would measure the terminal

    class HTTPServer(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):  # wrk resets its connections when it stops
                super().handle_error(request, client_address)

    return HTTPServer(("127.0.0.1", 0), Handler)


# ---- Counting: every client, only inside the window ----------------------------------

class ClientTally:
    """What one client saw inside the measured window ``[start, stop)`` (``time.perf_counter()`` seconds).

    An exchange counts when it *ends* inside the window: a reply then is a completed request (its
    latency is kept, even if the request was sent during the warm-up), a failure then is a failed one.
    An exchange still in flight at ``stop`` counts neither way -- but a client with neither a reply
    nor a failure in the whole window waited for an answer that never came: :func:`tally_clients`
    counts it as an error ("unanswered").
    """

    __slots__ = ("completed", "failed", "latencies", "start", "stop")

    def __init__(self, start: float, stop: float) -> None:
        self.start, self.stop = start, stop
        self.completed = self.failed = 0
        self.latencies: list[float] = []

    def record(self, began: float, ended: float, ok: bool) -> None:
        if not self.start <= ended < self.stop:
            return  # warm-up, or in flight at the end of the window
        if ok:
            self.completed += 1
            self.latencies.append(ended - began)
        else:
            self.failed += 1

    def report(self) -> dict[str, int]:
        return {"completed": self.completed, "failed": self.failed}


def tally_clients(clients: Sequence[dict[str, int]]) -> dict[str, Any]:
    """Requests, errors and fairness of one run, from every client's ``ClientTally.report()``.

    ``errors`` = failed exchanges + ``unanswered`` clients (no reply and no failure in the window).
    ``answered`` counts the clients with at least one reply; ``fewest`` and ``median_per_client``
    are over all clients, the unanswered included.
    """
    completed = sorted(c["completed"] for c in clients)
    failed = sum(c["failed"] for c in clients)
    unanswered = sum(1 for c in clients if c["completed"] == 0 and c["failed"] == 0)
    return {
        "requests": sum(completed), "failed": failed, "unanswered": unanswered, "errors": failed + unanswered,
        "clients": len(completed), "answered": sum(1 for n in completed if n > 0),
        "fewest": completed[0] if completed else None,
        "median_per_client": statistics.median(completed) if completed else None,
    }


def _payload(spec: dict[str, Any]) -> bytes:
    if spec["protocol"] == "lines":
        return os.urandom(spec["size"]).hex().encode()[: spec["size"] - 1] + b"\n"
    return os.urandom(spec["size"])


def _expected(spec: dict[str, Any], payload: bytes, number: int) -> bytes:
    """The reply to the ``number``-th request (from 1) on one connection."""
    return b"%d: %s" % (number, payload) if spec["protocol"] == "lines" else payload


def _socket_for(spec: dict[str, Any]) -> socket.socket:
    if spec["kind"] == "unix":
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if spec["kind"] == "udp" else socket.SOCK_STREAM)
    if spec["kind"] == "tcp":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _target(spec: dict[str, Any], address: Any) -> Any:
    return address if spec["kind"] == "unix" else tuple(address)


# ---- The client side -------------------------------------------------------------
#
# A client process runs in two phases. Setting up: its clients connect and exchange requests until
# each has had one reply, or until no client got its first reply for SETUP_STALL seconds (a server
# that starves some clients), or SETUP_LIMIT passed; then it prints one line, {"answered": n}. The
# driver, once every client process has said so, writes the measured window to their stdin,
# {"start": t, "stop": t} in wall-clock seconds; the clients go on exchanging (the time before
# "start" is the warm-up) and, after "stop", print their report. So connecting 1,000 clients to a
# listen backlog of 5 (whose dropped SYNs are retried after 1 s, 3 s, ...) happens before the
# warm-up, and the window is the same for every client process.

SETUP_STALL = 3.5  # > the second SYN retry (1 s, then 2 s later): a client still unanswered after it is starved
SETUP_LIMIT = 30.0


class _Setup:
    """Tracks the setting-up phase: which clients have had their first reply."""

    def __init__(self, clients: int) -> None:
        self.waiting = clients
        self.began = self.last = time.perf_counter()

    def answered(self) -> None:
        self.waiting -= 1
        self.last = time.perf_counter()

    def over(self, now: float) -> bool:
        return self.waiting <= 0 or now - self.last > SETUP_STALL or now - self.began > SETUP_LIMIT


def _read_window(line: bytes) -> tuple[float, float]:
    """The driver's window, from wall-clock seconds to this process's ``time.perf_counter()``."""
    window = json.loads(line)
    offset = time.time() - time.perf_counter()
    return window["start"] - offset, window["stop"] - offset


def run_clients(spec: dict[str, Any], address: Any, clients: int, control: int, out: Any) -> dict[str, Any]:
    """Drive ``clients`` clients of ``spec``: set up, say so on ``out``, read the window from the
    file descriptor ``control``, measure.

    Returns ``{"answered_at_setup": n, "clients": [ClientTally.report(), ...], "latencies": [seconds, ...]}``.
    """
    run = _mux_clients if spec["client"] == "mux" else _thread_clients
    return run(spec, address, clients, control, out)


def _say_ready(out: Any, answered: int) -> None:
    out.write(json.dumps({"answered": answered}) + "\n")
    out.flush()


def _read_line(fd: int) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            raise EOFError("the driver closed the control pipe before sending the window")
        line += chunk
    return line


def _thread_clients(spec: dict[str, Any], address: Any, clients: int, control: int, out: Any) -> dict[str, Any]:
    """A thread per client, blocking sockets (each thread: connect, exchange, [close], again)."""
    if spec["protocol"] != "echo":
        raise ValueError(f"the thread clients speak echo only, not {spec['protocol']!r}")
    payload = _payload(spec)
    target = _target(spec, address)
    udp = spec["kind"] == "udp"
    setup = _Setup(clients)
    lock = threading.Lock()
    tallies = [ClientTally(math.inf, math.inf) for _ in range(clients)]  # nothing counts before the window
    current: dict[int, socket.socket] = {}  # each thread's socket: shut down after the window to end a wait
    finished = threading.Event()

    def exchange(sock: socket.socket) -> bool:
        if udp:
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

    def run(number: int) -> None:
        tally = tallies[number]
        sock = None
        first = True
        while not finished.is_set() and (began := time.perf_counter()) < tally.stop:
            try:
                if sock is None:
                    sock = _socket_for(spec)
                    if udp:
                        sock.settimeout(UDP_REPLY_TIMEOUT)  # a datagram or its reply may be lost
                    with lock:
                        current[number] = sock
                    sock.connect(target)
                ok = exchange(sock)
                if not spec["persistent"]:
                    sock.close()
                    sock = None
            except OSError:
                ok = False
                if sock is not None:
                    sock.close()
                sock = None
            if ok and first:
                first = False
                with lock:
                    setup.answered()
            tally.record(began, time.perf_counter(), ok)
        if sock is not None:
            sock.close()

    workers = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for worker in workers:
        worker.start()
    try:
        while True:
            with lock:
                if setup.over(time.perf_counter()):
                    answered = clients - setup.waiting
                    break
            time.sleep(0.05)
        _say_ready(out, answered)
        start, stop = _read_window(_read_line(control))
        for tally in tallies:
            tally.start, tally.stop = start, stop  # floats: each read by its thread as a whole
        time.sleep(max(0.0, stop + GRACE - time.perf_counter()))
    finally:
        finished.set()
        with lock:  # a client still waiting for a reply (or a connection) now: it will not be counted
            for sock in current.values():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for worker in workers:
            worker.join()
    return {"answered_at_setup": answered, "clients": [t.report() for t in tallies],
            "latencies": [x for t in tallies for x in t.latencies]}


class _MuxClient:
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


def _mux_clients(spec: dict[str, Any], address: Any, clients: int, control: int, out: Any) -> dict[str, Any]:
    """Many persistent stream clients on one selector: each sends a request, waits for its reply, again.

    Clients connect a few at a time: one takes a slot (CONNECTS_IN_FLIGHT) from its connect until its
    first reply, or for at most SLOT_HOLD seconds after its connection completed, so a backlog of
    5 is not flooded, yet a server that never answers some clients does not stop the others from
    connecting. A failed client connects again after RECONNECT_PAUSE.
    """
    if spec["kind"] not in ("tcp", "unix"):
        raise ValueError(f"multiplexed clients need a stream transport, not {spec['kind']!r}")
    payload = _payload(spec)
    target = _target(spec, address)
    selector = selectors.DefaultSelector()
    everyone = [_MuxClient(ClientTally(math.inf, math.inf)) for _ in range(clients)]
    to_connect: list[_MuxClient] = everyone[::-1]  # popped from the end: in order
    pauses: list[tuple[float, int, _MuxClient]] = []  # (when, tie-breaker, client): connect again after a failure
    slots: dict[int, float] = {}  # id(client) -> when its slot frees itself
    setup = _Setup(clients)
    stop = math.inf
    answered_at_setup = -1  # not yet set up

    def free_slot(client: _MuxClient) -> None:
        slots.pop(id(client), None)

    def fail(client: _MuxClient, now: float) -> None:
        client.tally.record(client.began, now, False)
        free_slot(client)
        if client.sock is not None:
            selector.unregister(client.sock)
            client.sock.close()
            client.sock = None
        heapq.heappush(pauses, (now + RECONNECT_PAUSE, id(client), client))

    def send_request(client: _MuxClient, now: float) -> None:
        assert client.sock is not None
        client.number += 1
        client.began = now
        client.expected = _expected(spec, payload, client.number)
        client.inbox.clear()
        try:
            sent = client.sock.send(payload)
        except BlockingIOError:
            sent = 0
        client.outbox = payload[sent:]
        selector.modify(client.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbox else 0), client)

    def connect(client: _MuxClient, now: float) -> None:
        sock = _socket_for(spec)
        sock.setblocking(False)
        client.sock, client.number, client.began = sock, 0, now
        slots[id(client)] = math.inf
        selector.register(sock, selectors.EVENT_WRITE, client)
        err = sock.connect_ex(target)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            fail(client, now)

    while (now := time.perf_counter()) < stop:
        if answered_at_setup < 0 and setup.over(now):
            answered_at_setup = clients - setup.waiting
            _say_ready(out, answered_at_setup)
            selector.register(control, selectors.EVENT_READ, None)
        while pauses and pauses[0][0] <= now:
            to_connect.append(heapq.heappop(pauses)[2])
        for expired in [slot for slot, until in slots.items() if until <= now]:
            del slots[expired]
        while to_connect and len(slots) < CONNECTS_IN_FLIGHT:
            connect(to_connect.pop(), now)
        wait = min(stop - now, 0.05)
        if pauses:
            wait = min(wait, pauses[0][0] - now)
        for key, events in selector.select(max(0.0, wait)):
            client = key.data
            now = time.perf_counter()
            if client is None:  # the driver's window
                start, stop = _read_window(_read_line(control))
                selector.unregister(control)
                for each in everyone:
                    each.tally.start, each.tally.stop = start, stop
                continue
            sock = client.sock
            if sock is None:  # closed by an earlier event of this round
                continue
            try:
                if client.number == 0:  # connecting
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    if not client.answered:
                        slots[id(client)] = now + SLOT_HOLD
                    send_request(client, now)
                    continue
                if events & selectors.EVENT_WRITE and client.outbox:
                    sent = sock.send(client.outbox)
                    client.outbox = client.outbox[sent:]
                    if not client.outbox:
                        selector.modify(sock, selectors.EVENT_READ, client)
                if events & selectors.EVENT_READ:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionResetError("the server closed the connection")
                    client.inbox += chunk
                    if len(client.inbox) >= len(client.expected):
                        if client.inbox != client.expected:
                            raise ValueError("a wrong reply")
                        client.tally.record(client.began, now, True)
                        if not client.answered:
                            client.answered = True
                            setup.answered()
                            free_slot(client)
                        if now < stop:
                            send_request(client, now)
            except (OSError, ValueError):
                fail(client, now)
    for client in everyone:
        if client.sock is not None:
            client.sock.close()
    selector.close()
    return {"answered_at_setup": answered_at_setup, "clients": [c.tally.report() for c in everyone],
            "latencies": [x for c in everyone for x in c.tally.latencies]}


def _hold(address: Any, silent: int, trickle: int, every: float) -> None:
    """Open ``silent + trickle`` TCP connections and hold them until SIGTERM: the silent ones send
    nothing, the trickling ones a byte every ``every`` seconds each (staggered). Whatever the server
    sends is read and dropped.

    Prints one JSON line when it has opened what it could (every connection, or none completed for
    HOLD_STALL seconds, or HOLD_SETUP_LIMIT passed): ``{"established", "pending"}``; and one when it
    stops: ``{"established", "closed_by_server"}`` (connections the server ended meanwhile).
    """
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    target = tuple(address)
    selector = selectors.DefaultSelector()
    waiting = list(range(silent + trickle))  # connection numbers below ``trickle`` trickle
    waiting.reverse()
    socks: dict[int, socket.socket] = {}
    connecting = established = closed = 0
    began = last_progress = time.monotonic()
    ready = False
    next_byte: list[tuple[float, int]] = []
    next_connect = began

    while not stopping.is_set():
        now = time.monotonic()
        if not ready and ((not waiting and not connecting) or now - last_progress > HOLD_STALL
                          or now - began > HOLD_SETUP_LIMIT):
            ready = True
            print(json.dumps({"established": established, "pending": connecting + len(waiting)}), flush=True)
            waiting.clear()  # what did not connect by now is not tried again (the pending may still complete)
            next_byte = [(now + every * n / max(1, trickle), n) for n in range(trickle) if n in socks]
            heapq.heapify(next_byte)
        while waiting and connecting < CONNECTS_IN_FLIGHT and now >= next_connect:
            next_connect = now + HOLD_INTERVAL
            number = waiting.pop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(target)
            connecting += 1
            selector.register(sock, selectors.EVENT_WRITE, (number, "connecting"))
        while next_byte and next_byte[0][0] <= now:
            _, number = heapq.heappop(next_byte)
            if number in socks:
                with contextlib.suppress(OSError):  # closed by the server: noticed by the read below
                    socks[number].send(b"x")
                heapq.heappush(next_byte, (now + every, number))
        wait = 0.2 if not next_byte else max(0.0, min(0.2, next_byte[0][0] - now))
        if waiting:
            wait = min(wait, HOLD_INTERVAL)
        for key, _events in selector.select(wait):
            number, state = key.data
            sock = key.fileobj  # type: ignore[assignment]  # registered sockets
            if state == "connecting":
                connecting -= 1
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    selector.unregister(sock)
                    sock.close()
                    continue
                established += 1
                last_progress = time.monotonic()
                socks[number] = sock
                selector.modify(sock, selectors.EVENT_READ, (number, "open"))
                continue
            try:
                gone = not sock.recv(65536)
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if gone:
                closed += 1
                selector.unregister(sock)
                sock.close()
                del socks[number]
    for sock in socks.values():
        sock.close()
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]  # sockets
    selector.close()
    print(json.dumps({"established": established, "closed_by_server": closed}), flush=True)


# ---- Measuring the server process tree --------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    children = [int(p) for p in f.read().split()]
                found.extend(children)
                todo.extend(children)
        except OSError:
            continue
    return found


def _cpu_seconds(pid: int) -> float:
    """utime+stime of the tree: the process, its reaped children, its live descendants."""
    def fields(p: int) -> list[str]:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    total = 0.0
    try:
        own = fields(pid)
        total += sum(int(x) for x in own[11:15])  # utime, stime, cutime, cstime
    except OSError:
        return 0.0
    for child in _descendants(pid):
        with contextlib.suppress(OSError):  # exited meanwhile: counted in its parent's cutime once reaped
            total += sum(int(x) for x in fields(child)[11:13])
    return total / _TICK


def _status(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---- The driver ---------------------------------------------------------------------

def _tree(pid: int) -> list[int]:
    return [pid, *_descendants(pid)]


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of the process tree now (VmRSS summed; shared pages of prefork's workers count twice)."""
    return sum(_status(p, "VmRSS") for p in _tree(pid))


def _tree_fds(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


def _settled_fds(pid: int, limit: float = 5.0) -> int:
    """The tree's descriptor count once it has stopped changing (for 0.5 s), or after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    count = _tree_fds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        count, before = _tree_fds(pid), count
        if count == before:
            break
    return count


def client_split(clients: int, processes: int = CLIENT_PROCESSES) -> list[int]:
    """How many clients each client process runs: as even as can be, none empty."""
    return [n for n in (clients // processes + (i < clients % processes) for i in range(processes)) if n]


def _stop(process: subprocess.Popen[str], timeout: float) -> int:
    """SIGTERM one process we started, by its PID; SIGKILL it if it has not exited within ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _one_run(implementation: str, workload: str, spec: dict[str, Any], warmup: float,
             duration: float) -> dict[str, Any]:
    """One server process, its clients (and, for ``silent``, the holder of waiting connections)."""
    directory = tempfile.mkdtemp(prefix="sw-bench-")
    path = os.path.join(directory, "s.sock")
    command = [sys.executable, "-m", "sockwork.bench"]
    server = subprocess.Popen([*command, "--serve", implementation, workload, path], stdout=subprocess.PIPE, text=True)
    clients: list[subprocess.Popen[str]] = []
    holder: subprocess.Popen[str] | None = None
    held: dict[str, Any] = {}
    try:
        address = json.loads(server.stdout.readline())  # type: ignore[union-attr]  # stdout=PIPE
        time.sleep(0.2)  # the server's imports and threads settle
        rss_before, fds_before = _tree_rss_kib(server.pid), _tree_fds(server.pid)
        waiting = spec.get("silent", 0) + spec.get("trickle", 0)
        if waiting:
            holder = subprocess.Popen(
                [*command, "--hold", json.dumps(address), str(spec.get("silent", 0)), str(spec.get("trickle", 0)),
                 repr(spec.get("trickle_every", 2.0))], stdout=subprocess.PIPE, text=True)
            held = json.loads(holder.stdout.readline())  # type: ignore[union-attr]  # stdout=PIPE
            fds_loaded = _settled_fds(server.pid)  # the server has taken what it will of what the holder opened
            rss_loaded = _tree_rss_kib(server.pid)
        for share in client_split(spec["clients"]):
            clients.append(subprocess.Popen([*command, "--client", workload, json.dumps(address), str(share)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        # Every client process sets up (bounded by SETUP_LIMIT), then says how many of its clients were answered.
        answered_at_setup = sum(json.loads(c.stdout.readline())["answered"] for c in clients)  # type: ignore[union-attr]
        if not waiting:  # every client that could connect has
            rss_loaded, fds_loaded = _tree_rss_kib(server.pid), _tree_fds(server.pid)
        start_at = time.time() + warmup
        for client in clients:
            client.stdin.write(json.dumps({"start": start_at, "stop": start_at + duration}) + "\n")  # type: ignore[union-attr]
            client.stdin.close()  # type: ignore[union-attr]
        time.sleep(max(0.0, start_at - time.time()))
        cpu_before, threads, processes = _cpu_seconds(server.pid), 0, 0
        while time.time() < start_at + duration:
            threads = max(threads, sum(_status(p, "Threads") for p in _tree(server.pid)))
            processes = max(processes, len(_tree(server.pid)))
            time.sleep(0.05)
        cpu = _cpu_seconds(server.pid) - cpu_before
        rss = sum(_status(p, "VmHWM") for p in _tree(server.pid))
        reports = [json.loads(c.stdout.read()) for c in clients]  # type: ignore[union-attr]  # stdout=PIPE
        if holder is not None:
            holder.send_signal(signal.SIGTERM)
            held = {**held, **json.loads(holder.communicate(timeout=60)[0].splitlines()[-1])}
    finally:
        for process in [*clients, *([holder] if holder else [])]:
            _stop(process, 5)
            if process.stdout:
                process.stdout.close()
        server_status = _stop(server, 30)
        server.stdout.close()  # type: ignore[union-attr]  # stdout=PIPE
        shutil.rmtree(directory)
    counted = tally_clients([c for r in reports for c in r["clients"]])
    latencies = sorted(x for r in reports for x in r["latencies"])
    requests = counted["requests"]
    conns = fds_loaded - fds_before
    return {
        "implementation": implementation, "workload": workload, **counted, "answered_at_setup": answered_at_setup,
        "errors": counted["errors"] + (server_status != 0), "server_exit": server_status,
        "rps": requests / duration, "cpu_us_per_request": cpu / requests * 1e6 if requests else None,
        "p50_ms": _percentile(latencies, 0.50), "p99_ms": _percentile(latencies, 0.99),
        "p999_ms": _percentile(latencies, 0.999), "peak_rss_mib": rss / 1024,
        "threads": threads, "processes": processes,
        # What holding connections costs the server: descriptors it took, and resident memory per one.
        "conns_held": conns, "rss_kib_per_conn": (rss_loaded - rss_before) / conns if conns > 0 else None,
        **({"waiting_opened": held["established"], "waiting_pending": held["pending"],
            "waiting_closed_by_server": held.get("closed_by_server")} if waiting else {}),
    }


def _one_http_run(implementation: str, workload: str, warmup: float, duration: float, wrk: str) -> dict[str, Any]:
    """One server process, driven by wrk: a warm-up run, then the measured run."""
    spec = WORKLOADS[workload]
    directory = tempfile.mkdtemp(prefix="sw-bench-http-")
    with open(os.path.join(directory, "1k.bin"), "wb") as f:
        f.write(os.urandom(spec["size"]))
    script = os.path.join(directory, "report.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    server = subprocess.Popen(
        [sys.executable, "-m", "sockwork.bench", "--serve", implementation, workload, directory],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        host, port = json.loads(server.stdout.readline())  # type: ignore[union-attr]  # stdout=PIPE
        command = [wrk, f"-t{WRK_THREADS}", f"-c{spec['clients']}", "-s", script, f"http://{host}:{port}/1k.bin"]
        # wrk takes whole seconds
        subprocess.run([*command, f"-d{max(1, round(warmup))}s"], capture_output=True, text=True, timeout=120,
                       check=True)
        cpu_before, threads, processes = _cpu_seconds(server.pid), 0, 0
        measured = subprocess.Popen([*command, f"-d{max(1, round(duration))}s"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        while measured.poll() is None:
            threads = max(threads, _status(server.pid, "Threads"))
            processes = max(processes, 1 + len(_descendants(server.pid)))
            time.sleep(0.05)
        cpu = _cpu_seconds(server.pid) - cpu_before
        rss = _status(server.pid, "VmHWM")
        out, err = measured.communicate()
        if measured.returncode != 0:
            raise RuntimeError(f"wrk failed ({measured.returncode}): {err.strip() or out.strip()}")
        report = parse_wrk_report(out)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server_status = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server_status = server.wait()
        server.stdout.close()  # type: ignore[union-attr]  # stdout=PIPE
        shutil.rmtree(directory)
    requests = report["requests"]
    seconds = report["duration_s"]
    return {
        "implementation": implementation, "workload": workload,
        "requests": requests, "errors": report["errors"] + (server_status != 0),
        "rps": requests / seconds, "cpu_us_per_request": cpu / requests * 1e6 if requests else None,
        "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"], "p999_ms": report["p999_ms"],
        "max_ms": report["max_ms"], "peak_rss_mib": rss / 1024, "threads": threads, "processes": processes,
    }


def parse_wrk_report(output: str) -> dict[str, Any]:
    """The numbers of one wrk run, from the line WRK_SCRIPT's ``done()`` writes.

    ``requests`` counts the 2xx/3xx replies; ``errors`` counts the other
    replies and every socket error wrk saw (connect, read, write, timeout).
    """
    for line in output.splitlines():
        if line.startswith(WRK_REPORT_MARK):
            raw = json.loads(line[len(WRK_REPORT_MARK):])
            break
    else:
        raise ValueError("no report line in wrk's output (was it run with the bench's -s script?):\n" + output)
    errors = raw["errors"]
    latency = raw["latency_us"]
    return {
        "requests": raw["requests"] - errors["status"],
        "errors": errors["status"] + errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "duration_s": raw["duration_us"] / 1e6,
        "p50_ms": latency["p50"] / 1000, "p99_ms": latency["p99"] / 1000,
        "p999_ms": latency["p99.9"] / 1000, "max_ms": latency["max"] / 1000,
    }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] * 1000


def _shutdown_latency(rounds: int) -> dict[str, float]:
    """Median ms from shutdown() to its return, the loop idle, a stop at a random moment."""
    import random
    import socketserver

    from sockwork import Server

    def measure(make: Any) -> float:
        _server, run, stop, close = make()
        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(random.uniform(0.01, 0.5))
        began = time.perf_counter()
        stop()
        elapsed = time.perf_counter() - began
        thread.join()
        close()
        return elapsed * 1000

    def stdlib() -> Any:
        # Any callable serves at run time; typeshed asks for a BaseRequestHandler subclass.
        s = socketserver.ThreadingTCPServer(("127.0.0.1", 0), EchoHandler)  # type: ignore[arg-type]  # see above
        return s, s.serve_forever, s.shutdown, s.server_close

    def ours() -> Any:
        s = Server(transport="tcp://127.0.0.1:0", dispatcher="thread", handler=EchoHandler)
        return s, s.serve_forever, s.shutdown, s.close

    samples: dict[str, list[float]] = {"stdlib": [], "sockwork": []}
    for _ in range(rounds):
        samples["stdlib"].append(measure(stdlib))
        samples["sockwork"].append(measure(ours))
    return {name: statistics.median(values) for name, values in samples.items()}


IMPORT_RUNS = 5


def _import_times(runs: int = IMPORT_RUNS) -> dict[str, float]:
    """Best-of-``runs`` ms to import the drop-in and the standard module, each in a fresh interpreter."""
    def best(module: str) -> float:
        times = []
        for _ in range(runs):
            result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                                    capture_output=True, text=True, check=True)
            lines = [line for line in result.stderr.splitlines() if line.rstrip().endswith(f"| {module}")]
            times.append(int(lines[-1].split("|")[1]) / 1000)  # cumulative microseconds of that import
        return min(times)

    return {"stdlib": best("socketserver"), "sockwork": best("sockwork.socketserver")}


def _title(workload: str, spec: dict[str, Any]) -> str:
    what = f"{spec['clients']:,} clients, {spec['size']}-byte requests"
    if spec["protocol"] == "lines":
        what = f"{spec['clients']:,} clients, {spec['size']}-byte lines"
    what += "" if spec["persistent"] else ", a connection per request"
    if spec.get("silent") or spec.get("trickle"):
        what += (f", while {spec.get('silent', 0):,} silent connections and {spec.get('trickle', 0):,} sending "
                 f"a byte every {spec.get('trickle_every', 2.0):g} s are held open")
    return f"### {workload}: {what} (sockwork runs `{spec['handler']}`, limits {spec['limits']})"


def _markdown(results: list[dict[str, Any]], shutdown: dict[str, float], args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
        f"{args.rounds} round(s) per implementation, {args.duration:g} s each after {args.warmup:g} s warm-up; "
        "medians over rounds (p99.9 and the fairness columns: the worst round; errors: all rounds).",
        "",
    ]
    lines += [f"Skipped: {note}" for note in args.skipped] + ([""] if args.skipped else [])
    for workload in args.workloads:
        spec = args.specs[workload]
        rows = [r for r in results if r["workload"] == workload]
        if spec["kind"] == "http":
            lines += _http_markdown(workload, rows, args)
            continue
        lines += [_title(workload, spec), "", *_table(workload, spec, rows), ""]
    lines += [
        "### shutdown() of a running serve_forever()",
        "",
        "| implementation | median ms |",
        "|---|---:|",
        f"| socketserver.ThreadingTCPServer | {shutdown['stdlib']:.3f} |",
        f"| sockwork Server (thread) | {shutdown['sockwork']:.3f} |",
        "",
        f"### Import time (best of {IMPORT_RUNS}, python -X importtime)",
        "",
        "| module | ms | ratio |",
        "|---|---:|---:|",
        f"| socketserver | {args.import_ms['stdlib']:.1f} | 1.00 |",
        f"| sockwork.socketserver | {args.import_ms['sockwork']:.1f} | "
        f"{args.import_ms['sockwork'] / args.import_ms['stdlib']:.2f} |",
        "",
    ]
    return "\n".join(lines)


def _table(workload: str, spec: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """One workload's rows: throughput and its ratios, latency, CPU, what the server held, every client counted."""
    if not rows:
        return ["No implementation ran."]
    reference = rows[0]
    peer = next((r for r in rows if r["implementation"] == "asyncio-streams"), None)
    waiting = bool(spec.get("silent") or spec.get("trickle"))
    columns: list[tuple[str, Any]] = [
        ("implementation", lambda r: _label(r["implementation"], workload)),
        ("req/s", lambda r: f"{r['rps']:,.0f}"),
        ("× stdlib", lambda r: _ratio(r["rps"], reference["rps"])),
    ]
    if peer is not None:
        columns.append(("× asyncio", lambda r: _ratio(r["rps"], peer["rps"])))
    columns += [
        ("p50 ms", lambda r: _ms(r["p50_ms"])),
        ("p99 ms", lambda r: _ms(r["p99_ms"])),
        ("p99.9 ms", lambda r: _ms(r["p999_ms"])),
        ("server CPU µs/req", lambda r: _number(r["cpu_us_per_request"])),
        ("× stdlib", lambda r: _ratio(r["cpu_us_per_request"], reference["cpu_us_per_request"])),
        ("peak RSS MiB", lambda r: f"{r['peak_rss_mib']:.1f}"),
        ("threads", lambda r: str(r["threads"])),
        ("processes", lambda r: str(r["processes"])),
    ]
    if spec["client"] == "mux":
        columns += [
            ("connections held" if not waiting else "waiting connections held", lambda r: f"{r['conns_held']:,}"),
            ("RSS KiB/connection", lambda r: _number(r["rss_kib_per_conn"])),
        ]
    if waiting:
        columns.append(("waiting closed by server", lambda r: str(r.get("waiting_closed_by_server", "–"))))
    columns += [
        ("clients answered", lambda r: f"{r['answered']:,}/{r['clients']:,}"),
        ("fewest / median", lambda r: f"{r['fewest']:,} / {r['median_per_client']:,.0f}"
         if r["fewest"] is not None else "–"),
        ("errors", lambda r: f"{r['errors']:,}"),
    ]
    header = "| " + " | ".join(name for name, _ in columns) + " |"
    rule = "|---|" + "---:|" * (len(columns) - 1)
    return [header, rule, *("| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows)]


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def _http_markdown(workload: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    spec = WORKLOADS[workload]
    what = "keep-alive" if spec["persistent"] else "a connection per request"
    title = (f"### {workload}: http.server, {spec['protocol']} ({what}), a {spec['size']}-byte file, "
             f"`wrk -t{WRK_THREADS} -c{spec['clients']}`")
    lines = [title, ""]
    if not rows:
        return [*lines, f"Skipped: {args.http_skipped}", ""]
    reference = rows[0]
    lines += [
        ("| implementation | req/s | × stdlib | p50 ms | p99 ms | p99.9 ms | max ms | server CPU µs/req | × stdlib | "
         "peak RSS MiB | threads | errors |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {_label(row['implementation'], workload)} | {row['rps']:,.0f} | "
            f"{_ratio(row['rps'], reference['rps'])} | {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | "
            f"{_ms(row['p999_ms'])} | {_ms(row['max_ms'])} | {row['cpu_us_per_request'] or float('nan'):.1f} | "
            f"{_ratio(row['cpu_us_per_request'], reference['cpu_us_per_request'])} | {row['peak_rss_mib']:.1f} | "
            f"{row['threads']} | {row['errors']} |"
        )
    return [*lines, ""]


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value and reference else "–"


def _label(implementation: str, workload: str) -> str:
    kind = WORKLOADS[workload]["kind"]
    if kind == "http":
        module = "socketserver" if implementation == "stdlib" else "sockwork.socketserver"
        return f"http.server.ThreadingHTTPServer on {module}"
    if implementation == "asyncio-streams":
        return "asyncio streams" if kind != "udp" else "asyncio datagram endpoint"
    if implementation == "uvloop-streams":
        return "uvloop streams" if kind != "udp" else "uvloop datagram endpoint"
    cls = {"tcp": "ThreadingTCPServer", "udp": "ThreadingUDPServer", "unix": "ThreadingUnixStreamServer"}[kind]
    return {"stdlib": f"socketserver.{cls}", "legacy": f"sockwork.socketserver.{cls}"}.get(
        implementation, f"sockwork `{implementation}`")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a run per round: medians, except the worst round for p99.9 and fairness, and sums of errors."""
    row = dict(runs[0])

    def median(key: str) -> Any:
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    for key in ("rps", "cpu_us_per_request", "p50_ms", "p99_ms", "peak_rss_mib", "median_per_client",
                "conns_held", "rss_kib_per_conn", "waiting_opened"):
        if key in row:
            row[key] = median(key)
    for key in ("requests", "errors", "failed", "unanswered", "waiting_closed_by_server"):
        if key in row:
            row[key] = sum(r[key] or 0 for r in runs)
    for key in ("threads", "processes"):
        row[key] = max(r[key] for r in runs)
    row["p999_ms"] = max((r["p999_ms"] for r in runs if r["p999_ms"] is not None), default=None)
    if "max_ms" in row:
        row["max_ms"] = max(r["max_ms"] for r in runs)
    if "fewest" in row:  # the worst round: a client starved in one round of three was starved
        worst = min(runs, key=lambda r: (r["answered"] - r["clients"], -1 if r["fewest"] is None else r["fewest"]))
        row["answered"], row["fewest"] = worst["answered"], worst["fewest"]
    row["rounds"] = len(runs)
    return row


def _unavailable(implementation: str) -> str | None:
    """Why an event-loop peer cannot run here, or None."""
    module = PEERS.get(implementation)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"{implementation}: {module} is not installed (`pip install {module}` to compare with it)."


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        _serve(argv[1], argv[2], argv[3])
        return 0
    if argv[:1] == ["--client"]:
        json.dump(run_clients(WORKLOADS[argv[1]], json.loads(argv[2]), int(argv[3]), sys.stdin.fileno(), sys.stdout),
                  sys.stdout)
        return 0
    if argv[:1] == ["--hold"]:
        _hold(json.loads(argv[1]), int(argv[2]), int(argv[3]), float(argv[4]))
        return 0
    parser = argparse.ArgumentParser(prog="sockwork bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs: a few minutes with every workload")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, of: " + ", ".join(WORKLOADS))
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS),
                        help="comma-separated: stdlib, legacy, a sockwork dispatcher (DISPATCHER+metrics: with "
                             "the metrics endpoint on), asyncio-streams, uvloop-streams; stdlib is always added first "
                             "(default: all of "
                             + ", ".join(IMPLEMENTATIONS) + ")")
    parser.add_argument("--rounds", type=int, help="runs per implementation, interleaved (default 3; quick 1)")
    parser.add_argument("--duration", type=float,
                        help="measured seconds per run "
                             "(default 2; quick 0.3; wrk rounds it to whole seconds, at least 1)")
    parser.add_argument("--warmup", type=float,
                        help="warm-up seconds per run (default 1.5; quick 1.1), counted from when every "
                             "client process has set up (its clients connected and answered once, see above)")
    parser.add_argument("--clients", type=int, metavar="N",
                        help="clients per workload instead of each workload's own number (not the HTTP ones)")
    parser.add_argument("--silent", type=int, metavar="N", help="silent connections held open by 'silent' (2000)")
    parser.add_argument("--trickle", type=int, metavar="N",
                        help="connections trickling a byte every 2 s held open by 'silent' (100)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (0.3 if args.quick else 2.0)
    args.warmup = args.warmup or (1.1 if args.quick else 1.5)
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    for flag in ("clients", "silent", "trickle"):
        if getattr(args, flag) is not None and getattr(args, flag) < (1 if flag == "clients" else 0):
            parser.error(f"--{flag} must be >= {1 if flag == 'clients' else 0}, got {getattr(args, flag)}")
    args.specs = {}
    for workload in args.workloads:
        spec = dict(WORKLOADS[workload])
        if spec["kind"] != "http":
            overrides = {"clients": args.clients, "silent": args.silent if "silent" in spec else None,
                         "trickle": args.trickle if "trickle" in spec else None}
            spec.update({key: value for key, value in overrides.items() if value is not None})
        args.specs[workload] = spec
    implementations = ["stdlib"] + [i for i in args.implementations.split(",") if i and i != "stdlib"]
    args.skipped = [note for note in map(_unavailable, implementations) if note]
    implementations = [i for i in implementations if _unavailable(i) is None]
    http_workloads = [w for w in args.workloads if WORKLOADS[w]["kind"] == "http"]
    wrk = shutil.which("wrk")
    args.http_skipped = None
    if http_workloads and wrk is None:
        args.http_skipped = WRK_MISSING.format(", ".join(http_workloads))
    for note in [*args.skipped, *([args.http_skipped] if args.http_skipped else [])]:
        print(f"sockwork bench: skipped: {note}", file=sys.stderr, flush=True)
    results: list[dict[str, Any]] = []
    for workload in args.workloads:
        spec = args.specs[workload]
        http = workload in http_workloads
        if http and wrk is None:
            continue
        chosen = [i for i in implementations if i in HTTP_IMPLEMENTATIONS] if http else implementations
        runs: dict[str, list[dict[str, Any]]] = {i: [] for i in chosen}
        for _ in range(args.rounds):
            for implementation in chosen:  # A B C A B C: drift hits all alike
                if http:
                    assert wrk is not None  # without wrk, HTTP workloads were skipped above
                    run = _one_http_run(implementation, workload, args.warmup, args.duration, wrk)
                else:
                    run = _one_run(implementation, workload, spec, args.warmup, args.duration)
                runs[implementation].append(run)
        results.extend(_median_row(runs[i]) for i in chosen)
        print(f"{workload}: done", file=sys.stderr, flush=True)
    shutdown = _shutdown_latency(3 if args.quick else 10)
    args.import_ms = _import_times()
    print(_markdown(results, shutdown, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "shutdown_ms": shutdown, "import_ms": args.import_ms,
                       "http_skipped": args.http_skipped, "skipped": args.skipped,
                       "workloads": {w: args.specs[w] for w in args.workloads},
                       "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                       "machine": platform.platform(),
                       "cpus": os.cpu_count(), "python": platform.python_version()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
