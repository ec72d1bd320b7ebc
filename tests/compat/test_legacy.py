"""sockwork.socketserver: a drop-in that stands on the core, and is better where socketserver is weak."""

from __future__ import annotations

import ast
import errno
import inspect
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sockwork import socketserver as ours
from sockwork.testing import exchange_address

pytestmark = pytest.mark.timeout(30)


@contextmanager
def running(server: ours.BaseServer, **serve_kwargs: object) -> Iterator[ours.BaseServer]:
    """serve_forever() in a thread for the length of the block; shut down after."""
    thread = threading.Thread(target=server.serve_forever, kwargs=serve_kwargs, name="loop")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()


class Echo(ours.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def test_exposes_every_name_of_the_standard_module() -> None:
    import socketserver as standard  # only here, to compare

    assert set(standard.__all__) <= set(ours.__all__)
    assert len(ours.__all__) == len(set(ours.__all__))


def test_neither_imports_nor_subclasses_the_standard_module() -> None:
    source = Path(inspect.getfile(ours)).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            assert all(alias.name != "socketserver" for alias in node.names)
        if isinstance(node, ast.ImportFrom):
            assert node.module != "socketserver"
    for name in ours.__all__:
        for base in getattr(ours, name).__mro__:
            assert base.__module__ in ("sockwork.socketserver", "builtins", "io", "_io", "abc"), (name, base)


def test_importing_sockwork_does_not_import_the_standard_module() -> None:
    code = ("import sys, sockwork, sockwork.socketserver, sockwork.testing, sockwork.strategies, "
            "sockwork.transports; assert 'socketserver' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20)


def test_shutdown_does_not_wait_for_the_poll_interval() -> None:
    """Even with poll_interval=60, shutdown() returns at once (socketserver: up to 60 s)."""
    with ours.ThreadingTCPServer(("127.0.0.1", 0), Echo) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 60})
        thread.start()
        assert exchange_address(server.server_address, b"hi\n") == b"hi\n"
        server.shutdown()  # the 30 s test timeout would catch a 60 s wait
        thread.join()


def test_overridden_service_actions_still_run_every_poll_interval() -> None:
    calls = threading.Semaphore(0)

    class Server(ours.TCPServer):
        def service_actions(self) -> None:
            calls.release()

    with Server(("127.0.0.1", 0), Echo) as server:
        with running(server, poll_interval=0.01):
            for _ in range(3):  # three idle rounds, no request at all
                assert calls.acquire(timeout=10)


@pytest.mark.skipif(not hasattr(ours, "ForkingTCPServer"), reason="no fork")
def test_forked_children_are_reaped_without_waiting_for_the_next_request() -> None:
    """socketserver reaps in service_actions (every poll_interval) or on the next request."""
    with ours.ForkingTCPServer(("127.0.0.1", 0), Echo) as server:
        with running(server, poll_interval=60):
            assert exchange_address(server.server_address, b"child\n") == b"child\n"
            deadline = time.monotonic() + 10
            while server.active_children and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not server.active_children


def test_out_of_descriptors_in_get_request_backs_off_instead_of_spinning() -> None:
    """socketserver retries a failing accept as fast as select() reports the listener ready."""
    attempts = []

    class Server(ours.TCPServer):
        def get_request(self):  # type: ignore[no-untyped-def]
            attempts.append(time.monotonic())
            if len(attempts) <= 3:
                raise OSError(errno.EMFILE, "Too many open files")
            return super().get_request()

    with Server(("127.0.0.1", 0), Echo) as server:
        with running(server):
            assert exchange_address(server.server_address, b"eventually\n") == b"eventually\n"
    assert len(attempts) == 4
    assert attempts[3] - attempts[0] >= 0.01 + 0.02 + 0.04  # paused between failed accepts


def test_user_combined_mixins_and_handler_attributes_work() -> None:
    """class S(ThreadingMixIn, TCPServer) with daemon_threads; handler timeout and bufsize."""

    class Server(ours.ThreadingMixIn, ours.TCPServer):
        daemon_threads = True
        allow_reuse_address = True

    class Slow(ours.StreamRequestHandler):
        timeout = 0.2
        wbufsize = -1

        def handle(self) -> None:
            try:
                self.rfile.readline()
            except TimeoutError:
                self.wfile.write(b"timed out\n")

    with Server(("127.0.0.1", 0), Slow) as server:
        with running(server):
            with socket.create_connection(server.server_address, timeout=10) as conn:
                assert conn.recv(100) == b"timed out\n"  # sent nothing: the handler's timeout hit


def test_overridden_process_request_that_serves_by_itself_is_counted_and_released() -> None:
    """An override that never calls super() (serves synchronously) leaks nothing."""

    class Server(ours.TCPServer):
        def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
            self.finish_request(request, client_address)
            self.shutdown_request(request)

    with Server(("127.0.0.1", 0), Echo) as server:
        with running(server):
            for i in range(20):
                assert exchange_address(server.server_address, b"%d\n" % i) == b"%d\n" % i
        core = server._sockwork()
        assert core.stats.completed == 20 and core.stats.active == 0
        assert not core.requests.in_flight


def test_overridden_process_request_thread_runs_in_the_request_thread() -> None:
    """Django's ThreadedWSGIServer overrides it to clean up after each request."""
    cleaned: list[str] = []

    class Server(ours.ThreadingTCPServer):
        def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
            super().process_request_thread(request, client_address)
            cleaned.append(threading.current_thread().name)

    with Server(("127.0.0.1", 0), Echo) as server:
        with running(server):
            for i in range(3):
                assert exchange_address(server.server_address, b"%d\n" % i) == b"%d\n" % i
    assert len(cleaned) == 3 and "loop" not in cleaned
    assert server._sockwork().stats.completed == 3


def test_failing_process_request_is_handled_once_and_handle_request_returns() -> None:
    """An exception from process_request goes to handle_error; nothing waits on a second accept."""
    errors: list[object] = []

    class Server(ours.TCPServer):
        def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
            raise RuntimeError("cannot start a thread")

        def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
            errors.append(client_address)

    with Server(("127.0.0.1", 0), Echo) as server:
        with socket.create_connection(server.server_address) as conn:
            server.handle_request()  # the 30 s timeout would catch a second, blocking accept
            assert conn.recv(10) == b""  # shut down, not left hanging
    assert len(errors) == 1
