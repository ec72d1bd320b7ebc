"""The accept loop: shutdown, backpressure, failed accepts, hooks, error reports."""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from sockwork import Registry, Server, hookimpl, make_plugin_manager
from sockwork.handlers import echo
from sockwork.testing import client, exchange, serving

pytestmark = pytest.mark.timeout(20)

TCP = "tcp://127.0.0.1:0"


def count_accepts(server: Server) -> list[int]:
    """Wrap the transport's accept; returns [attempts, requests accepted], kept current."""
    counts = [0, 0]
    real_accept = server.transport.accept

    def accept() -> Any:
        counts[0] += 1
        accepted = real_accept()
        if accepted is not None:
            counts[1] += 1
        return accepted

    server.transport.accept = accept  # type: ignore[method-assign]
    return counts


def test_shutdown_requested_before_serving_is_not_lost() -> None:
    """shutdown() before serve_forever() makes it return at once (socketserver semantics)."""
    with Server(transport=TCP, handler=echo) as server:
        server.shutdown()
        server.serve_forever()  # returns immediately instead of hanging


def test_shutdown_from_an_inline_handler_does_not_deadlock() -> None:
    """A handler running in the loop's own thread may call shutdown()."""
    def stop(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        server.shutdown()

    with Server(transport=TCP, dispatcher="inline", handler=stop) as server, client(server):
        server.serve_forever()  # returns after the one request


def test_misuse_of_the_loop_is_refused() -> None:
    """Serving twice at once, serving after close, closing from the loop: clear errors."""
    failures: list[BaseException] = []

    def close_from_handler(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        try:
            server.close()
        except RuntimeError as exc:
            failures.append(exc)
        server.shutdown()

    server = Server(transport=TCP, dispatcher="inline", handler=close_from_handler)
    with serving(server), pytest.raises(RuntimeError, match="already serving"):
        server.serve_forever()
    with pytest.raises(RuntimeError, match="closed"):
        server.serve_forever()

    server = Server(transport=TCP, dispatcher="inline", handler=close_from_handler)
    with client(server):
        server.serve_forever()
    server.close()
    assert "call shutdown() instead" in str(failures[0])


def test_handler_error_is_logged_with_the_client_address(caplog: pytest.LogCaptureFixture) -> None:
    """The sockwork logger gets the traceback and the client's address."""
    def fail(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        raise ValueError("bad request line")

    with (caplog.at_level(logging.ERROR, logger="sockwork"),
          serving(Server(transport=TCP, dispatcher="thread", handler=fail)) as server, client(server) as sock):
        peer = sock.getsockname()
        assert sock.recv(10) == b""
    [record] = [r for r in caplog.records if r.name == "sockwork"]
    assert record.getMessage() == f"error while serving {peer}"
    assert record.exc_info and "bad request line" in str(record.exc_info[1])


def test_lifecycle_hooks_and_no_unimplemented_hook_per_request() -> None:
    """started/stopped fire once; serving requests calls no hook nobody implements."""
    calls: list[str] = []

    class Lifecycle:
        @hookimpl
        def sockwork_server_started(self, server: Server) -> None:
            calls.append("started")

        @hookimpl
        def sockwork_server_stopped(self, server: Server) -> None:
            calls.append("stopped")

    pm = make_plugin_manager(entry_points=False)
    pm.register(Lifecycle())
    registry = Registry(pm)
    pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append(f"call {name}"), lambda *a: None)

    def fail_sometimes(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        if request.recv(10) == b"fail":
            raise RuntimeError("expected in this test")
        request.sendall(b"ok")

    logging.getLogger("sockwork").disabled = True  # the failure below is expected
    try:
        with serving(Server(transport=TCP, handler=fail_sometimes, registry=registry)) as server:
            for payload in (b"a", b"fail", b"b"):
                exchange(server, payload)
    finally:
        logging.getLogger("sockwork").disabled = False
    assert calls == ["call sockwork_server_started", "started", "call sockwork_server_stopped", "stopped"]


@pytest.mark.parametrize(
    ("dispatcher", "options", "capacity"),
    [
        ("pool", {"workers": 1, "queue_size": 1}, 2),
        ("thread", {"max_threads": 1}, 1),
        pytest.param("fork", {"max_children": 1}, 1,
                     marks=pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")),
    ],
)
def test_saturated_dispatcher_stops_accepting_until_capacity_frees(
    dispatcher: str, options: dict, capacity: int
) -> None:
    """At its limit a dispatcher makes the loop stop accepting; clients wait in the backlog."""
    gate_r, gate_w = socket.socketpair()

    def hold(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        gate_r.recv(1)
        request.sendall(b"served")

    try:
        server = Server(transport=TCP, dispatcher=dispatcher, dispatcher_options=options, handler=hold)
        counts = count_accepts(server)
        with serving(server), ExitStack() as stack:
            clients = [stack.enter_context(client(server)) for _ in range(4)]
            deadline = time.monotonic() + 10
            while counts[1] < capacity and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # had the loop kept accepting, it would have by now
            assert counts[1] == capacity
            gate_w.sendall(b"x" * 4)
            assert [sock.recv(10) for sock in clients] == [b"served"] * 4
            assert counts[1] == 4
    finally:
        gate_r.close()
        gate_w.close()


@contextmanager
def descriptors_exhausted() -> Iterator[Callable[[], None]]:
    """Take every free descriptor number; yields a function that gives them back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []

    def release() -> None:
        while fillers:
            os.close(fillers.pop())
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
    try:
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        yield release
    finally:
        release()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_NOFILE")
def test_out_of_descriptors_backs_off_logs_once_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    """EMFILE on accept: the loop pauses (no spinning), logs once, and serves once fds free up."""
    server = Server(transport=TCP, dispatcher="inline", handler=echo)
    counts = count_accepts(server)
    reply: list[bytes] = []
    with caplog.at_level(logging.ERROR, logger="sockwork"), serving(server):
        sock = socket.socket()  # made before exhaustion; connecting needs no new fd
        try:
            with descriptors_exhausted() as release:
                sock.connect(server.address)
                time.sleep(0.5)
                attempts_while_exhausted = counts[0]
                release()
            sock.sendall(b"after recovery")
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            reply.append(sock.recv(100))
        finally:
            sock.close()
    assert reply == [b"after recovery"]
    # Backoff doubles from 10 ms: about 6 attempts in 0.5 s; spinning would be thousands.
    assert 1 <= attempts_while_exhausted <= 20
    messages = [r.getMessage() for r in caplog.records if r.name == "sockwork"]
    assert len(messages) == 1 and "out of resources accepting" in messages[0], messages
    assert "Too many open files" in messages[0]


def test_dispatcher_refusing_work_closes_the_request(caplog: pytest.LogCaptureFixture) -> None:
    """If submit() fails, the accepted client is closed (not left hanging) and it is logged."""
    # idle_linger=0: a thread per request, handed over by the loop through submit() (with lingering
    # threads, turns are taken from the poller by the threads themselves: no submit to fail).
    server = Server(transport=TCP, dispatcher="thread", dispatcher_options={"idle_linger": 0}, handler=echo)
    real_submit = server.dispatcher.submit
    failures = [RuntimeError("can't start new thread")]

    def submit(request: Any, client_address: Any) -> None:
        if failures:
            raise failures.pop()
        real_submit(request, client_address)

    server.dispatcher.submit = submit  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="sockwork"), serving(server):
        with client(server) as sock:
            sock.sendall(b"lost")  # echo waits for the client: submit() is called once it has spoken
            assert sock.recv(10) == b""  # closed by the server
        assert exchange(server, b"next") == b"next"
    [line] = [r.getMessage() for r in caplog.records]  # said once, not also as a handler's error
    assert line.startswith("accept/dispatch failed on ") and "can't start new thread; pausing accept" in line
    assert server.stats.failed == 1 and server.stats.completed == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_forced_drain_kills_stuck_children_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """With fork, what runs after the drain deadline is killed, and the log says what happened."""
    def wait_for_client(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        request.sendall(b"holding")
        request.recv(1)  # the client never sends

    server = Server(transport=TCP, dispatcher="fork", handler=wait_for_client, drain_timeout=0.1)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server), client(server) as sock:
        assert sock.recv(10) == b"holding"
        server.close()
        assert sock.recv(10) == b""  # the child is gone, so is its connection
    text = caplog.text
    assert "the 0.1 s drain deadline has passed with 1 request(s) still running; ending them" in text
    assert "killing 1 child process(es) still running after the drain" in text
    assert "0 request(s)" not in text


def test_forced_drain_ends_stuck_connections_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """A handler whose connection we shut down at the deadline is not reported as an error."""
    def keep_writing(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        request.sendall(b"start")
        while True:
            request.sendall(b"x" * 65536)  # the client does not read: blocks, then breaks

    server = Server(transport=TCP, dispatcher="thread", handler=keep_writing, drain_timeout=0.1)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server), client(server) as sock:
        assert sock.recv(5) == b"start"
        server.close()
    assert "still running; shut down their 1 connection(s)" in caplog.text
    assert "ended at the drain deadline" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_client_that_resets_is_logged_as_info_and_counted_not_as_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ECONNRESET/EPIPE from a client that went away: one INFO line, counted as disconnected."""
    import struct
    import threading

    gone = threading.Event()

    def write_after_the_client_left(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        request.recv(1)
        gone.wait(10)
        for _ in range(100):  # the first send may still be accepted by the kernel
            request.sendall(b"x" * 65536)

    server = Server(transport=TCP, dispatcher="thread", handler=write_after_the_client_left)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        with client(server) as sock:
            sock.sendall(b"!")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        gone.set()
        deadline = time.monotonic() + 10
        while server.stats.disconnected == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert server.stats.disconnected == 1 and server.stats.failed == 0
    lines = [r for r in caplog.records if "went away mid-request" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and lines[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_failure_in_a_forked_child_reaches_the_hook_in_the_parent() -> None:
    """With fork, sockwork_request_failed runs in the server's process and names the child's exception."""
    from sockwork import FailedElsewhere

    seen: list[tuple[int, BaseException]] = []

    class Recorder:
        @hookimpl
        def sockwork_request_failed(self, exc: BaseException) -> None:
            seen.append((os.getpid(), exc))

    def fail(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        raise ValueError("C:\\new\nuser\twith a tab")  # a backslash, a newline, a tab: all arrive

    pm = make_plugin_manager(entry_points=False)
    pm.register(Recorder())
    server = Server(transport=TCP, dispatcher="fork", handler=fail, registry=Registry(pm))
    with serving(server), client(server) as sock:
        sock.sendall(b"x")
        assert sock.recv(10) == b""
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    [(pid, exc)] = seen
    assert pid == os.getpid() and isinstance(exc, FailedElsewhere)
    assert exc.type_name == "ValueError" and exc.message == "C:\\new\nuser\twith a tab" and exc.pid != pid
    assert server.stats.failed == 1


def test_requests_never_started_at_the_drain_deadline_are_logged_and_closed_unanswered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A forced drain says how many queued requests never started, and does not run them afterwards."""
    started: list[object] = []

    def wait_for_client(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        started.append(client_address)
        request.recv(1)  # the clients never send

    server = Server(transport=TCP, dispatcher="pool", dispatcher_options={"workers": 1, "queue_size": 8},
                    handler=wait_for_client, drain_timeout=0.2)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server), ExitStack() as stack:
        clients = [stack.enter_context(client(server)) for _ in range(4)]
        deadline = time.monotonic() + 10
        while (not started or server.stats.accepted < 4) and time.monotonic() < deadline:
            time.sleep(0.01)
        server.close()
        for sock in clients:
            assert sock.recv(10) == b""  # closed, unanswered
    assert len(started) == 1  # the three queued ones never ran, not even after the deadline
    assert "3 accepted request(s) never started before the drain deadline; closed them unanswered" in caplog.text
    assert server.stats.failed == 3 and server.stats.active == 0  # the running one returned on its own


def test_the_access_log_has_one_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    """access_log="json": client, duration, bytes in/out (as TCP counted them) and outcome, one line each."""
    import json

    server = Server(transport=TCP, dispatcher="thread", handler=echo, access_log="json")
    with caplog.at_level(logging.INFO, logger="sockwork.access"), serving(server):
        assert exchange(server, b"hello") == b"hello"
        deadline = time.monotonic() + 10
        while not [r for r in caplog.records if r.name == "sockwork.access"] and time.monotonic() < deadline:
            time.sleep(0.01)
    [record] = [r for r in caplog.records if r.name == "sockwork.access"]
    line = json.loads(record.getMessage())
    assert re.fullmatch(r"127\.0\.0\.1:\d+", line["client"]) and line["outcome"] == "completed"
    assert line["bytes_in"] == 5 and line["bytes_out"] in (0, 5) and line["duration_ms"] >= 0
    with pytest.raises(ValueError, match=r"'access_log' must be one of text, json, or None .*, got 'xml'"):
        Server(transport=TCP, handler=echo, access_log="xml")


def test_a_reader_removed_by_another_callback_in_the_same_round_is_not_called() -> None:
    """Two watched descriptors ready at once, each callback removing the other: only one runs."""
    called: list[str] = []
    pairs = [socket.socketpair(), socket.socketpair()]

    class Watching:
        concurrency = 1

        def start(self, host: Any) -> None:
            def make(me: int) -> Callable[[], None]:
                def callback() -> None:
                    called.append(f"reader {me}")
                    other = pairs[1 - me][0]
                    host.remove_reader(other.fileno())
                    host.remove_reader(pairs[me][0].fileno())
                return callback

            for index, (reader, writer) in enumerate(pairs):
                writer.send(b"!")  # both readable before the round starts
                host.add_reader(reader.fileno(), make(index))

        def submit(self, request: Any, client_address: Any) -> None: ...
        def saturated(self) -> bool: return False
        def drain(self, timeout: float | None) -> bool: return True
        def close(self) -> None: ...

    try:
        with Server(transport=TCP, dispatcher=Watching(), handler=echo) as server:
            server.handle_request(0.2)
    finally:
        for reader, writer in pairs:
            reader.close()
            writer.close()
    assert len(called) == 1, called
