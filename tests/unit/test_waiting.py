"""Connections that wait in the loop: silent clients, keep-alive turns, message handlers, stages, limits."""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from typing import Any

import pytest

from sockwork import (
    KEEP_ALIVE,
    Connection,
    ConnectionStage,
    Limits,
    Server,
    StageFailed,
    message_handler,
    stream_handler,
)
from sockwork.messages import LengthPrefixed, Lines
from sockwork.testing import client, eventually, exchange, serving

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("sockwork_no_leaks")]

TCP = "tcp://127.0.0.1:0"
SMALL = {
    "pool": {"workers": 2, "queue_size": 2},
    "thread": {"max_threads": 2},
    "fork": {"max_children": 2},
}


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


# ---- Silent clients cost no worker ------------------------------------------------------

@pytest.mark.parametrize("dispatcher", ["pool", "thread", "fork", "inline"])
def test_silent_clients_do_not_hold_workers(dispatcher: str) -> None:
    """Ten times as many silent connections as workers: a client that speaks is still answered."""
    server = Server(transport=TCP, dispatcher=dispatcher, dispatcher_options=SMALL.get(dispatcher), handler="echo")
    with serving(server), ExitStack() as stack:
        for _ in range(20):
            stack.enter_context(client(server))  # connect, say nothing
        assert eventually(lambda: server.stats.accepted == 20)
        for i in range(3):
            assert exchange(server, b"still here %d" % i) == b"still here %d" % i
        assert eventually(lambda: server.stats.active == 20)  # the silent ones, waiting in the loop


def test_idle_connections_in_the_loop_are_closed_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(transport=TCP, dispatcher="pool", handler="echo", limits=Limits(idle_timeout=0.2))
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server), client(server) as silent:
        assert silent.recv(10) == b""  # closed by the server
        assert eventually(lambda: server.stats.timed_out == 1)
        with client(server) as talker:  # between keep-alive turns too: served, then idle
            talker.sendall(b"one")
            assert talker.recv(10) == b"one"
            talker.sendall(b"two")
            assert talker.recv(10) == b"two"
            assert talker.recv(10) == b""
        # Issue 23 H: its requests were served: completed (not timed_out), closed idle, two turns.
        assert eventually(lambda: server.stats.completed == 1)
        stats = server.stats
        assert (stats.timed_out, stats.idle_closed, stats.turns) == (1, 1, 2)
    assert "idle for more than 0.2s" in caplog.text


def test_max_waiting_stops_accepting_at_the_cap() -> None:
    server = Server(transport=TCP, dispatcher="pool", handler="echo", limits=Limits(max_waiting=3))
    with serving(server), ExitStack() as stack:
        silent = [stack.enter_context(client(server)) for _ in range(3)]
        assert eventually(lambda: server.stats.accepted == 3)
        late = stack.enter_context(client(server))  # in the kernel's backlog, not accepted
        late.sendall(b"late")
        time.sleep(0.2)
        assert server.stats.accepted == 3
        silent[0].close()  # a place frees up: the late client is accepted and served
        assert late.recv(10) == b"late"


# ---- Keep-alive turns -----------------------------------------------------------------------

@pytest.mark.parametrize("dispatcher", ["pool", "thread", "fork", "inline", "prefork"])
def test_keep_alive_turns_keep_the_connection_and_its_state(dispatcher: str) -> None:
    @stream_handler
    def count(conn: Connection) -> object:
        line = conn.readline()
        if not line:
            return None
        conn.state["n"] = conn.state.get("n", 0) + 1
        conn.write(b"%d %s" % (conn.state["n"], line))
        return KEEP_ALIVE

    options = {"workers": 1, "inner": "pool"} if dispatcher == "prefork" else SMALL.get(dispatcher)
    server = Server(transport=TCP, dispatcher=dispatcher, dispatcher_options=options, handler=count)
    with serving(server), client(server) as sock:
        for i in range(1, 4):
            sock.sendall(b"line\n")
            assert recv_exactly(sock, 7) == b"%d line\n" % i
        sock.sendall(b"a\nb\n")  # pipelined: the second is already buffered after the first turn
        assert recv_exactly(sock, 8) == b"4 a\n5 b\n"


def test_server_speaks_first_handlers_are_dispatched_at_accept() -> None:
    @stream_handler(speaks_first="server")
    def greet(conn: Connection) -> None:
        conn.write(b"220 hello\n")
        conn.write(b"echo " + conn.readline())

    def classic(request: Any, client_address: Any, server: Any) -> None:  # no declaration: dispatched at accept
        request.sendall(b"welcome\n")

    with serving(Server(transport=TCP, dispatcher="pool", handler=greet)) as server, client(server) as sock:
        assert sock.recv(100) == b"220 hello\n"
        sock.sendall(b"x\n")
        assert sock.recv(100) == b"echo x\n"
    with serving(Server(transport=TCP, dispatcher="pool", handler=classic)) as server, client(server) as sock:
        assert sock.recv(100) == b"welcome\n"


def test_shutdown_closes_idle_keep_alive_connections_and_serves_what_was_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server(transport=TCP, dispatcher="pool", handler="echo")
    idle = socket.create_connection(server.address, timeout=10)
    with idle:
        with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
            idle.sendall(b"hi")
            assert idle.recv(10) == b"hi"
        assert idle.recv(10) == b""
    assert server.stats.active == 0 and server.stats.completed == 1
    assert "closed 1 idle connection(s) at shutdown" in caplog.text


# ---- Message handlers --------------------------------------------------------------------

@message_handler
def shout(message: bytes, conn: Connection) -> bytes | None:
    if message == b"quiet":
        return None
    if message == b"boom":
        raise RuntimeError("asked to fail")
    return message.upper()


@pytest.mark.parametrize("dispatcher", ["pool", "thread", "fork", "inline", "prefork"])
def test_message_handler_answers_each_line_in_order(dispatcher: str) -> None:
    options = {"workers": 1} if dispatcher == "prefork" else SMALL.get(dispatcher)
    server = Server(transport=TCP, dispatcher=dispatcher, dispatcher_options=options, handler=shout)
    with serving(server), client(server) as sock:
        sock.sendall(b"one\r\ntwo\nquiet\nth")
        sock.sendall(b"ree\n")
        assert recv_exactly(sock, 14) == b"ONE\nTWO\nTHREE\n"
        sock.sendall(b"last")  # no newline: still a line at the end of the stream
        sock.shutdown(socket.SHUT_WR)
        assert recv_exactly(sock, 10) == b"LAST\n"
        assert sock.recv(10) == b""


def test_message_handler_on_datagrams_answers_each_datagram() -> None:
    with serving(Server(transport="udp://127.0.0.1:0", dispatcher="pool", handler=shout)) as server:
        assert exchange(server, b"ping") == b"PING"


def test_length_prefixed_messages() -> None:
    @message_handler(framing="length", max_message=10)
    def reverse(message: bytes, conn: Connection) -> bytes:
        return message[::-1]

    server = Server(transport=TCP, dispatcher="pool", handler=reverse)
    with serving(server), client(server) as sock:
        sock.sendall(struct.pack("!I", 3) + b"abc" + struct.pack("!I", 2) + b"xy")
        assert recv_exactly(sock, 13) == struct.pack("!I", 3) + b"cba" + struct.pack("!I", 2) + b"yx"
        sock.sendall(struct.pack("!I", 11))  # over max_message: refused at once, before its bytes come
        assert sock.recv(10) == b""
        assert eventually(lambda: server.stats.refused == 1)


def test_oversized_line_is_refused_after_the_lines_before_it() -> None:
    server = Server(transport=TCP, dispatcher="pool", handler="lines", handler_options={"max_line": 8})
    with serving(server), client(server) as sock:
        sock.sendall(b"short\n" + b"x" * 100)
        assert recv_exactly(sock, 100) == b"1: short\n"
        assert eventually(lambda: server.stats.refused == 1)


def test_trickling_message_is_cut_at_message_timeout_and_costs_no_worker(caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(message_timeout=0.3)
    server = Server(transport=TCP, dispatcher="pool", dispatcher_options={"workers": 1, "queue_size": 1},
                    handler="lines", limits=limits)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server), client(server) as slow:
        slow.sendall(b"a")  # a line begins...
        assert exchange(server, b"meanwhile\n") == b"1: meanwhile\n"  # the only worker is free
        started = time.monotonic()
        while time.monotonic() - started < 10:  # a byte every 50 ms: never idle, never a whole line
            try:
                slow.sendall(b"b")
            except OSError:
                break
            if _readable(slow) and slow.recv(10) == b"":
                break
            time.sleep(0.05)
        assert eventually(lambda: server.stats.timed_out == 1)
    assert "not complete 0.3s after its first byte" in caplog.text


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_failing_message_handler_is_reported_and_others_are_served(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(transport=TCP, dispatcher="pool", handler=shout)
    with caplog.at_level(logging.ERROR, logger="sockwork"), serving(server):
        with client(server) as sock:
            sock.sendall(b"boom\n")
            assert sock.recv(10) == b""
        assert exchange(server, b"fine\n") == b"FINE\n"
    assert "asked to fail" in caplog.text and server.stats.failed == 1


def test_a_client_that_does_not_read_is_not_read_either() -> None:
    """Replies pile up to the high-water mark; then the loop stops reading that client (bounded memory)."""
    @message_handler
    def big(message: bytes, conn: Connection) -> bytes:
        return b"y" * 65536

    server = Server(transport=TCP, dispatcher="pool", handler=big)
    with serving(server), client(server) as greedy:
        greedy.setblocking(False)
        sent = 0
        with pytest.raises(BlockingIOError):
            while sent < 50_000_000:
                sent += greedy.send(b"q\n" * 4096)  # never reads a reply
        assert sent < 50_000_000  # the server stopped taking its requests
        assert exchange(server, b"other\n") == b"y" * 65536 + b"\n"  # and serves everyone else


def test_framings_split_and_frame() -> None:
    lines = Lines(max_message=5)
    buffer = bytearray(b"ab\r\ncd\nef")
    assert lines.split(buffer) == [b"ab", b"cd"] and buffer == b"ef"
    assert lines.finish(buffer) == [b"ef"] and not buffer
    with pytest.raises(ValueError, match="longer than 5 bytes"):
        lines.split(bytearray(b"abcdefgh"))
    length = LengthPrefixed(max_message=4)
    assert length.frame(b"ab") == b"\0\0\0\2ab"
    buffer = bytearray(b"\0\0\0\2ab\0\0\0\3c")
    assert length.split(buffer) == [b"ab"] and buffer == b"\0\0\0\3c"
    with pytest.raises(ValueError, match="middle of a message"):
        length.finish(buffer)
    with pytest.raises(ValueError, match="unknown framing"):
        message_handler(framing="json")


# ---- Connection stages ------------------------------------------------------------------------

class Hello:
    """A toy stage: the client must first send b"HELO" (peeked, then consumed exactly)."""

    name = "HELO greeting"
    timeout = 0.3

    def advance(self, conn: Connection) -> str:
        head = conn.socket.recv(4, socket.MSG_PEEK)
        if not head:
            raise ConnectionResetError("closed before greeting")
        if not b"HELO".startswith(head):
            raise StageFailed(f"expected HELO, got {head!r}")
        if len(head) < 4:
            return "read"
        conn.socket.recv(4)
        conn.info["greeted"] = True
        return "done"


@pytest.fixture
def staged() -> Iterator[Server]:
    @stream_handler
    def report(conn: Connection) -> object:
        data = conn.recv()
        if not data:
            return None
        conn.write(b"%s %s" % (str(conn.info.get("greeted")).encode(), data))
        return KEEP_ALIVE

    from sockwork.assembly import assemble

    parts = assemble(TCP, report, "pool")
    assert isinstance(Hello(), ConnectionStage)
    parts.transport.stages = (Hello(),)  # type: ignore[attr-defined]
    server = Server(parts=parts)
    with serving(server):
        yield server


def test_stage_runs_before_the_handler(staged: Server) -> None:
    with client(staged) as sock:
        sock.sendall(b"HE")
        time.sleep(0.05)
        sock.sendall(b"LOdata")
        assert sock.recv(100) == b"True data"


def test_failed_stage_is_refused_at_info(staged: Server, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sockwork"), client(staged) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert sock.recv(100) == b""
        assert eventually(lambda: staged.stats.refused == 1)
    [record] = [r for r in caplog.records if "refused" in r.getMessage()]
    assert record.levelno == logging.INFO and "HELO greeting failed: expected HELO" in record.getMessage()


class CountingHello(Hello):
    """Hello, counting its calls, with a longer timeout."""

    timeout = 5.0
    calls = 0

    def advance(self, conn: Connection) -> str:
        CountingHello.calls += 1
        return super().advance(conn)


def test_a_stage_that_peeks_at_a_partial_greeting_is_not_called_again_until_more_bytes_come() -> None:
    """Issue 22: a stage that peeked at 2 of 4 bytes and asked to "read" again is called only when
    more bytes arrive (no busy loop while they sit unread: a one-packet denial of service)."""
    from sockwork.assembly import assemble

    CountingHello.calls = 0
    parts = assemble(TCP, "echo", "pool")
    parts.transport.stages = (CountingHello(),)  # type: ignore[attr-defined]
    server = Server(parts=parts)
    with serving(server), client(server) as sock:
        sock.sendall(b"HE")
        time.sleep(0.5)  # the loop would call it about 100,000 times in this half second if it spun
        assert CountingHello.calls <= 3
        sock.sendall(b"LOdata")
        assert sock.recv(100) == b"data"


def test_a_client_that_leaves_mid_stage_with_bytes_unread_is_closed_at_once() -> None:
    """A client that sent part of a greeting and closed: disconnected at once, not at the stage's timeout."""
    from sockwork.assembly import assemble

    parts = assemble(TCP, "echo", "pool")
    parts.transport.stages = (CountingHello(),)  # type: ignore[attr-defined]
    server = Server(parts=parts)
    with serving(server):
        with client(server) as sock:
            sock.sendall(b"HE")
            time.sleep(0.1)
        assert eventually(lambda: server.stats.disconnected == 1, timeout=2)


def test_stalled_stage_times_out(staged: Server) -> None:
    with client(staged) as sock:
        sock.sendall(b"HE")
        assert sock.recv(100) == b""
        assert eventually(lambda: staged.stats.timed_out == 1)
    assert staged.stats.failed == 0


# ---- Many clients, few workers -------------------------------------------------------------------

def test_hundreds_of_silent_and_trickling_clients_do_not_delay_others() -> None:
    """The issue's attack in small: silent and trickling connections, two workers, normal clients served."""
    server = Server(transport=TCP, dispatcher="pool", dispatcher_options={"workers": 2, "queue_size": 2},
                    handler="lines")
    stop = threading.Event()
    with serving(server), ExitStack() as stack:
        silent = [stack.enter_context(client(server)) for _ in range(200)]
        tricklers = [stack.enter_context(client(server)) for _ in range(20)]

        def trickle() -> None:
            while not stop.wait(0.05):
                for sock in tricklers:
                    with suppress(OSError):  # cut by message_timeout: that is the point
                        sock.send(b"z")

        thread = threading.Thread(target=trickle)
        thread.start()
        try:
            for i in range(20):
                assert exchange(server, b"normal %d\n" % i) == b"1: normal %d\n" % i
        finally:
            stop.set()
            thread.join()
        assert len(silent) == 200


# ---- Found by review: each once broke the loop --------------------------------------------------

def exchange_from_four_threads(server: Server, each: int) -> None:
    """Four client threads, ``each`` connections apiece, one exchange per connection, all answered."""
    errors: list[BaseException] = []

    def clients() -> None:
        try:
            for i in range(each):
                assert exchange(server, b"hi %d" % i) == b"hi %d" % i
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=clients) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_handler_that_closes_its_own_socket_does_not_break_the_loop() -> None:
    @stream_handler
    def hello(conn: Connection) -> None:
        with conn.socket:  # closes it: its descriptor number is free while the loop still maps it
            conn.write(conn.recv(100))

    server = Server(transport=TCP, dispatcher="pool", handler=hello)
    with serving(server):
        exchange_from_four_threads(server, 20)
        assert eventually(lambda: server.stats.completed == 80)
        assert eventually(lambda: server.loop.waiting is not None and server.loop.waiting.held == 0)


@pytest.mark.parametrize("dispatcher", ["pool", "fork", "prefork"])
def test_many_pipelined_messages_are_all_answered(dispatcher: str) -> None:
    """More than one turn's worth of messages in one packet: every one answered, in order (fork too)."""
    options = {"workers": 1} if dispatcher == "prefork" else SMALL.get(dispatcher)
    server = Server(transport=TCP, dispatcher=dispatcher, dispatcher_options=options, handler="lines")
    with serving(server), client(server) as sock:
        sock.sendall(b"".join(b"m%d\n" % i for i in range(100)))
        expected = b"".join(b"%d: m%d\n" % (i + 1, i) for i in range(100))
        assert recv_exactly(sock, len(expected)) == expected


def slow_echo(started: threading.Event, seconds: float) -> Any:
    """A keep-alive echo that takes ``seconds`` per request and sets ``started`` at the first."""
    @stream_handler
    def slow(conn: Connection) -> object:
        data = conn.recv()
        if not data:
            return None
        started.set()
        time.sleep(seconds)
        conn.write(data)
        return KEEP_ALIVE

    return slow


def test_drain_serves_queued_readable_connections() -> None:
    """A busy pool at shutdown: connections whose request arrived are answered, none closed as idle."""
    started = threading.Event()
    slow = slow_echo(started, 0.3)
    server = Server(transport=TCP, dispatcher="pool", dispatcher_options={"workers": 1, "queue_size": 1},
                    handler=slow, drain_timeout=10)
    socks = [socket.create_connection(server.address, timeout=10) for _ in range(4)]
    try:
        with serving(server):
            for i, sock in enumerate(socks):
                sock.sendall(b"req%d" % i)
            assert started.wait(10)  # the one worker is busy: the other requests wait for it
        assert [sock.recv(10) for sock in socks] == [b"req%d" % i for i in range(4)]
        assert server.stats.active == 0 and server.stats.failed == 0
    finally:
        for sock in socks:
            sock.close()


def test_a_request_that_arrived_before_the_drain_is_served() -> None:
    server = Server(transport=TCP, dispatcher="pool", handler="echo")
    with socket.create_connection(server.address, timeout=10) as sock:
        with serving(server):
            sock.sendall(b"one")
            assert sock.recv(10) == b"one"
            server.shutdown()  # the loop stops; the connection waits between requests
            sock.sendall(b"two")  # ...and its next request arrives before close() drains
            time.sleep(0.1)
        assert sock.recv(10) == b"two"


def test_message_timeout_runs_from_the_start_of_each_message() -> None:
    """A client streaming lines whose reads end mid-line is not cut: each message gets its own clock."""
    server = Server(transport=TCP, dispatcher="pool", handler="lines", limits=Limits(message_timeout=0.3))
    with serving(server), client(server) as sock:
        sock.sendall(b"a")
        for _ in range(12):  # 1.2 s in all, each message complete within 0.1 s
            time.sleep(0.1)
            sock.sendall(b"\nb")
        sock.sendall(b"\n")
        expected = b"1: a\n" + b"".join(b"%d: b\n" % n for n in range(2, 14))
        assert recv_exactly(sock, len(expected)) == expected
        assert server.stats.timed_out == 0


def test_a_failing_message_handler_leaves_no_record_behind() -> None:
    server = Server(transport=TCP, dispatcher="pool", handler=shout)
    with serving(server):
        for _ in range(10):
            with client(server) as sock:
                sock.sendall(b"boom\n")
                assert sock.recv(10) == b""
        assert eventually(lambda: server.stats.failed == 10)
        assert eventually(lambda: server.loop.waiting is not None and server.loop.waiting.held == 0)


# ---- Issue 23 B: a classic handler that waits for the client in the loop --------------------------

@pytest.mark.parametrize("dispatcher", ["pool", "thread"])
def test_classic_handler_waiting_for_the_client_times_out_instead_of_reading_a_partial_line(dispatcher: str) -> None:
    """A classic handler opted in with sockwork_speaks_first = "client": at idle_timeout its readline
    raises (counted timed_out); it never gets a partial line as if it were complete."""
    import socketserver

    lines: list[bytes] = []

    class LineHandler(socketserver.StreamRequestHandler):
        sockwork_speaks_first = "client"

        def handle(self) -> None:
            lines.append(self.rfile.readline())

    server = Server(transport=TCP, dispatcher=dispatcher, handler=LineHandler, limits=Limits(idle_timeout=0.3))
    with serving(server), client(server) as sock:
        sock.sendall(b"abc")  # no newline: the rest of the line never comes
        assert eventually(lambda: server.stats.timed_out + server.stats.completed == 1, timeout=5)
        assert lines == []
        assert server.stats.timed_out == 1


# ---- Issue 23 A: the drain deadline holds with inline and clients queued --------------------------

def test_inline_drain_stops_serving_queued_clients_at_the_deadline() -> None:
    """Ten clients with a request each and a 0.4 s handler on inline, drain_timeout 1 s: close() returns
    by the deadline (+ 1 s), not after serving all ten one by one; every client is answered or closed,
    and counted."""
    started = threading.Event()
    server = Server(transport=TCP, dispatcher="inline", handler=slow_echo(started, 0.4), drain_timeout=1.0)
    socks = [socket.create_connection(server.address, timeout=10) for _ in range(10)]
    try:
        with serving(server):
            for i, sock in enumerate(socks):
                sock.sendall(b"req%d" % i)
            assert started.wait(10)
            began = time.monotonic()
            server.shutdown()
            server.close()
            assert time.monotonic() - began < 1.0 + 1.0
        replies = [sock.recv(10) for sock in socks]
        answered = [r for r in replies if r]
        assert 1 <= len(answered) < 10
        stats = server.stats
        assert stats.active == 0
        assert stats.completed == len(answered) and stats.failed == 10 - len(answered)
    finally:
        for sock in socks:
            sock.close()


# ---- Issue 23 G: a full max_waiting makes room by closing the longest-idle keep-alive connection ----

def test_a_full_waiting_set_closes_the_longest_idle_keep_alive_connection_for_a_new_client() -> None:
    """max_waiting=3, all three served and idle between requests: a fourth client is served at once;
    the connection idle longest is closed (completed, idle_closed), the others stay."""
    server = Server(transport=TCP, dispatcher="pool", handler="echo", limits=Limits(max_waiting=3))
    with serving(server), ExitStack() as stack:
        kept = []
        for i in range(3):
            sock = stack.enter_context(client(server))
            sock.sendall(b"hi %d" % i)
            assert sock.recv(10) == b"hi %d" % i
            kept.append(sock)
            time.sleep(0.05)  # the first one is idle longest
        late = stack.enter_context(client(server))
        late.sendall(b"late")
        assert late.recv(10) == b"late"
        assert kept[0].recv(10) == b""  # closed to make room
        kept[1].sendall(b"still")
        assert kept[1].recv(10) == b"still"
        assert eventually(lambda: server.stats.idle_closed == 1)
        assert server.stats.timed_out == 0


def test_a_full_waiting_set_of_silent_clients_still_stops_accepting() -> None:
    """Clients that never sent a request are not closed to make room (only served, idle ones are)."""
    server = Server(transport=TCP, dispatcher="pool", handler="echo", limits=Limits(max_waiting=2))
    with serving(server), ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(client(server))
        assert eventually(lambda: server.stats.accepted == 2)
        late = stack.enter_context(client(server))
        late.sendall(b"late")
        time.sleep(0.3)
        assert server.stats.accepted == 2 and server.stats.idle_closed == 0


# ---- Issue 23 C: a message client that never reads its replies costs bounded memory ----------------

def test_a_message_client_that_never_reads_its_replies_costs_bounded_memory() -> None:
    """64 KiB of 2-byte lines, replies never read: the server stops reading it, holding at most
    REPLIES_HIGH_WATER (plus one turn) of replies and one small read of unanswered messages."""
    from sockwork._waiting import MESSAGE_READ, REPLIES_HIGH_WATER

    server = Server(transport=TCP, dispatcher="pool", handler="lines")
    with serving(server), client(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        sent, blocked_since, give_up = 0, None, time.monotonic() + 10
        while time.monotonic() < give_up:  # until the server has stopped reading for 0.3 s
            try:
                sent += sock.send(b"a\n" * 4096)
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 0.3:
                    break
                time.sleep(0.01)
        assert sent > 0
        waiting = server.loop.waiting
        assert waiting is not None
        [record] = list(waiting._held.values())
        held = len(record.replies) + sum(len(m) + 40 for m in record.messages) + len(record.conn._buffer)
        assert held <= REPLIES_HIGH_WATER + 32 * 64 + MESSAGE_READ * 21


# ---- The review of issue 18: what the loop ends under leader/followers, and what a drain cuts ----------

def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))



@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
@pytest.mark.parametrize("dispatcher", ["pool", "thread"])
def test_connections_the_loop_closes_give_their_descriptor_back_while_others_keep_timers(dispatcher: str) -> None:
    """Idle-closed connections (ended by the loop while workers poll) are closed within GRAVE_SECONDS, even
    while another connection keeps a deadline pending all along (their descriptors once stayed open)."""
    from sockwork._waiting import GRAVE_SECONDS

    server = Server(transport=TCP, dispatcher=dispatcher, handler="echo", limits=Limits(idle_timeout=0.3))
    with serving(server), client(server) as busy:
        busy.sendall(b"x")
        assert busy.recv(1) == b"x"  # accepted: its server side is open before the count
        before = _open_descriptors()
        idle = []
        for i in range(20):
            sock = socket.create_connection(server.address, timeout=10)
            sock.sendall(b"once %d" % i)
            assert sock.recv(10) == b"once %d" % i
            idle.append(sock)
        give_up = time.monotonic() + 0.3 + GRAVE_SECONDS + 3
        while time.monotonic() < give_up and server.stats.idle_closed < 20:
            busy.sendall(b"x")  # a deadline pending all the time
            assert busy.recv(1) == b"x"
            time.sleep(0.05)
        for sock in idle:
            assert sock.recv(10) == b""
            sock.close()
        while time.monotonic() < give_up and _open_descriptors() > before:
            busy.sendall(b"x")
            assert busy.recv(1) == b"x"
            time.sleep(0.05)
        assert _open_descriptors() <= before


@pytest.mark.parametrize("dispatcher", ["pool", "thread"])
def test_a_turn_running_at_the_drain_deadline_is_shut_down_not_counted_as_never_started(
        dispatcher: str, caplog: pytest.LogCaptureFixture) -> None:
    """A handler blocked reading its client at the drain deadline: its connection is shut down (it ends
    at once, no thread left behind), and it is not reported as accepted and never started."""
    started = threading.Event()

    @stream_handler
    def reads_twice(conn: Connection) -> object:
        if not conn.recv():
            return None
        started.set()
        conn.recv()  # the client sends nothing more
        return None

    server = Server(transport=TCP, dispatcher=dispatcher, handler=reads_twice, drain_timeout=0.2)
    with caplog.at_level(logging.INFO, logger="sockwork"), client(server) as sock:
        with serving(server):
            sock.sendall(b"first")
            assert started.wait(10)
        assert "never started" not in caplog.text
        stats = server.stats
        assert stats.active == 0 and stats.accepted == 1 and stats.finished == 1


@pytest.mark.parametrize("dispatcher", ["pool", "thread"])
def test_a_handler_that_closes_its_socket_and_says_keep_alive_hangs_no_one(dispatcher: str) -> None:
    """KEEP_ALIVE from a handler that closed its own socket: the record ends there; the next connection,
    which may have its number already, is served (it once found its armed entry overwritten)."""
    @stream_handler
    def closes(conn: Connection) -> object:
        data = conn.recv(100)
        conn.write(data)
        conn.socket.close()
        return KEEP_ALIVE

    server = Server(transport=TCP, dispatcher=dispatcher, handler=closes)
    with serving(server):
        exchange_from_four_threads(server, 50)
        assert eventually(lambda: server.stats.completed == 200)
        assert server.stats.failed == 0
