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
import contextlib
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

from sockwork import (
    FramingConfig,
    HandlerConfig,
    Registry,
    Server,
    ServerConfig,
    TransportConfig,
    build_server,
    hookimpl,
    make_plugin_manager,
    message_handler,
)
from sockwork import aio as aio
from sockwork.assembly import assemble
from sockwork.errors import FailedElsewhere, PartsRefused
from sockwork.handlers import echo as blocking_echo
from sockwork.interfaces import ServerHost, capability
from sockwork.registry import StageInputs
from sockwork.testing import Clients, HandlerForms, dispatcher_runs_async, recv_until_eof, serving

__all__ = [
    "test_a_handler_answers_its_samples_under_each_kind_of_dispatcher",
    "test_a_stage_refuses_what_it_must_and_it_is_counted_refused",
    "test_a_stage_stalled_mid_input_costs_no_cpu_while_it_waits",
    "test_a_stage_stalled_mid_input_is_cut_at_its_timeout_and_counted_timed_out",
    "test_close_after_drain_timeout_ends_stuck_connections",
    "test_close_waits_for_requests_in_flight",
    "test_concurrency_is_what_the_dispatcher_promises",
    "test_echo_large",
    "test_echo_small",
    "test_framing_finish_takes_the_rest_and_empties_the_buffer",
    "test_framing_refuses_a_message_over_max_message_complete_or_not",
    "test_framing_round_trips_messages",
    "test_framing_serves_a_message_handler_chosen_by_name",
    "test_framing_waits_for_a_message_to_be_complete",
    "test_handle_request_serves_one_or_times_out",
    "test_keep_alive_clients_beyond_the_workers_are_all_served",
    "test_lifecycle_hooks_are_called_in_order_and_raise_nothing",
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
        try:
            parts = assemble(sockwork_transport_name, handler, sockwork_dispatcher_name,
                             transport_options=sockwork_loopback.options,
                             registry=sockwork_registry)
        except PartsRefused as exc:  # by design: skipped, as sockwork_make_server skips it
            pytest.skip(f"assembly refuses {sockwork_transport_name} with {sockwork_dispatcher_name}: {exc}")
        if capability(parts.dispatcher, "accepts_itself"):
            _discard(parts)
            pytest.skip("a supervisor's workers accept by themselves: their own dispatchers are tested")
        if capability(parts.transport, "stages"):
            _discard(parts)
            pytest.skip("this transport's stages wake the loop by themselves (a handshake's packets), so a "
                        "dispatcher that never calls host.wake() would pass here: tested on the transports "
                        "without stages")
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
    """Up to ``count`` more clients, numbered from ``first``, each with its request sent.

    A datagram is sent without waiting: a Unix datagram socket whose server is not reading
    it (its queue holds about ten) would block the sender; then no more clients are added
    this time, and the caller looks again after letting the loop catch up.
    """
    clients: list[Any] = []
    for i in range(first, first + count):
        sock = stack.enter_context(connect.connect(server))
        if getattr(sock, "type", None) == socket.SOCK_DGRAM:
            try:
                sock.send(b"c%d" % i, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        else:
            sock.send(b"c%d" % i)
        clients.append(sock)
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


# ---- Connection stages: what a transport's stage_inputs say to send ----------------------

STAGE_CPU_BUDGET = 0.1
"""CPU seconds the whole process may spend while a client stalls inside a stage for STAGE_STALL seconds."""

STAGE_STALL = 1.0
"""Seconds the CPU test holds a client stalled mid-input."""

STAGE_TIMEOUT = 0.3
"""The timeout the timeout test gives each stage (set on the stage objects of the server under test)."""


@contextmanager
def staged_server(transport_name: str, registry: Registry, loopback: Any) -> Iterator[tuple[Server, StageInputs]]:
    """A server on the transport under test (thread dispatcher, echo), serving, with its loopback's stage_inputs;
    skips the test when there are none (the entry gives none, or a variant's loopback changed the stages)
    or the transport runs no stage with its loopback options."""
    inputs = loopback.stage_inputs
    if inputs is None:
        pytest.skip(f"transport {transport_name!r} gives no stage_inputs (for these loopback options): "
                    "its connection stages are not tested")
    server = Server(transport=transport_name, transport_options=loopback.options, dispatcher="thread",
                    handler=blocking_echo, registry=registry)
    try:
        if not capability(server.transport, "stages"):
            pytest.skip(f"transport {transport_name!r} runs no connection stage with its loopback options")
        with serving(server):
            yield server, inputs
    finally:
        server.close()


@contextmanager
def raw_client(server: Server) -> Iterator[socket.socket]:
    """A plain stream socket connected to ``server``: bytes exactly as the test sends them, no wire format."""
    sock = socket.socket(server.transport.family, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect(server.address)
        yield sock
    finally:
        sock.close()


def _stats_reach(server: Server, field: str, value: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while getattr(server.stats, field) < value and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(getattr(server.stats, field) >= value)


STAGE_CALLS_WHILE_STALLED = 3
"""Most calls of the stages' ``advance()`` the CPU test tolerates while the client stalls (none are needed)."""


def count_advances(stages: Any) -> list[int]:
    """Count calls of each stage's ``advance`` from now on (the count is the list's one item)."""
    calls = [0]
    for stage in stages:
        original = stage.advance

        def counted(conn: Any, _original: Any = original) -> Any:
            calls[0] += 1
            return _original(conn)

        with contextlib.suppress(AttributeError, TypeError):  # __slots__ or frozen: its CPU is still measured
            stage.advance = counted
    return calls


@_conformance
def test_a_stage_stalled_mid_input_costs_no_cpu_while_it_waits(
    sockwork_transport_name: str, sockwork_registry: Registry, sockwork_loopback: Any,
) -> None:
    """A client that sends the start of what the stages expect and then stalls costs the server no CPU
    (at most STAGE_CPU_BUDGET seconds over STAGE_STALL, and no call of a stage's ``advance()``): a stage
    waiting for more bytes is not called again and again (a stage that peeks and asks for "write", or
    one called while the bytes it peeked at sit unread, spins; on a busy machine a spin may get little
    CPU, so the calls are counted too)."""
    with staged_server(sockwork_transport_name, sockwork_registry, sockwork_loopback) as (server, inputs), \
            raw_client(server) as sock:
        calls = count_advances(capability(server.transport, "stages"))
        sock.sendall(inputs.partial)
        time.sleep(0.2)  # the loop has seen the connection's first bytes and asked its stage
        called_before = calls[0]
        started = time.process_time()
        time.sleep(STAGE_STALL)
        used = time.process_time() - started
        called = calls[0] - called_before
        assert server.stats.completed == 0, "the stages let a partial input through to the handler"
        assert used <= STAGE_CPU_BUDGET and called <= STAGE_CALLS_WHILE_STALLED, (
            f"one client stalled mid-input cost {used:.2f} s of CPU and {called} call(s) of advance() in "
            f"{STAGE_STALL} s: a stage waiting for more bytes must return 'read' having seen everything there "
            "is (Connection.peek), and is called again only when new bytes arrive")


@_conformance
def test_a_stage_refuses_what_it_must_and_it_is_counted_refused(
    sockwork_transport_name: str, sockwork_registry: Registry, sockwork_loopback: Any,
) -> None:
    """Input the stages refuse (stage_inputs.refused) closes the connection, counted ``refused`` (StageFailed),
    not ``failed`` (a bug in the stage) and never a handler's turn."""
    with staged_server(sockwork_transport_name, sockwork_registry, sockwork_loopback) as (server, inputs):
        if inputs.refused is None:
            pytest.skip(f"transport {sockwork_transport_name!r} gives no refused stage input")
        with raw_client(server) as sock:
            sock.sendall(inputs.refused)
            with contextlib.suppress(ConnectionResetError):  # closed with the refused bytes unread
                recv_until_eof(sock)  # whatever a stage says on the way out (a TLS alert), then the end
        assert _stats_reach(server, "refused", 1), f"refused input was not counted refused: {server.stats}"
        stats = server.stats
        assert (stats.completed, stats.failed) == (0, 0), stats


@_conformance
def test_a_stage_stalled_mid_input_is_cut_at_its_timeout_and_counted_timed_out(
    sockwork_transport_name: str, sockwork_registry: Registry, sockwork_loopback: Any,
) -> None:
    """A client stalled mid-input is closed at its stage's timeout (set to STAGE_TIMEOUT here), counted
    ``timed_out``; it never reaches the handler."""
    with staged_server(sockwork_transport_name, sockwork_registry, sockwork_loopback) as (server, inputs):
        for stage in capability(server.transport, "stages"):
            try:
                stage.timeout = STAGE_TIMEOUT
            except (AttributeError, TypeError):
                pytest.skip(f"stage {stage.name!r} has a timeout the kit cannot shorten")
        with raw_client(server) as sock:
            sock.sendall(inputs.partial)
            sock.settimeout(STAGE_TIMEOUT + 4)
            try:
                recv_until_eof(sock)
            except TimeoutError:
                pytest.fail(f"a client stalled mid-input was still connected {STAGE_TIMEOUT + 4} s later: "
                            f"its stage (timeout {STAGE_TIMEOUT} s) did not keep it waiting until cut "
                            f"({server.stats})", pytrace=False)
        assert _stats_reach(server, "timed_out", 1), f"the stalled stage was not counted timed_out: {server.stats}"
        assert server.stats.completed == 0, "the stages let a partial input through to the handler"


# ---- Framings: how a stream is cut into messages ------------------------------------------

FRAMING_SAMPLES = (b"hello", b"", b"x" * 1000, b"0123456789" * 10, bytes(range(32, 127)))
"""Messages every framing must carry: printable ASCII without a newline (which ``lines`` cannot carry), and empty."""


def _split_all(framing: Any, buffer: bytearray) -> list[bytes]:
    """Every message ``split`` gives from ``buffer``, calling it until it gives none (each call that gives
    messages must have taken their bytes out of the buffer, or this would never end)."""
    messages: list[bytes] = []
    for _ in range(len(buffer) + 2):
        before = len(buffer)
        batch = framing.split(buffer)
        if not batch:
            break
        assert len(buffer) < before, f"split() gave {len(batch)} message(s) but left their bytes in the buffer"
        messages.extend(batch)
    return messages


@_conformance
def test_framing_round_trips_messages(sockwork_make_framing: Callable[..., Any]) -> None:
    """``frame`` then ``split``: the same messages, in order, and nothing left in the buffer."""
    framing = sockwork_make_framing()
    buffer = bytearray(b"".join(framing.frame(message) for message in FRAMING_SAMPLES))
    assert _split_all(framing, buffer) == list(FRAMING_SAMPLES)
    assert buffer == b"", f"split() left {bytes(buffer[:40])!r}... of complete messages in the buffer"
    assert framing.finish(buffer) == []


@_conformance
def test_framing_waits_for_a_message_to_be_complete(sockwork_make_framing: Callable[..., Any]) -> None:
    """Fed a byte at a time, ``split`` gives each message exactly when its last byte arrives, never before."""
    framing = sockwork_make_framing()
    frames = [framing.frame(message) for message in FRAMING_SAMPLES]
    ends = [sum(len(frame) for frame in frames[:i + 1]) for i in range(len(frames))]
    stream, buffer, got = b"".join(frames), bytearray(), []
    for fed in range(1, len(stream) + 1):
        buffer += stream[fed - 1:fed]
        got += _split_all(framing, buffer)
        complete = sum(1 for end in ends if end <= fed)
        assert got == list(FRAMING_SAMPLES[:complete]), (
            f"after {fed} bytes split() gave {len(got)} message(s); {complete} were complete")
    assert buffer == b""


@_conformance
def test_framing_finish_takes_the_rest_and_empties_the_buffer(sockwork_make_framing: Callable[..., Any]) -> None:
    """At the end of the stream ``finish`` returns the last message or raises ValueError for a truncated one;
    either way the buffer is empty afterwards (the loop calls it once and closes)."""
    framing = sockwork_make_framing()
    assert framing.finish(bytearray()) == []
    truncated = bytearray(framing.frame(b"hello")[:-1])
    assert _split_all(framing, truncated) == []
    try:
        rest = framing.finish(truncated)
    except ValueError:
        rest = []
    assert isinstance(rest, list) and all(isinstance(message, bytes) for message in rest), rest
    assert truncated == b"", f"finish() left {bytes(truncated)!r} in the buffer"


@_conformance
def test_framing_refuses_a_message_over_max_message_complete_or_not(
    sockwork_make_framing: Callable[..., Any], sockwork_framing_name: str, sockwork_registry: Registry,
) -> None:
    """With ``max_message = 16``: 16 bytes pass; 100 raise ValueError, sent whole or only begun (a client
    cannot make the server buffer past the limit by never finishing a message)."""
    entry = sockwork_registry.get("framing", sockwork_framing_name)
    if "max_message" not in attrs_fields(entry.options):
        pytest.skip(f"framing {sockwork_framing_name!r} has no max_message option to test the limit with")
    framing = sockwork_make_framing(max_message=16)
    assert framing.max_message == 16
    assert _split_all(framing, bytearray(framing.frame(b"y" * 16))) == [b"y" * 16]
    oversized = framing.frame(b"z" * 100)
    with pytest.raises(ValueError):
        _split_all(framing, bytearray(oversized))
    with pytest.raises(ValueError):
        _split_all(framing, bytearray(oversized[:40]))


def attrs_fields(options_class: type) -> dict[str, Any]:
    return dict(attrs.fields_dict(options_class)) if attrs.has(options_class) else {}


@_conformance
def test_framing_serves_a_message_handler_chosen_by_name(
    sockwork_framing_name: str, sockwork_registry: Registry, sockwork_make_framing: Callable[..., Any],
) -> None:
    """A config that names the framing: the server reads framed messages and frames the replies with it."""
    @message_handler
    def shout(message: bytes, conn: Any) -> bytes:
        return message.upper()

    config = ServerConfig(transport=TransportConfig.from_url("tcp://127.0.0.1:0"), handler=HandlerConfig(ref=shout),
                          framing=FramingConfig(name=sockwork_framing_name))
    client_side = sockwork_make_framing()
    with serving(build_server(config, sockwork_registry)) as server, \
            socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"".join(client_side.frame(message) for message in FRAMING_SAMPLES))
        replies: list[bytes] = []
        received = bytearray()
        while len(replies) < len(FRAMING_SAMPLES):
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection after {len(replies)} replies"
            received += chunk
            replies += _split_all(client_side, received)
    assert replies == [message.upper() for message in FRAMING_SAMPLES]


# ---- Handlers: what a named handler's samples say it answers ---------------------------------

def _read_exactly(sock: socket.socket, size: int) -> bytes:
    received = b""
    while len(received) < size:
        chunk = sock.recv(size - len(received))
        if not chunk:
            break
        received += chunk
    return received


@_conformance
def test_a_handler_answers_its_samples_under_each_kind_of_dispatcher(
    sockwork_handler_name: str, sockwork_registry: Registry,
) -> None:
    """Each of the entry's samples (HandlerSamples) gets its reply: streams on tcp, datagrams on udp, under a
    blocking dispatcher (pool) and, for a handler with an async form, under asyncio; a connection per sample."""
    if sockwork_handler_name == "(a plugin failed to load)":
        pytest.fail("a plugin failed to load (see the plugin-load-failure tests)", pytrace=False)
    entry = sockwork_registry.get("handler", sockwork_handler_name)
    samples = entry.samples
    if samples is None or not (samples.stream or samples.datagram):
        pytest.skip(f"handler {sockwork_handler_name!r} gives no samples: it is not tested")
    dispatchers = ["pool"] + (["asyncio"] if entry.async_factory is not None else [])
    for dispatcher in dispatchers:
        for kind, exchanges in (("stream", samples.stream), ("datagram", samples.datagram)):
            if not exchanges:
                continue
            url = "tcp://127.0.0.1:0" if kind == "stream" else "udp://127.0.0.1:0"
            server = Server(transport=url, dispatcher=dispatcher, handler=sockwork_handler_name,
                            registry=sockwork_registry)
            with serving(server):
                for request, reply in exchanges:
                    if kind == "stream":
                        with socket.create_connection(server.address, timeout=10) as sock:
                            sock.sendall(request)
                            got = _read_exactly(sock, len(reply))
                    else:
                        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                            sock.settimeout(10)
                            sock.sendto(request, server.address)
                            got = sock.recv(65536)
                    assert got == reply, (f"handler {sockwork_handler_name!r} under {dispatcher} answered {request!r} "
                                          f"on a {kind} with {got!r}; its samples say {reply!r}")
            stats = server.stats
            assert stats.failed == 0, f"handler {sockwork_handler_name!r} failed under {dispatcher}: {stats}"


# ---- Lifecycle plugins: their hooks, in a server's life ---------------------------------------

LIFECYCLE_ORDER = ("sockwork_server_started", "sockwork_collect_stats", "sockwork_request_failed",
                   "sockwork_server_stopped")


@_conformance
def test_lifecycle_hooks_are_called_in_order_and_raise_nothing(
    sockwork_lifecycle_plugin: str, sockwork_registry: Registry,
) -> None:
    """A server's life (start, a request, a failing request, its stats read, stop) calls each lifecycle hook
    the plugin implements, started first and stopped last, and none of its hooks raises (a hook that raises
    is logged by the server, which goes on: the plugin's work is then silently not done)."""
    implemented = dict(sockwork_registry.lifecycle_plugins())[sockwork_lifecycle_plugin]
    calls: list[tuple[str, BaseException | None]] = []

    def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        pass

    def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        if any(impl.plugin_name == sockwork_lifecycle_plugin for impl in hook_impls):
            calls.append((hook_name, outcome.exception))

    def handle(request: Any, client_address: Any, server: Any) -> None:
        if request.recv(4) == b"boom":
            raise RuntimeError("the kit's failing request")
        request.sendall(b"fine")

    undo = sockwork_registry.plugin_manager.add_hookcall_monitoring(before, after)
    try:
        with serving(Server(transport="tcp://127.0.0.1:0", dispatcher="thread", handler=handle,
                            registry=sockwork_registry)) as server:
            for payload in (b"fine", b"boom"):
                with socket.create_connection(server.address, timeout=10) as sock:
                    sock.sendall(payload)
                    recv_until_eof(sock)
            deadline = time.monotonic() + 10
            while server.stats.failed < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        undo()
    raised = [(hook, error) for hook, error in calls if error is not None]
    assert not raised, f"plugin {sockwork_lifecycle_plugin!r}'s hooks raised: {raised}"
    called = [hook for hook, _ in calls]
    assert sorted(set(called)) == sorted(implemented), (
        f"plugin {sockwork_lifecycle_plugin!r} implements {implemented}, but only {sorted(set(called))} were called")
    if "sockwork_server_started" in called:
        assert called[0] == "sockwork_server_started", called
    if "sockwork_server_stopped" in called:
        assert called[-1] == "sockwork_server_stopped", called
