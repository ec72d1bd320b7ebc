"""Limits and counters: the connection cap, timeouts against slow clients, stats, fork safety."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from contextlib import ExitStack
from typing import Any

import pytest

from sockwork import Limits, Registry, Server, ServerStats, hookimpl, make_plugin_manager
from sockwork.handlers import echo
from sockwork.testing import client, exchange, serving

pytestmark = pytest.mark.timeout(30)

TCP = "tcp://127.0.0.1:0"


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def gated_echo(gate: socket.socket) -> Any:
    def handle(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        data = request.recv(100)
        gate.recv(1)
        request.sendall(data)
    return handle


def test_connection_cap_stops_accepting_until_a_slot_frees() -> None:
    gate_r, gate_w = socket.socketpair()
    limits = Limits(max_connections=2)
    try:
        server = Server(transport=TCP, dispatcher="thread", handler=gated_echo(gate_r), limits=limits)
        with serving(server), ExitStack() as stack:
            clients = [stack.enter_context(client(server)) for _ in range(4)]
            for i, sock in enumerate(clients):
                sock.sendall(b"c%d" % i)
            wait_until(lambda: server.stats.accepted == 2)
            time.sleep(0.3)  # had the cap not held, more would have been accepted by now
            assert server.stats.accepted == 2 and server.stats.active == 2
            gate_w.sendall(b"x" * 4)
            assert [sock.recv(10) for sock in clients] == [b"c0", b"c1", b"c2", b"c3"]
            wait_until(lambda: server.stats.completed == 4)
            assert server.stats == ServerStats(accepted=4, active=0, completed=4, turns=4)
    finally:
        gate_r.close()
        gate_w.close()


def test_over_limit_close_turns_clients_away_at_once() -> None:
    gate_r, gate_w = socket.socketpair()
    limits = Limits(max_connections=1, over_limit="close")
    try:
        server = Server(transport=TCP, dispatcher="thread", handler=gated_echo(gate_r), limits=limits)
        with serving(server), client(server) as first:
            first.sendall(b"kept")
            wait_until(lambda: server.stats.active == 1)
            with client(server) as second:
                assert second.recv(10) == b""  # closed at once, not left waiting
            wait_until(lambda: server.stats.rejected == 1)
            gate_w.sendall(b"x")
            assert first.recv(10) == b"kept"
    finally:
        gate_r.close()
        gate_w.close()
    assert server.stats.rejected == 1 and server.stats.completed == 1


def test_over_limit_close_without_a_cap_turns_nobody_away() -> None:
    server = Server(transport=TCP, dispatcher="thread", handler=echo,
                    limits=Limits(max_connections=None, over_limit="close"))
    with serving(server):
        assert exchange(server, b"served") == b"served"
    assert server.stats.rejected == 0 and server.stats.completed == 1


def test_idle_client_is_timed_out_and_the_worker_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(idle_timeout=0.2)
    server = Server(transport=TCP, dispatcher="pool", dispatcher_options={"workers": 1}, handler=echo, limits=limits)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        with client(server) as silent:
            assert silent.recv(10) == b""  # closed by the server after 0.2 s of silence
        assert exchange(server, b"next") == b"next"  # the only worker is free again
    assert server.stats.timed_out == 1 and server.stats.completed == 1
    assert "idle for more than 0.2s" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_request_timeout_ends_a_client_that_trickles(caplog: pytest.LogCaptureFixture) -> None:
    """One byte every 50 ms is never idle, but the whole request may take 0.3 s at most."""
    def echo_whole_stream(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        while chunk := request.recv(100):  # one turn for the whole connection: a request that never ends
            request.sendall(chunk)

    limits = Limits(idle_timeout=5, request_timeout=0.3)
    server = Server(transport=TCP, dispatcher="thread", handler=echo_whole_stream, limits=limits)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server), client(server) as slow:
        started = time.monotonic()
        with pytest.raises(OSError):
            while time.monotonic() - started < 10:
                slow.sendall(b".")
                slow.recv(10)
                time.sleep(0.05)
        assert time.monotonic() - started < 5
        wait_until(lambda: server.stats.timed_out == 1)
    assert "ran longer than 0.3s" in caplog.text


def test_stats_hook_reports_periodically() -> None:
    reports: list[ServerStats] = []

    class Metrics:
        @hookimpl
        def sockwork_collect_stats(self, server: Server, stats: ServerStats) -> None:
            reports.append(stats)

    pm = make_plugin_manager(entry_points=False)
    pm.register(Metrics())
    server = Server(transport=TCP, handler=echo, registry=Registry(pm), limits=Limits(stats_interval=0.05))
    with serving(server):
        exchange(server, b"counted")
        wait_until(lambda: len(reports) >= 3 and reports[-1].completed == 1)
    assert reports[-1].accepted == 1 and reports[-1].active == 0


def test_oversized_datagrams_are_counted_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(transport="udp", transport_options={"address": ("127.0.0.1", 0), "max_packet_size": 100},
                    handler=echo)
    with caplog.at_level(logging.WARNING, logger="sockwork"), serving(server), client(server, timeout=0.3) as sock:
        sock.send(b"x" * 200)
        with pytest.raises(TimeoutError):
            sock.recv(1000)  # dropped, not answered truncated
        sock.send(b"y" * 100)
        assert sock.recv(1000) == b"y" * 100
    assert server.stats.oversized == 1 and server.stats.completed == 1
    assert "larger than max_packet_size=100" in caplog.text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_fork_children_close_the_listener_and_crashes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    def handle(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        command = request.recv(100)
        if command == b"listener?":
            request.sendall(b"closed" if server.transport.socket is None else b"open")
        elif command == b"crash":
            os.kill(os.getpid(), signal.SIGKILL)
        elif command.startswith(b"exit "):
            os._exit(int(command[5:]))

    server = Server(transport=TCP, dispatcher="fork", handler=handle)
    with caplog.at_level(logging.WARNING, logger="sockwork"), serving(server):
        with client(server) as sock:
            sock.sendall(b"listener?")
            assert sock.recv(10) == b"closed"
        # 2 and 3 were TIMED_OUT's and DISCONNECTED's values: a child's status is not an Outcome.
        for command in (b"crash", b"exit 7", b"exit 2", b"exit 3"):
            with client(server) as sock:
                sock.sendall(command)
                assert sock.recv(10) == b""
        wait_until(lambda: server.stats.active == 0)
    assert "was killed by signal SIGKILL" in caplog.text
    for status in (7, 2, 3):
        assert f"exited with status {status}" in caplog.text
    stats = server.stats
    assert (stats.completed, stats.failed, stats.timed_out, stats.disconnected) == (1, 4, 0, 0)


def test_a_fork_child_exit_status_maps_to_an_outcome_explicitly() -> None:
    """CHILD_EXIT is a one-to-one map of every Outcome to a status of its own (0 for completed)."""
    from sockwork.limits import Outcome
    from sockwork.strategies.fork import CHILD_EXIT

    assert set(CHILD_EXIT) == set(Outcome) and len(set(CHILD_EXIT.values())) == len(Outcome)
    assert CHILD_EXIT[Outcome.COMPLETED] == 0
    assert all(status not in (1, 2, 3, 4) for status in CHILD_EXIT.values())


def test_legacy_servers_have_no_limits_by_default() -> None:
    """The legacy module keeps socketserver's behaviour: no cap, no idle timeout."""
    from sockwork import socketserver

    seen: list[float | None] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(self.request.gettimeout())

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        assert server._sockwork().limits == Limits.none()
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            with socket.create_connection(server.server_address) as conn:
                conn.recv(1)
        finally:
            server.shutdown()
            thread.join()
    assert seen == [None]


def test_a_handlers_own_timeout_error_is_a_failure_not_an_idle_client(caplog: pytest.LogCaptureFixture) -> None:
    def handle(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        raise TimeoutError("database did not answer")

    with caplog.at_level(logging.INFO, logger="sockwork"), serving(Server(transport=TCP, handler=handle)) as server:
        assert exchange(server, b"x") == b""
    assert server.stats.failed == 1 and server.stats.timed_out == 0
    assert "database did not answer" in caplog.text
