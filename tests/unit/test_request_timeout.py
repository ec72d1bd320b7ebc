"""request_timeout per dispatcher: what it can end, and how an overrun is counted."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import pytest

from sockwork import Limits, Server
from sockwork.testing import client, exchange, serving

pytestmark = pytest.mark.timeout(30)

TCP = "tcp://127.0.0.1:0"
LIMITS = Limits(idle_timeout=10, request_timeout=0.2)


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def spin_or_echo(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
    """``spin``: answer, then loop on the CPU forever, never touching the connection; else echo."""
    data = request.recv(100)
    if data != b"spin":
        request.sendall(data)
        return
    request.sendall(b"spinning")
    while True:
        pass


fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sockwork.strategies.fork.KILL_GRACE", 0.05)


@fork_only
@pytest.mark.usefixtures("short_grace")
@pytest.mark.parametrize("watched", [True, False], ids=["pidfd", "polling"])
def test_fork_request_timeout_kills_a_child_spinning_on_the_cpu(
    watched: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A child past its deadline that ignores its shut-down connection is killed, counted timed_out, its slot freed."""
    if not watched:
        monkeypatch.setattr("sockwork.strategies.fork._HAVE_PIDFD", False)
    server = Server(transport=TCP, dispatcher="fork", dispatcher_options={"max_children": 1},
                    handler=spin_or_echo, limits=LIMITS)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        with client(server) as sock:
            sock.sendall(b"spin")
            assert sock.recv(10) == b"spinning"
            assert sock.recv(10) == b""  # shut down by the child's watchdog, or closed by the kill
        wait_until(lambda: server.stats.timed_out == 1)
        assert exchange(server, b"next") == b"next"  # the only slot is free again
        wait_until(lambda: server.stats.active == 0)
        assert server.dispatcher.children == frozenset()  # type: ignore[attr-defined]
    stats = server.stats
    assert (stats.timed_out, stats.completed, stats.failed, stats.active) == (1, 1, 0, 0)
    [line] = [r for r in caplog.records if r.getMessage().startswith("killed child ")]
    assert line.levelno == logging.WARNING and "its request ran longer than 0.2s" in line.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@fork_only
@pytest.mark.usefixtures("short_grace")
def test_fork_request_timeout_kills_a_spinning_child_while_draining(caplog: pytest.LogCaptureFixture) -> None:
    """After the loop stops, the drain still kills a child at its deadline: no drain deadline needed."""
    server = Server(transport=TCP, dispatcher="fork", handler=spin_or_echo, limits=LIMITS, drain_timeout=None)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server), client(server) as sock:
        sock.sendall(b"spin")
        assert sock.recv(10) == b"spinning"
        server.close()  # drains with no deadline: returns once the child is killed and reaped
    assert server.stats.timed_out == 1 and server.stats.failed == 0 and server.stats.active == 0
    assert "killed child " in caplog.text
    assert "still running after the drain" not in caplog.text


@fork_only
def test_fork_request_timeout_lets_a_child_blocked_on_its_client_end_by_itself(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The child's watchdog ends a request waiting on its client; it exits timed_out and is never killed."""
    monkeypatch.setattr("sockwork.strategies.fork.KILL_GRACE", 60.0)  # a kill would come far too late

    def wait_for_client(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        request.sendall(b"waiting")
        request.recv(1)  # the client never sends: returns b"" once the connection is shut down

    server = Server(transport=TCP, dispatcher="fork", handler=wait_for_client, limits=LIMITS)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        with client(server) as sock:
            assert sock.recv(10) == b"waiting"
            assert sock.recv(10) == b""
        wait_until(lambda: server.stats.active == 0)
    assert server.stats.timed_out == 1 and server.stats.failed == 0
    assert "killed child " not in caplog.text


@pytest.mark.parametrize("dispatcher", ["thread", "pool"])
def test_a_thread_past_its_deadline_cannot_be_ended_but_is_counted_timed_out_when_it_returns(
    dispatcher: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Threads cannot be killed: the connection is shut down at the deadline, the handler keeps its thread
    until it returns, and is counted timed_out then."""
    release = threading.Event()

    def busy(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        request.recv(100)
        request.sendall(b"busy")
        while not release.is_set():  # on the CPU, never touching the connection
            pass
        request.sendall(b"late")  # the connection was shut down at the deadline: fails

    server = Server(transport=TCP, dispatcher=dispatcher, handler=busy, limits=LIMITS)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        with client(server) as sock:
            sock.sendall(b"go")
            assert sock.recv(10) == b"busy"
            assert sock.recv(10) == b""  # shut down by the watchdog at the deadline
            stats = server.stats
            assert stats.active == 1 and stats.timed_out == 0  # still running in its thread
            release.set()
        wait_until(lambda: server.stats.active == 0)
    assert server.stats.timed_out == 1 and server.stats.failed == 0
    assert "its request ran longer than 0.2s" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
