"""The asyncio dispatcher: async handlers on an event loop, with the limits, drain, counters, transports,
supervisor and CLI every other dispatcher has (issue 12). The conformance kit runs it too."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from sockwork import ConfigError, Limits, Registry, Server, aio, load_config, make_plugin_manager
from sockwork.assembly import assemble, assemble_config
from sockwork.handlers import echo
from sockwork.testing import client, exchange, recv_until_eof, serving

pytestmark = pytest.mark.timeout(60)

TCP = "tcp://127.0.0.1:0"
UDP = "udp://127.0.0.1:0"
BUILTINS = Registry(make_plugin_manager(entry_points=False))
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop not installed"))]
TRANSPORTS = [e.name for e in BUILTINS.entries("transport") if e.loopback_options is not None]

if HAVE_UVLOOP:
    import uvloop

    # libuv opens one pipe per process on first use, kept for the process's life: open it now,
    # before any test's resource snapshot, so that it is not taken for a leak.
    uvloop.new_event_loop().close()


def make(transport: str, handler: Any, tmp: Path, loop: str = "asyncio", **kwargs: Any) -> Server:
    entry = BUILTINS.get("transport", transport)
    return Server(transport=transport, transport_options=entry.loopback_options(tmp),  # type: ignore[misc]
                  dispatcher="asyncio", dispatcher_options={"loop": loop}, handler=handler, registry=BUILTINS,
                  **kwargs)


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


# ---- Handlers by name, on every transport, on both loops ------------------------------

@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_builtin_handlers_by_name_on_every_transport(transport: str, loop: str, short_tmp: Path) -> None:
    """'echo', 'discard' and 'lines' resolve to their async forms under asyncio, on every built-in transport."""
    server = make(transport, "echo", short_tmp, loop)
    with serving(server):
        assert exchange(server, b"ping") == b"ping"
        datagrams = server.transport.kind == "datagram"
        big = b"x" * (60_000 if datagrams else 1 << 20)
        assert exchange(server, big) == big
    assert (server.stats.completed, server.stats.active) == (2, 0)
    if datagrams:
        with pytest.raises(ConfigError, match="serves stream requests"):
            make(transport, "lines", short_tmp, loop)
        return
    with serving(make(transport, "lines", short_tmp, loop, handler_options={"max_line": 4})) as server:
        assert exchange(server, b"a\nbb\nlonger\nend") == b"1: a\n2: bb\n"  # a line over max_line: refused
    with serving(make(transport, "discard", short_tmp, loop)) as server:
        assert exchange(server, b"dropped") == b""


def test_a_bare_async_function_is_read_by_the_transports_kind() -> None:
    """An undecorated ``async def`` is a stream handler on TCP and a datagram handler on UDP."""
    async def shout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await reader.read(100)).upper())

    async def shout_datagram(payload: bytes, client_address: Any) -> bytes:
        return payload.upper()

    with serving(Server(TCP, shout, "asyncio")) as server:
        assert exchange(server, b"tcp") == b"TCP"
    with serving(Server(UDP, shout_datagram, "asyncio")) as server:
        assert exchange(server, b"udp") == b"UDP"


def test_a_datagram_handler_with_a_transport_sends_several_replies() -> None:
    """``async def handle(payload, client_address, transport)`` may ``sendto`` before it returns."""
    @aio.datagram_handler
    async def twice(payload: bytes, client_address: Any, transport: Any) -> bytes:
        transport.sendto(b"first " + payload, client_address)
        return b"second " + payload

    with serving(Server(UDP, twice, "asyncio")) as server, client(server) as sock:
        sock.send(b"hi")
        assert (sock.recv(100), sock.recv(100)) == (b"first hi", b"second hi")


def test_the_stream_handler_gets_asyncios_own_streams_and_the_peer() -> None:
    """The handler's reader and writer are asyncio's; ``peername`` is the client's address."""
    seen: list[Any] = []

    @aio.stream_handler
    async def who(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((type(reader), isinstance(writer, asyncio.StreamWriter), writer.get_extra_info("peername")))
        writer.write(b"%d" % len(await reader.read()))

    with serving(Server(TCP, who, "asyncio")) as server, client(server) as sock:
        sock.sendall(b"12345")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b"5"
        assert seen == [(asyncio.StreamReader, True, sock.getsockname())]


# ---- Assembly: the right kind of handler for the dispatcher -----------------------------

@pytest.mark.parametrize("dispatcher", ["inline", "thread", "pool", "fork"])
def test_an_async_handler_with_a_blocking_dispatcher_fails_at_assembly(dispatcher: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None: ...

    for handler in (handle, aio.stream_handler(handle)):
        with pytest.raises(ConfigError, match=rf"is async \(async def\): serve it with dispatcher 'asyncio'.*"
                                              rf"dispatcher '{dispatcher}' runs blocking handlers"):
            assemble(TCP, handler, dispatcher, registry=BUILTINS)


def test_a_blocking_handler_with_asyncio_fails_at_assembly_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="is a blocking handler, but dispatcher 'asyncio' runs async handlers: "
                                          r"write it as 'async def handle\(reader, writer\)'.*pool, thread or inline"):
        assemble(TCP, echo, "asyncio", registry=BUILTINS)


def test_prefork_answers_for_its_inner_dispatcher() -> None:
    """prefork with inner = 'asyncio' takes async handlers and refuses blocking ones, and the reverse."""
    async_inner = {"inner": "asyncio", "workers": 1}
    assemble(TCP, "echo", "prefork", dispatcher_options=async_inner, registry=BUILTINS).dispatcher.close()
    with pytest.raises(ConfigError, match="dispatcher 'prefork' runs async handlers"):
        assemble(TCP, echo, "prefork", dispatcher_options=async_inner, registry=BUILTINS)
    with pytest.raises(ConfigError, match="or prefork with inner = 'asyncio'"):
        assemble(TCP, aio.echo, "prefork", dispatcher_options={"workers": 1}, registry=BUILTINS)


def test_a_config_names_the_field_and_sockwork_check_agrees() -> None:
    config = load_config({"transport": TCP, "dispatcher": "asyncio", "handler": "sockwork.handlers:echo"}, BUILTINS)
    with pytest.raises(ConfigError, match=r"handler: handler 'sockwork.handlers:echo' is a blocking handler"):
        assemble_config(config, BUILTINS)
    config = load_config({"transport": TCP, "dispatcher": "asyncio", "handler": "lines"}, BUILTINS)
    parts = assemble_config(config, BUILTINS)
    assert isinstance(parts.handler, aio.AsyncHandler) and parts.handler.__qualname__ == "lines"
    parts.dispatcher.close()


def test_wrong_signatures_fail_at_assembly() -> None:
    async def one(reader: asyncio.StreamReader) -> None: ...

    with pytest.raises(ConfigError, match=r"cannot be called as handler\(reader, writer\)"):
        assemble(TCP, one, "asyncio", registry=BUILTINS)
    with pytest.raises(TypeError, match="needs an 'async def"):
        aio.stream_handler(echo)  # type: ignore[arg-type]


def test_loop_option_is_validated_and_a_missing_uvloop_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError,
                       match="dispatcher 'asyncio' option 'loop': must be 'asyncio' or 'uvloop', got 'trio'"):
        assemble(TCP, "echo", "asyncio", dispatcher_options={"loop": "trio"}, registry=BUILTINS)
    import sockwork.strategies.aio as strategy

    real = importlib.util.find_spec
    monkeypatch.setattr(strategy.importlib.util, "find_spec", lambda name: None if name == "uvloop" else real(name))
    with pytest.raises(ConfigError, match=r"uvloop is not installed: pip install 'sockwork\[uvloop\]'"):
        assemble(TCP, "echo", "asyncio", dispatcher_options={"loop": "uvloop"}, registry=BUILTINS)


def test_called_the_blocking_way_an_async_handler_says_which_dispatcher_to_use() -> None:
    with pytest.raises(TypeError, match="serve it with dispatcher 'asyncio'"):
        aio.echo(None, None, None)


# ---- Limits: timeouts are cancellations, resets are the client's doing ------------------

def test_idle_timeout_cancels_a_silent_client_counted_timed_out(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(TCP, "echo", "asyncio", limits=Limits(idle_timeout=0.2))
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        with client(server) as silent:
            assert silent.recv(10) == b""  # closed by the server after 0.2 s of silence
        assert exchange(server, b"next") == b"next"
    assert (server.stats.timed_out, server.stats.completed, server.stats.active) == (1, 1, 0)
    assert "idle for more than 0.2s" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_request_timeout_cancels_a_client_that_trickles(caplog: pytest.LogCaptureFixture) -> None:
    """One byte every 20 ms is never idle, but the whole connection may last 0.3 s at most."""
    server = Server(TCP, "echo", "asyncio", limits=Limits(idle_timeout=5, request_timeout=0.3))
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server), client(server) as slow:
        with pytest.raises(OSError):  # the loop ends when the server cuts the connection
            for _ in range(1000):
                slow.sendall(b".")
                if slow.recv(10) == b"":
                    raise ConnectionResetError("closed by the server")
                time.sleep(0.02)
        wait_until(lambda: server.stats.timed_out == 1)
    assert "ran longer than 0.3s" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_client_that_resets_or_leaves_early_is_disconnected_not_failed(caplog: pytest.LogCaptureFixture) -> None:
    @aio.stream_handler
    async def needs_ten(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(10)

    server = Server(TCP, needs_ten, "asyncio")
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        with client(server) as early:
            early.sendall(b"abc")  # and closes: IncompleteReadError in the handler
        with client(server) as rude:
            rude.sendall(b"abc")
            wait_until(lambda: server.stats.accepted == 2)
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        wait_until(lambda: server.stats.disconnected == 2)
    assert server.stats.failed == 0
    assert "went away mid-request" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_failing_handler_is_logged_with_its_traceback_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    @aio.stream_handler
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)
        raise KeyError("nope")

    server = Server(TCP, broken, "asyncio")
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        assert exchange(server, b"x") == b""
        assert exchange(server, b"y") == b""
    assert (server.stats.failed, server.stats.active) == (2, 0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and errors[0].exc_info and errors[0].exc_info[0] is KeyError


# ---- Caps: max_tasks and the server's max_connections ------------------------------------

def gated(gate: socket.socket) -> aio.AsyncHandler:
    @aio.stream_handler
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = await reader.read(10)
        writer.write(b"started " + name)
        own = gate.dup()
        try:
            own.setblocking(False)
            await asyncio.get_running_loop().sock_recv(own, 1)
        finally:
            own.close()
        writer.write(b"|done")

    return handle


def started(clients: list[socket.socket], wait: float) -> int:
    count = 0
    for sock in clients:
        sock.settimeout(wait)
        with contextlib.suppress(TimeoutError):
            count += sock.recv(100).startswith(b"started")
    return count


@pytest.mark.parametrize("cap", ["max_tasks", "max_connections"])
def test_at_the_cap_accepting_waits_and_a_finished_request_wakes_it(cap: str) -> None:
    """Two at once: the third and fourth clients wait in the backlog until handlers end."""
    gate_r, gate_w = socket.socketpair()
    kwargs: dict[str, Any] = ({"dispatcher_options": {"max_tasks": 2}} if cap == "max_tasks"
                              else {"limits": Limits(max_connections=2)})
    server = Server(TCP, gated(gate_r), "asyncio", **kwargs)
    server.loop.saturated_recheck = None  # only the wake-up may resume accepting
    try:
        with serving(server), ExitStack() as stack:
            clients = [stack.enter_context(client(server)) for _ in range(4)]
            for i, sock in enumerate(clients):
                sock.sendall(b"c%d" % i)
            assert started(clients[:2], 10) == 2
            assert started(clients[2:], 0.3) == 0  # not accepted: the cap holds
            gate_w.sendall(b"xx")
            assert started(clients[2:], 10) == 2
            gate_w.sendall(b"xx")
            for sock in clients:
                sock.settimeout(10)
                assert recv_until_eof(sock).endswith(b"|done")
        assert (server.stats.completed, server.stats.active) == (4, 0)
    finally:
        gate_r.close()
        gate_w.close()


# ---- Drain -----------------------------------------------------------------------------

def test_close_lets_handlers_finish_then_cancels_the_rest_at_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    """A handler that finishes within the drain deadline is answered; one that would not is cancelled."""
    release = threading.Event()

    @aio.stream_handler
    async def slow_or_stuck(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        what = await reader.read(10)
        writer.write(b"started")
        await writer.drain()
        if what == b"stuck":
            await asyncio.sleep(3600)
        while not release.is_set():
            await asyncio.sleep(0.01)
        writer.write(b" answered")

    server = Server(TCP, slow_or_stuck, "asyncio", drain_timeout=0.5)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server), \
            client(server) as slow, client(server) as stuck:
        slow.sendall(b"slow")
        stuck.sendall(b"stuck")
        assert slow.recv(7) == b"started" and stuck.recv(7) == b"started"
        closer = threading.Thread(target=server.close)
        closer.start()
        release.set()
        closer.join(10)
        assert recv_until_eof(slow) == b" answered"
        assert recv_until_eof(stuck) == b""
    assert (server.stats.completed, server.stats.failed, server.stats.active) == (1, 1, 0)
    assert "cancelled at the drain deadline" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---- Inside the supervisor -----------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="prefork needs pidfd_open")
@pytest.mark.parametrize("loop", LOOPS)
def test_prefork_with_asyncio_inside_uses_every_worker(loop: str) -> None:
    """Each worker runs its own event loop; between them, every worker serves."""
    @aio.stream_handler
    async def pid(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)
        writer.write(b"%d" % os.getpid())

    options = {"workers": 3, "inner": "asyncio", "inner_options": {"loop": loop}}
    server = Server(TCP, pid, "prefork", dispatcher_options=options)
    with serving(server):
        workers = server.dispatcher.worker_pids  # type: ignore[attr-defined]
        seen: set[int] = set()
        for _ in range(1000):  # bounded: the kernel spreads the accepts over the workers
            seen.add(int(exchange(server, b"who")))
            if seen == workers:
                break
        assert seen == workers
    assert server.stats.active == 0


# ---- The CLI: no code, and SIGTERM drains ------------------------------------------------------

def test_sockwork_serve_dispatcher_asyncio_drains_on_sigterm() -> None:
    """``sockwork serve --dispatcher asyncio``: a request in flight at SIGTERM is answered, then exit 0."""
    process = subprocess.Popen([sys.executable, "-m", "sockwork", "serve", "--dispatcher", "asyncio", "--handler",
                                "lines", "--transport", "tcp://127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"tcp://127\.0\.0\.1:(\d+) with dispatcher 'asyncio'", line)
        assert found, line
        with socket.create_connection(("127.0.0.1", int(found.group(1))), timeout=10) as conn:
            conn.sendall(b"before\n")
            assert conn.recv(100) == b"1: before\n"
            process.send_signal(signal.SIGTERM)
            assert "draining 1 request(s)" in process.stderr.readline()  # type: ignore[union-attr]
            conn.sendall(b"during\n")  # in flight: still answered while the server drains
            assert conn.recv(100) == b"2: during\n"
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


def test_tls_with_the_asyncio_dispatcher_is_refused_at_assembly(tmp_path: Path) -> None:
    """The TLS session lives in the socket object the loop's handshake made; asyncio takes the bare
    descriptor over, so the pair would answer a TLS client in plaintext: refused, naming the way out."""
    from sockwork import ConfigError
    from sockwork.assembly import assemble
    from sockwork.transports.tls import _loopback

    with pytest.raises(ConfigError, match=r"TLS handshake keeps its session in the socket object.*pool, thread"):
        assemble("tls", "echo", "asyncio", transport_options=_loopback(tmp_path))


@pytest.mark.parametrize("loop", LOOPS)
def test_a_handler_that_blocks_the_event_loop_is_named_in_a_warning(loop: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A blocking call in an async handler holds every other client: one WARNING names the handler and says how
    long; a second one within 5 s is held back (rate limited); off with ``warn_blocked = false``."""
    async def sleepy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        time.sleep(1.0)  # the mistake: a blocking call on the event loop
        writer.write(await reader.read(100))

    server = Server(TCP, aio.stream_handler(sleepy), "asyncio", dispatcher_options={"loop": loop})  # by default
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        assert exchange(server, b"one") == b"one"
        assert exchange(server, b"two") == b"two"
    held = [r for r in caplog.records if "held the event loop" in r.getMessage()]
    assert len(held) == 1, caplog.text
    assert held[0].levelno == logging.WARNING
    assert re.search(r"handler 'test_a_handler_that_blocks_the_event_loop_is_named_in_a_warning.<locals>.sleepy' "
                     r"held the event loop for at least \d+\.\d\d s \(warn_blocked = 0\.5 s\)", held[0].getMessage())
    caplog.clear()
    quiet = Server(TCP, aio.stream_handler(sleepy), "asyncio", dispatcher_options={"loop": loop, "warn_blocked": False})
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(quiet):
        assert exchange(quiet, b"three") == b"three"
    assert "held the event loop" not in caplog.text


def test_the_access_log_and_on_error_cover_async_handlers(caplog: pytest.LogCaptureFixture) -> None:
    """access_log gives one line per request under asyncio too (streams and datagrams), and a Server's
    on_error gets an async handler's exception instead of the log, as for blocking handlers."""
    async def picky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        if data == b"bad":
            raise ValueError("bad request")
        writer.write(data)

    errors: list[tuple[Any, Any, Exception]] = []
    server = Server(TCP, aio.stream_handler(picky), "asyncio", access_log="text",
                    on_error=lambda request, address, exc: errors.append((request, address, exc)))
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        assert exchange(server, b"good") == b"good"
        assert exchange(server, b"bad") == b""
        wait_until(lambda: server.stats.active == 0)
    lines = [r.getMessage() for r in caplog.records if r.name == "sockwork.access"]
    assert len(lines) == 2, caplog.text
    assert re.fullmatch(r"127\.0\.0\.1:\d+ completed \d+\.\d{3} ms in=4 out=\d+", lines[0]), lines
    assert re.fullmatch(r"127\.0\.0\.1:\d+ failed \d+\.\d{3} ms in=3 out=\d+", lines[1]), lines
    [(request, address, exc)] = errors
    assert isinstance(exc, ValueError) and address[0] == "127.0.0.1" and isinstance(request, socket.socket)
    assert "error while serving" not in caplog.text  # on_error took it
    assert (server.stats.completed, server.stats.failed) == (1, 1)

    async def shout(payload: bytes, client_address: Any) -> bytes:
        return payload.upper()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(Server(UDP, aio.datagram_handler(shout), "asyncio",
                                                                          access_log="text")) as udp:
        assert exchange(udp, b"hi") == b"HI"
        wait_until(lambda: udp.stats.completed == 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "sockwork.access"]
    assert len(lines) == 1 and re.fullmatch(r"127\.0\.0\.1:\d+ completed \d+\.\d{3} ms in=2 out=-", lines[0])
