"""Under load and abuse: many clients, failing handlers, hostile clients, no descriptors, SIGTERM.

Every test talks to loopback only, is bounded in count and time, and leaves
no thread, descriptor or child process behind (the autouse leak check).
Load comes from a separate process (loadclient.py), so that the server under
test does not share its GIL with the clients.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from stress_handlers import ECHO_LINES

from sockwork import Limits, Registry, Server
from sockwork.testing import dispatcher_runs_async, exchange, serving

pytestmark = pytest.mark.timeout(180)

HERE = Path(__file__).parent
LOADCLIENT = HERE / "loadclient.py"


def load(server_address: Any, *args: str | int) -> dict[str, Any]:
    """Run the load generator against a TCP address and return its report."""
    host, port = server_address[:2]
    result = subprocess.run(
        [sys.executable, str(LOADCLIENT), host, str(port), *map(str, args)],
        capture_output=True, text=True, timeout=170,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(params=[e.name for e in Registry().entries("dispatcher")
                        if e.unavailable_reason is None and e.name != "inline"])
def concurrent_dispatcher(request: pytest.FixtureRequest) -> str:
    """Every registered dispatcher that serves requests concurrently."""
    return request.param


def echo_lines_for(dispatcher: str) -> Any:
    """The echo_lines handler in the form ``dispatcher`` serves (blocking, or async for asyncio)."""
    return ECHO_LINES.pick(dispatcher_runs_async(Registry(), dispatcher))


def test_500_clients_20000_requests_every_reply_correct(concurrent_dispatcher: str) -> None:
    server = Server(transport="tcp://127.0.0.1:0", dispatcher=concurrent_dispatcher,
                        handler=echo_lines_for(concurrent_dispatcher))
    with serving(server):
        report = load(server.address, "--connections", 500, "--requests", 40)
    stats = server.stats  # after close: final also for workers in other processes
    assert report["errors"] == 0, report["first_errors"]
    assert report["ok"] == 20_000
    assert stats.accepted == 500 and stats.completed == 500 and stats.failed == 0


def test_every_10th_request_fails_the_other_9_are_served(concurrent_dispatcher: str, tmp_path: Path) -> None:
    """Failures are counted and logged (also from child processes: the log goes to a file)."""
    log_file = tmp_path / "sockwork.log"
    handler = logging.FileHandler(log_file)
    sockwork_logger = logging.getLogger("sockwork")
    sockwork_logger.addHandler(handler)
    try:
        server = Server(transport="tcp://127.0.0.1:0", dispatcher=concurrent_dispatcher,
                        handler=echo_lines_for(concurrent_dispatcher))
        with serving(server):
            report = load(server.address, "--short", "--connections", 1000, "--fail-every", 10)
        stats = server.stats
    finally:
        sockwork_logger.removeHandler(handler)
        handler.close()
    assert report["errors"] == 0, report["first_errors"]
    assert report["ok"] == 900 and report["expected_failures"] == 100
    assert stats.completed == 900 and stats.failed == 100
    assert log_file.read_text().count("error while serving") == 100


def test_hostile_clients_do_not_stop_the_others(concurrent_dispatcher: str) -> None:
    """Clients that never send, reset mid-request or close half-way: the rest is served,
    the silent ones are timed out, and the workers come back."""
    limits = Limits(idle_timeout=0.5)
    options = {"workers": 4} if concurrent_dispatcher in ("pool", "procpool") else None
    server = Server(transport="tcp://127.0.0.1:0", dispatcher=concurrent_dispatcher,
                    dispatcher_options=options, handler=echo_lines_for(concurrent_dispatcher), limits=limits)
    with serving(server):
        silent = [socket.create_connection(server.address) for _ in range(10)]
        try:
            for _ in range(10):  # reset in the middle of a line
                with socket.create_connection(server.address) as sock:
                    sock.sendall(b"half a li")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            for _ in range(10):  # close the sending side half-way
                with socket.create_connection(server.address) as sock:
                    sock.sendall(b"no newline")
                    sock.shutdown(socket.SHUT_WR)
                    assert sock.recv(100) in (b"no newline", b"")
            report = load(server.address, "--connections", 50, "--requests", 20)
            for sock in silent:
                sock.settimeout(10)
                assert sock.recv(10) == b""  # the server gave up on them
        finally:
            for sock in silent:
                sock.close()
        assert exchange(server, b"still here\n") == b"still here\n"
        deadline = time.monotonic() + 10
        while server.stats.active and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = server.stats
    assert report["errors"] == 0, report["first_errors"]
    assert report["ok"] == 1000
    assert stats.timed_out >= 10
    assert stats.active == 0


def test_descriptor_exhaustion_is_survived_and_recovered(tmp_path: Path) -> None:
    """With RLIMIT_NOFILE at 64, 100 clients at once: accepting pauses, everyone is served."""
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    process = subprocess.Popen(
        [sys.executable, "-m", "sockwork", "serve", "--transport", "tcp://127.0.0.1:0", "--dispatcher", "thread",
         "--handler", "lines", "--option", "limits.max_waiting=false"],  # else max_waiting keeps it under 64
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=low_limit,
    )
    clients: list[socket.socket] = []
    try:
        started = re.search(r"tcp://127\.0\.0\.1:(\d+)", process.stdout.readline())  # type: ignore[union-attr]
        assert started
        port = int(started.group(1))
        for i in range(100):
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            sock.sendall(b"client %d\n" % i)
            clients.append(sock)
        first_log = process.stderr.readline()  # type: ignore[union-attr]
        assert "out of resources accepting" in first_log and "Too many open files" in first_log, first_log
        served_early = [sock.recv(100) for sock in clients[:30]]  # the first ones are being served all along
        assert served_early == [b"1: client %d\n" % i for i in range(30)]
        for sock in clients[:60]:  # hang up: the server gets descriptors back
            sock.close()
        for i, sock in enumerate(clients[60:], start=60):
            assert sock.recv(100) == b"1: client %d\n" % i
    finally:
        for sock in clients:
            sock.close()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
        stderr = process.stderr.read()  # type: ignore[union-attr]
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
    assert returncode == 0, stderr
    assert stderr.count("out of resources accepting") <= 2, stderr  # once per 5 s, not per failure


@pytest.mark.parametrize("dispatcher", ["thread", "pool", "fork", "asyncio"])
def test_sigterm_mid_traffic_completes_requests_in_flight(dispatcher: str) -> None:
    """SIGTERM while 20 requests run: all 20 complete, new clients are refused, exit 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "sockwork", "serve", "--transport", "tcp://127.0.0.1:0", "--dispatcher", dispatcher,
         "--handler", "stress_handlers:slow_echo" + ("_async" if dispatcher == "asyncio" else ""),
         "--drain-timeout", "10", "--option", "dispatcher.{}=32".format(
             {"thread": "max_threads", "pool": "workers", "fork": "max_children", "asyncio": "max_tasks"}[dispatcher])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    clients: list[socket.socket] = []
    try:
        started = re.search(r"tcp://127\.0\.0\.1:(\d+)", process.stdout.readline())  # type: ignore[union-attr]
        assert started, process.stderr.read()  # type: ignore[union-attr]
        address = ("127.0.0.1", int(started.group(1)))
        for i in range(20):
            sock = socket.create_connection(address, timeout=20)
            sock.sendall(b"in flight %d\n" % i)
            clients.append(sock)
        for sock in clients:
            assert sock.recv(8) == b"started\n"
        process.send_signal(signal.SIGTERM)
        replies = [sock.recv(100) for sock in clients]
        assert replies == [b"in flight %d\n" % i for i in range(20)]
        assert process.wait(timeout=15) == 0
        with pytest.raises(OSError):
            socket.create_connection(address, timeout=5).close()
    finally:
        for sock in clients:
            sock.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
