"""sockwork's conformance suite: the promises every transport and dispatcher keeps.

Plugin authors run it against their own component with one line in a test
module (with sockwork's pytest plugin enabled: ``pytest_plugins = ["sockwork.pytest_plugin"]``
in the top-level conftest.py)::

    from sockwork.conformance import *  # noqa: F403

A dispatcher that serves async handlers (``runs_async``, like ``asyncio``) runs
the async form of each test handler (:class:`sockwork.testing.HandlerForms`),
so the same tests hold it to the same promises.

Each test runs for every pair of a registered transport and a registered
dispatcher in which at least one comes from a plugin other than sockwork's
built-ins (set ``sockwork_conformance_builtins = true`` in the pytest ini
options to test the built-ins too, as sockwork's own suite does). Every test
asserts that no thread, descriptor or child process is left behind.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import attrs
import pytest

from sockwork import Registry, Server, hookimpl, make_plugin_manager
from sockwork import aio as aio
from sockwork.assembly import assemble
from sockwork.errors import FailedElsewhere
from sockwork.handlers import echo as blocking_echo
from sockwork.interfaces import ServerHost, capability
from sockwork.testing import Clients, HandlerForms, dispatcher_runs_async, recv_until_eof, serving

__all__ = [
    "test_close_after_drain_timeout_ends_stuck_connections",
    "test_close_waits_for_requests_in_flight",
    "test_concurrency_is_what_the_dispatcher_promises",
    "test_echo_large",
    "test_echo_small",
    "test_handle_request_serves_one_or_times_out",
    "test_keep_alive_clients_beyond_the_workers_are_all_served",
    "test_many_clients_each_get_their_own_reply",
    "test_raising_handler_does_not_stop_the_server",
    "test_saturation_stops_accepting_and_freed_capacity_wakes_the_loop",
    "test_shutdown_while_idle",
]


def _conformance(test: Callable[..., None]) -> Callable[..., None]:
    """Marks that travel with the test function into the module that imports it."""
    test = pytest.mark.usefixtures("sockwork_no_leaks")(test)
    marked: Callable[..., None] = pytest.mark.timeout(60)(test)
    return marked


MakeServer = Callable[..., Any]
# Every test connects through the ``sockwork_client`` fixture (a sockwork.testing.Clients): a
# transport that changes the wire format (TLS, a PROXY header) says how through its entry's
# loopback_client, and is tested by exactly these tests.

echo = HandlerForms(blocking_echo, aio.echo)
"""The built-in echo handler, in the form the dispatcher under test serves."""


def large_payload(server: Server) -> bytes:
    # 1 MiB through a stream; a datagram cannot be larger than ~64 KiB.
    size = 1 << 20 if server.transport.kind == "stream" else 60_000
    return bytes(range(256)) * (size // 256)


@_conformance
def test_echo_small(sockwork_make_server: MakeServer, sockwork_client: Clients) -> None:
    """A short payload comes back unchanged, several times over."""
    with serving(sockwork_make_server(echo)) as server:
        for i in range(5):
            assert sockwork_client.exchange(server, b"ping %d" % i) == b"ping %d" % i


@_conformance
def test_echo_large(sockwork_make_server: MakeServer, sockwork_client: Clients) -> None:
    """A large payload (1 MiB stream, 60 kB datagram) comes back unchanged."""
    with serving(sockwork_make_server(echo)) as server:
        payload = large_payload(server)
        assert sockwork_client.exchange(server, payload) == payload


@_conformance
def test_many_clients_each_get_their_own_reply(sockwork_make_server: MakeServer, sockwork_client: Clients) -> None:
    """Twenty concurrent clients each get exactly their own payload back."""
    server = sockwork_make_server(echo)
    with serving(server):
        replies: dict[int, bytes] = {}

        def one(i: int) -> None:
            replies[i] = sockwork_client.exchange(server, b"client %02d" % i)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert replies == {i: b"client %02d" % i for i in range(20)}
    # Every request was counted as completed, also when served in another
    # process (a dispatcher that releases a request must report it: host.finished).
    stats = server.stats
    assert (stats.accepted, stats.completed, stats.active) == (20, 20, 0), stats


# ---- Concurrency: what the strategy promises --------------------------------

class Gate:
    """Handlers wait at the gate until the test lets them through, one byte each.

    A socketpair, so that handlers in forked children wait on it as well.
    """

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()

    def open(self, count: int) -> None:
        self.writer.sendall(b"x" * count)

    async def wait_async(self) -> None:
        """The async handlers' way through: on a descriptor of their own, so that many wait at once."""
        sock = self.reader.dup()
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_recv(sock, 1)
        finally:
            sock.close()

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def gated_handler(gate: Gate) -> HandlerForms:
    """Replies "started <payload>", waits at the gate, replies "done <payload>"."""
    def handle(request: Any, client_address: Any, server: Any) -> None:
        if isinstance(request, tuple):
            payload, sock = request
            def send(data: bytes) -> None:
                sock.sendto(data, client_address)
        else:
            payload = request.recv(100)
            send = request.sendall
        send(b"started " + payload)
        gate.reader.recv(1)
        send(b"done " + payload)

    async def handle_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        payload = await reader.read(100)
        writer.write(b"started " + payload)
        await writer.drain()
        await gate.wait_async()
        writer.write(b"done " + payload)
        await writer.drain()

    async def handle_datagram(payload: bytes, client_address: Any, transport: Any) -> bytes:
        transport.sendto(b"started " + payload, client_address)
        await gate.wait_async()
        return b"done " + payload

    return HandlerForms(handle, aio.AsyncHandler(handle_stream, handle_datagram, name="gated"))


@contextmanager
def open_gate() -> Iterator[Gate]:
    gate = Gate()
    try:
        yield gate
    finally:
        gate.close()


def read_messages(clients: list[Any], prefix: bytes, count: int, timeout: float) -> list[int]:
    """Indices of clients that got a message ``prefix + b" cN"``, up to ``count``.

    Stream messages are read by their exact length, as two may arrive together.
    """
    found: list[int] = []
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(clients):
            selector.register(sock, selectors.EVENT_READ, index)
        deadline = time.monotonic() + timeout
        while len(found) < count and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                sock = clients[key.data]
                if sock.type == socket.SOCK_STREAM:
                    message = sock.recv(len(prefix) + 3, socket.MSG_WAITALL)
                else:
                    message = sock.recv(100)
                assert message.startswith(prefix + b" c"), message
                found.append(key.data)
                selector.unregister(sock)
    return found


def start_clients(stack: ExitStack, server: Server, count: int, connect: Clients) -> list[Any]:
    clients = [stack.enter_context(connect.connect(server)) for _ in range(count)]
    for i, sock in enumerate(clients):
        sock.send(b"c%d" % i)
    return clients


@_conformance
def test_concurrency_is_what_the_dispatcher_promises(sockwork_make_server: MakeServer,
                                                    sockwork_client: Clients) -> None:
    """N clients blocking in the handler run at once, up to the dispatcher's concurrency.

    A serial dispatcher (concurrency 1) serves them one at a time; with a
    small limit, two clients more than the limit are sent and must wait until
    a slot frees up (which also exercises the dispatcher's wake-up).
    """
    with open_gate() as gate, serving(sockwork_make_server(gated_handler(gate))) as server, ExitStack() as stack:
        limit = server.dispatcher.concurrency
        n = limit + 2 if limit is not None and limit <= 16 else 4  # beyond a small limit: is it kept?
        at_once = n if limit is None else min(n, limit)
        clients = start_clients(stack, server, n, sockwork_client)
        started = read_messages(clients, b"started", at_once, timeout=10)
        assert len(started) == at_once, f"only {len(started)} of {at_once} ran at once"
        if at_once < n:
            extra = read_messages(clients, b"started", 1, timeout=0.3)
            assert not extra, f"dispatcher with concurrency {limit} ran more at once"
        gate.open(n)
        waiting = [i for i in range(n) if i not in started]
        later = read_messages([clients[i] for i in waiting], b"started", len(waiting), timeout=10)
        assert len(later) == len(waiting)
        done = read_messages(clients, b"done", n, timeout=10)
        assert sorted(done) == list(range(n))


class _Watched:
    """A dispatcher seen through a proxy: what ``saturated()`` said, and the ``wake()`` calls it made."""

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher
        self.concurrency = dispatcher.concurrency
        self.saturated_seen = 0
        self.submitting = False

    def start(self, host: ServerHost) -> None:  # passed on whole: the wrapped dispatcher takes the role it needs
        self.dispatcher.start(host)

    def submit(self, request: Any, client_address: Any) -> None:
        self.submitting = True  # stays True while a dispatcher serves inside submit() (inline)
        self.dispatcher.submit(request, client_address)
        self.submitting = False

    def saturated(self) -> bool:
        full = bool(self.dispatcher.saturated())
        self.saturated_seen += full
        return full

    def drain(self, timeout: float | None) -> bool:
        return bool(self.dispatcher.drain(timeout))

    def close(self) -> None:
        self.dispatcher.close()


MOST_CLIENTS = 320
"""The backpressure test opens at most this many clients (a bounded load)."""

SERVE_WITHIN = 20.0
"""Seconds the backpressure test waits for the blocked clients once the handlers may go on."""


@_conformance
def test_saturation_stops_accepting_and_freed_capacity_wakes_the_loop(
    sockwork_transport_name: str, sockwork_dispatcher_name: str, sockwork_registry: Registry,
    sockwork_loopback: Any, sockwork_client: Clients,
) -> None:
    """With every worker blocked, a dispatcher says saturated() (backpressure) before it holds an
    unbounded number of requests, and wakes the loop (host.wake(), or a descriptor it watches) when
    capacity frees up: here the loop does not poll, so a dispatcher that never wakes it hangs."""
    with open_gate() as gate:
        handler = gated_handler(gate).pick(dispatcher_runs_async(sockwork_registry, sockwork_dispatcher_name))
        parts = assemble(sockwork_transport_name, handler, sockwork_dispatcher_name,
                         transport_options=sockwork_loopback.options,
                         registry=sockwork_registry)
        if capability(parts.dispatcher, "accepts_itself"):
            _discard(parts)
            pytest.skip("a supervisor's workers accept by themselves: their own dispatchers are tested")
        if parts.dispatcher.concurrency is None or parts.dispatcher.concurrency >= MOST_CLIENTS // 2:
            _discard(parts)
            pytest.skip(f"concurrency {parts.dispatcher.concurrency}: too many blocked requests to test here")
        watched = _Watched(parts.dispatcher)
        server = Server(parts=attrs_evolve(parts, dispatcher=watched))
        server.loop.saturated_recheck = None  # no polling: only the dispatcher's wake-up resumes accepting
        with serving(server), ExitStack() as stack:
            clients = start_clients_from(stack, server, 0, 1, sockwork_client)
            assert read_messages(clients, b"started", 1, timeout=10) == [0]
            inside = time.monotonic() + 1.0  # submit() may still be returning while the handler starts
            while watched.submitting and time.monotonic() < inside:
                time.sleep(0.01)
            if watched.submitting:  # it serves in the loop's own thread: the loop cannot accept anyway
                gate.open(1)
                pytest.skip("this dispatcher serves inside submit(): no backpressure is needed")
            deadline = time.monotonic() + 20
            while not watched.saturated_seen and len(clients) < MOST_CLIENTS and time.monotonic() < deadline:
                clients.extend(start_clients_from(stack, server, len(clients), 8, sockwork_client))
                time.sleep(0.02)  # let the loop accept them
            gate.open(len(clients))  # first: a failing check must not leave handlers blocked
            assert watched.saturated_seen, (
                f"saturated() never returned True with {len(clients)} requests accepted and "
                f"{watched.concurrency} allowed to run: a dispatcher must stop the loop before it holds unbounded work")
            started = read_messages(clients[1:], b"started", len(clients) - 1, timeout=SERVE_WITHIN)
            assert len(started) == len(clients) - 1, (
                f"only {len(started) + 1} of {len(clients)} clients were ever served: when capacity frees up, "
                "the dispatcher must wake the loop (host.wake()), which stopped accepting at saturated()")


def _discard(parts: Any) -> None:
    """Parts never served: close what they hold (an inherited descriptor is the transport's once opened)."""
    parts.dispatcher.close()
    parts.transport.open()
    parts.transport.close()


def attrs_evolve(parts: Any, **changes: Any) -> Any:
    return attrs.evolve(parts, **changes)


def start_clients_from(stack: ExitStack, server: Server, first: int, count: int, connect: Clients) -> list[Any]:
    clients = [stack.enter_context(connect.connect(server)) for _ in range(count)]
    for i, sock in enumerate(clients, first):
        sock.send(b"c%d" % i)
    return clients


# ---- Shutdown --------------------------------------------------------------

@_conformance
def test_shutdown_while_idle(sockwork_make_server: MakeServer, sockwork_client: Clients) -> None:
    """An idle server stops and closes promptly, and serves again if asked first."""
    server = sockwork_make_server(echo)
    with serving(server):
        assert sockwork_client.exchange(server, b"one") == b"one"
        server.shutdown()
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        assert sockwork_client.exchange(server, b"two") == b"two"
        server.shutdown()
        thread.join()


@_conformance
def test_close_waits_for_requests_in_flight(sockwork_make_server: MakeServer, sockwork_client: Clients) -> None:
    """close() stops accepting but lets running requests finish and reply."""
    n = 2
    with open_gate() as gate, ExitStack() as stack:
        server = sockwork_make_server(gated_handler(gate))
        with serving(server):
            limit = server.dispatcher.concurrency
            at_once = n if limit is None else min(n, limit)
            clients = start_clients(stack, server, at_once, sockwork_client)
            assert len(read_messages(clients, b"started", at_once, timeout=10)) == at_once
            closer = threading.Thread(target=server.close)
            closer.start()
            closer.join(0.3)
            assert closer.is_alive(), "close() returned while requests were still running"
            gate.open(at_once)
            closer.join(10)
            assert not closer.is_alive()
        assert sorted(read_messages(clients, b"done", at_once, timeout=10)) == list(range(at_once))


@_conformance
def test_close_after_drain_timeout_ends_stuck_connections(sockwork_make_server: MakeServer,
                                                         sockwork_client: Clients) -> None:
    """A client that never sends cannot hold close() past the drain timeout (plus grace)."""
    holding_r, holding_w = os.pipe()  # a pipe: the handler may run in a forked child

    def wait_for_client(request: Any, client_address: Any, server: Any) -> None:
        os.write(holding_w, b"h")
        request.recv(1)  # the client never sends

    async def wait_for_client_async(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        os.write(holding_w, b"h")
        await reader.read(1)

    try:
        async def no_reply(payload: bytes, client_address: Any) -> None:
            return None  # a datagram server: skipped below

        waiting = aio.AsyncHandler(wait_for_client_async, no_reply, name="wait_for_client")
        server = sockwork_make_server(HandlerForms(wait_for_client, waiting), drain_timeout=0.2)
        if server.transport.kind == "datagram":
            pytest.skip("a datagram request holds no connection to shut down")
        with serving(server), sockwork_client.connect(server) as sock:
            assert os.read(holding_r, 1) == b"h"
            started = time.monotonic()
            server.close()
            assert time.monotonic() - started < 5
            assert recv_until_eof(sock) == b""
    finally:
        os.close(holding_r)
        os.close(holding_w)


@_conformance
def test_raising_handler_does_not_stop_the_server(sockwork_make_server: MakeServer, sockwork_client: Clients) -> None:
    """A handler that raises is reported to the hook; the next request is served."""
    reports_r, reports_w = os.pipe()

    class Reporter:  # the hook runs in the server's own process, whichever process ran the handler
        @hookimpl
        def sockwork_request_failed(self, exc: BaseException) -> None:
            if isinstance(exc, FailedElsewhere):  # in a child process: the parent hears what it was
                os.write(reports_w, f"{exc.type_name}: {exc.message}\n".encode())
            else:
                os.write(reports_w, f"{type(exc).__name__}: {exc}\n".encode())

    pm = make_plugin_manager()  # with installed plugins: the component under test may be one
    pm.register(Reporter())

    def handle(request: Any, client_address: Any, server: Any) -> None:
        payload = request[0] if isinstance(request, tuple) else request.recv(100)
        if payload == b"boom":
            raise RuntimeError("handler exploded")
        echo_reply = payload
        if isinstance(request, tuple):
            request[1].sendto(echo_reply, client_address)
        else:
            request.sendall(echo_reply)

    async def handle_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        payload = await reader.read(100)
        if payload == b"boom":
            raise RuntimeError("handler exploded")
        writer.write(payload)

    async def handle_datagram(payload: bytes, client_address: Any) -> bytes:
        if payload == b"boom":
            raise RuntimeError("handler exploded")
        return payload

    forms = HandlerForms(handle, aio.AsyncHandler(handle_stream, handle_datagram, name="raising"))
    try:
        with serving(sockwork_make_server(forms, registry=Registry(pm))) as server:
            with sockwork_client.connect(server) as sock:
                sock.send(b"boom")
                if server.transport.kind == "stream":
                    assert recv_until_eof(sock) == b""  # closed, not left hanging
            assert os.read(reports_r, 200) == b"RuntimeError: handler exploded\n"
            with sockwork_client.connect(server) as sock:
                sock.send(b"fine")
                assert sock.recv(100) == b"fine"
    finally:
        os.close(reports_r)
        os.close(reports_w)


@_conformance
def test_handle_request_serves_one_or_times_out(sockwork_make_server: MakeServer, sockwork_client: Clients) -> None:
    """handle_request() returns False after its timeout, True once it dispatched a request."""
    server = sockwork_make_server(echo)
    if capability(server.dispatcher, "accepts_itself"):
        pytest.skip("this dispatcher's workers accept by themselves: there is no handle_request()")
    started = time.monotonic()
    assert server.handle_request(timeout=0.05) is False
    assert time.monotonic() - started >= 0.05
    replies: list[bytes] = []

    def talk() -> None:
        # In a thread: a client whose transport has a handshake (TLS) needs the server to run
        # while it connects, and here only handle_request() runs it.
        with sockwork_client.connect(server) as sock:
            sock.send(b"once")
            if server.transport.kind == "stream":
                # The end of the stream too: a forked child holds a copy of this client
                # socket, so only a shutdown (not a close) can show it the end.
                sock.shutdown(socket.SHUT_WR)
            # One turn of echo (on a stream the connection then waits in the loop for more).
            replies.append(sock.recv(100))

    talker = threading.Thread(target=talk)
    talker.start()
    try:
        served = server.handle_request(timeout=10)
    finally:
        talker.join(20)
    assert served is True
    assert replies == [b"once"]
    server.close()


@_conformance
def test_keep_alive_clients_beyond_the_workers_are_all_served(sockwork_make_server: MakeServer,
                                                              sockwork_client: Clients) -> None:
    """Three times as many persistent clients as the dispatcher runs at once, taking turns: every one
    is answered every time (connections wait in the loop between requests, not in a worker)."""
    server = sockwork_make_server(echo)
    if server.transport.kind != "stream":
        pytest.skip("a datagram client holds no connection")
    waiting = getattr(getattr(server, "loop", None), "waiting", None)
    accepts_itself = capability(server.dispatcher, "accepts_itself")
    if waiting is None and not accepts_itself:
        pytest.skip("this handler is dispatched at accept (a classic handler): a connection holds its worker")
    if capability(server.dispatcher, "keeps_connections_elsewhere"):
        pytest.skip("this dispatcher serves a kept-alive connection to its end in another process")
    concurrency = server.dispatcher.concurrency
    count = 24 if concurrency is None else min(3 * concurrency + 1, 48)
    rounds = 5
    with serving(server), ExitStack() as stack:
        clients = [stack.enter_context(sockwork_client.connect(server)) for _ in range(count)]
        for turn in range(rounds):
            for i, sock in enumerate(clients):
                sock.sendall(b"%d.%d;" % (i, turn))
            for i, sock in enumerate(clients):
                expected = b"%d.%d;" % (i, turn)
                received = b""
                while len(received) < len(expected):
                    chunk = sock.recv(100)
                    assert chunk, f"client {i} was closed in round {turn}"
                    received += chunk
                assert received == expected
