"""Failure paths that must not stall, leak or lose anything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from unittest import mock

import pytest

from sockwork import Server
from sockwork.handlers import echo
from sockwork.testing import client, exchange, serving

pytestmark = pytest.mark.timeout(60)

TCP = "tcp://127.0.0.1:0"


def test_pool_worker_survives_a_handler_calling_sys_exit() -> None:
    """SystemExit in a handler must not kill the worker and stall the queue behind it."""
    def handle(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        if request.recv(100) == b"exit":
            sys.exit(3)
        request.sendall(b"served")

    server = Server(transport=TCP, dispatcher="pool", dispatcher_options={"workers": 1}, handler=handle)
    with serving(server):
        with client(server) as sock:
            sock.sendall(b"exit")
            assert sock.recv(10) == b""  # closed, not left open
        for _ in range(3):
            with client(server) as sock:
                sock.sendall(b"next")
                assert sock.recv(10) == b"served"


@pytest.mark.parametrize("dispatcher", ["inline", "thread", "pool", "fork"])
def test_close_with_zero_drain_timeout_never_hangs_the_loop(dispatcher: str) -> None:
    """An idle server closed with drain_timeout=0: the loop leaves cleanly, every time."""
    for _ in range(50):
        server = Server(transport=TCP, dispatcher=dispatcher, handler=echo, drain_timeout=0)
        errors: list[BaseException] = []

        def run(server: Server = server, errors: list[BaseException] = errors) -> None:
            try:
                server.serve_forever()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        server.wait_serving(10)
        server.close()
        thread.join(10)
        assert not thread.is_alive() and not errors


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd")
def test_fork_falls_back_to_polling_when_a_child_cannot_be_watched() -> None:
    """A failing pidfd_open after fork() neither kills the loop nor orphans the child."""
    server = Server(transport=TCP, dispatcher="fork", handler=echo)
    real = os.pidfd_open
    calls = iter([OSError(24, "Too many open files")])

    def flaky(pid: int, flags: int = 0) -> int:
        for exc in calls:
            raise exc
        return real(pid, flags)

    with mock.patch("os.pidfd_open", flaky), serving(server):
        assert exchange(server, b"one") == b"one"  # its child is reaped by polling
        assert exchange(server, b"two") == b"two"
    assert server.stats.completed == 2 and server.stats.active == 0


SCRIPT = textwrap.dedent("""
    import signal, subprocess, sys
    from sockwork import Server
    from sockwork.testing import exchange, serving

    def handle(request, client_address, server):
        # A program started by a handler can be stopped with SIGTERM as usual.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        child.terminate()
        request.sendall(b"%d" % child.wait())

    print("buffered before serving", end="")   # stdout is a pipe: this sits in the buffer
    server = Server(transport="tcp://127.0.0.1:0", dispatcher="fork", handler=handle)
    with serving(server):
        replies = [exchange(server, b"") for _ in range(3)]
    print("", replies)
""")


def test_fork_children_neither_repeat_buffered_output_nor_block_sigterm_for_programs() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("buffered before serving") == 1, result.stdout
    assert f"[b'{-signal.SIGTERM}', b'{-signal.SIGTERM}', b'{-signal.SIGTERM}']" in result.stdout


def test_thread_dispatcher_daemon_and_block_on_close_options() -> None:
    """daemon=True starts daemon threads; block_on_close=False makes close() return while they run."""
    gate_r, gate_w = socket.socketpair()
    seen: list[bool] = []

    def hold(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        seen.append(threading.current_thread().daemon)
        gate_r.recv(1)

    server = Server(transport=TCP, dispatcher="thread", handler=hold,
                    dispatcher_options={"daemon": True, "block_on_close": False})
    try:
        with serving(server), client(server) as sock:
            sock.sendall(b"x")
            while not seen:
                threading.Event().wait(0.01)
            server.close()  # returns although the handler still waits at the gate
            assert server.stats.active == 1
        assert seen == [True]
    finally:
        gate_w.sendall(b"x")  # let the abandoned thread finish before the leak check
        for thread in threading.enumerate():
            if thread.daemon and thread is not threading.main_thread():
                thread.join(5)
        gate_r.close()
        gate_w.close()
