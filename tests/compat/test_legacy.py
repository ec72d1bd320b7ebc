"""sockwork.socketserver: a drop-in that stands on the core, and is better where socketserver is weak."""

from __future__ import annotations

import ast
import errno
import inspect
import os
import socket
import subprocess
import sys
import tempfile
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

    with Server(("127.0.0.1", 0), Echo) as server, running(server, poll_interval=0.01):
        for _ in range(3):  # three idle rounds, no request at all
            assert calls.acquire(timeout=10)


@pytest.mark.skipif(not hasattr(ours, "ForkingTCPServer"), reason="no fork")
def test_forked_children_are_reaped_without_waiting_for_the_next_request() -> None:
    """socketserver reaps in service_actions (every poll_interval) or on the next request."""
    with ours.ForkingTCPServer(("127.0.0.1", 0), Echo) as server, running(server, poll_interval=60):
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

    with Server(("127.0.0.1", 0), Echo) as server, running(server):
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

    with (Server(("127.0.0.1", 0), Slow) as server, running(server),
          socket.create_connection(server.server_address, timeout=10) as conn):
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

    with Server(("127.0.0.1", 0), Echo) as server, running(server):
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

    with Server(("127.0.0.1", 0), Echo) as server, socket.create_connection(server.server_address) as conn:
        server.handle_request()  # the 30 s timeout would catch a second, blocking accept
        assert conn.recv(10) == b""  # shut down, not left hanging
    assert len(errors) == 1


# ---- The classic surface, name by name ----------------------------------------------

DELIBERATE = {"request_queue_size": (5, 1024)}
"""Class attributes whose default we changed on purpose (docs/migrating.md)."""
ACCESSORS = {"_threads", "active_children"}
"""Class-level placeholders in socketserver, live views (properties) here."""


def _standard_classes() -> list[str]:
    import socketserver as standard  # only here, to compare

    return [name for name in standard.__all__ if inspect.isclass(getattr(standard, name))]


@pytest.mark.parametrize("name", _standard_classes())
def test_every_attribute_of_the_standard_class_is_here_with_its_meaning(name: str) -> None:
    """Every name reachable on the standard class is reachable on ours: a method with the
    same signature, defined by the class of the same name (so explicit calls such as
    ``ThreadingMixIn.process_request(self, ...)`` reach the same meaning), or the same value."""
    import socketserver as standard

    theirs, mine = getattr(standard, name), getattr(ours, name)
    assert [c.__name__ for c in mine.__mro__] == [c.__name__ for c in theirs.__mro__]
    for attribute in dir(theirs):
        if attribute.startswith("__"):
            continue
        assert hasattr(mine, attribute), f"{name}.{attribute} is missing"
        expected, actual = inspect.getattr_static(theirs, attribute), inspect.getattr_static(mine, attribute)
        if inspect.isfunction(expected):
            assert inspect.isfunction(actual), (name, attribute, actual)
            assert getattr(mine, attribute).__qualname__ == getattr(theirs, attribute).__qualname__, (name, attribute)
            assert inspect.signature(actual) == inspect.signature(expected), (name, attribute)
        elif attribute in ACCESSORS:
            assert isinstance(actual, property), (name, attribute)
        elif attribute in DELIBERATE:
            assert (expected, actual) == DELIBERATE[attribute], (name, attribute)
        else:
            assert actual == expected, (name, attribute)


class WhoServes(ours.StreamRequestHandler):
    """Replies with the process id and the thread name that served the request."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"%d %s\n" % (os.getpid(), threading.current_thread().name.encode()))


def _who_serves(address: tuple[str, int]) -> tuple[int, str]:
    pid, thread = exchange_address(address, b"who?\n").rstrip(b"\n").split(maxsplit=1)
    return int(pid), thread.decode()


def test_threading_mixin_process_request_called_explicitly_starts_the_thread() -> None:
    """The bounded-threads recipe: acquire in process_request, call the mix-in's, release in the thread."""

    class Server(ours.ThreadingMixIn, ours.TCPServer):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            self.slots = threading.BoundedSemaphore(2)
            self.handed: list[object] = []

        def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
            self.slots.acquire()
            self.handed.append(client_address)
            ours.ThreadingMixIn.process_request(self, request, client_address)

        def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
            try:
                ours.ThreadingMixIn.process_request_thread(self, request, client_address)
            finally:
                self.slots.release()

    with Server(("127.0.0.1", 0), WhoServes) as server, running(server):
        served = [_who_serves(server.server_address) for _ in range(5)]
    assert all(pid == os.getpid() and thread != "loop" for pid, thread in served), served
    assert len(server.handed) == 5
    stats = server._sockwork().stats
    assert (stats.completed, stats.failed, stats.active) == (5, 0, 0)
    assert not server._sockwork().requests.in_flight


@pytest.mark.skipif(not hasattr(ours, "ForkingMixIn"), reason="no fork")
def test_forking_mixin_process_request_called_explicitly_forks_the_child() -> None:
    """An override that counts requests, then calls ForkingMixIn.process_request."""

    class Server(ours.ForkingMixIn, ours.TCPServer):
        handed = 0

        def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
            self.handed += 1
            ours.ForkingMixIn.process_request(self, request, client_address)

    with Server(("127.0.0.1", 0), WhoServes) as server, running(server):
        served = [_who_serves(server.server_address) for _ in range(3)]
    # server_close() (block_on_close) has reaped every child: each is counted
    assert len({pid for pid, _ in served}) == 3 and os.getpid() not in {pid for pid, _ in served}, served
    assert server.handed == 3
    stats = server._sockwork().stats
    assert (stats.completed, stats.failed, stats.active) == (3, 0, 0)
    assert not server.active_children


def test_base_process_request_called_explicitly_serves_in_the_calling_thread() -> None:
    """TCPServer.process_request from a threading server's override: inline, as in socketserver."""

    class Server(ours.ThreadingMixIn, ours.TCPServer):
        def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
            ours.TCPServer.process_request(self, request, client_address)

    with Server(("127.0.0.1", 0), WhoServes) as server, running(server):
        served = [_who_serves(server.server_address) for _ in range(3)]
    assert served == [(os.getpid(), "loop")] * 3
    stats = server._sockwork().stats
    assert (stats.completed, stats.failed, stats.active) == (3, 0, 0)


def test_base_process_request_lets_a_handler_error_through_to_handle_error() -> None:
    """As in socketserver: the override's code after the call does not run; handle_error does."""
    after: list[object] = []
    errors: list[object] = []

    class Failing(ours.BaseRequestHandler):
        def handle(self) -> None:
            raise ValueError("boom")

    class Server(ours.TCPServer):
        def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
            super().process_request(request, client_address)
            after.append(client_address)

        def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
            errors.append(sys.exc_info()[0])

    with Server(("127.0.0.1", 0), Failing) as server, socket.create_connection(server.server_address) as conn:
        server.handle_request()
        assert conn.recv(10) == b""  # shut down
    assert (errors, after) == ([ValueError], [])
    assert server._sockwork().stats.failed == 1


# ---- TCP_NODELAY ------------------------------------------------------------------------

class ReportsNoDelay(ours.BaseRequestHandler):
    """Not a StreamRequestHandler: disable_nagle_algorithm plays no part."""

    def handle(self) -> None:
        nodelay = self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        self.request.sendall(b"%d\n" % bool(nodelay))


class AcceptsItself(ours.TCPServer):
    def get_request(self):  # type: ignore[no-untyped-def]
        return self.socket.accept()  # not super(): NODELAY comes from the listening socket


def _loopback(family: socket.AddressFamily) -> str:
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


@pytest.mark.parametrize("cls", [ours.TCPServer, ours.ThreadingTCPServer, AcceptsItself])
@pytest.mark.parametrize("family", [socket.AF_INET, pytest.param(socket.AF_INET6, marks=pytest.mark.skipif(
    not socket.has_ipv6, reason="no IPv6"))], ids=["ipv4", "ipv6"])
def test_tcp_connections_get_nodelay_by_default(cls: type[ours.TCPServer], family: socket.AddressFamily) -> None:
    """Whatever accepts and whatever handler class serves (issue 13: the 40 ms keep-alive stalls)."""

    class Server(cls):  # type: ignore[valid-type,misc]
        address_family = family

    try:
        server = Server((_loopback(family), 0), ReportsNoDelay)
    except OSError as exc:  # IPv6 compiled in but not configured on this machine
        pytest.skip(f"cannot bind {_loopback(family)}: {exc}")
    with server, running(server):
        assert exchange_address(server.server_address[:2], b"") == b"1\n"


def test_sockwork_nodelay_false_gives_the_standard_behaviour_back() -> None:
    class Server(ours.ThreadingTCPServer):
        sockwork_nodelay = False

    with Server(("127.0.0.1", 0), ReportsNoDelay) as server:
        assert not server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with running(server):
            assert exchange_address(server.server_address, b"") == b"0\n"


def test_nodelay_is_not_applied_to_datagram_or_unix_servers() -> None:
    """Only TCP has Nagle's algorithm; other sockets are left as they were."""
    with ours.UDPServer(("127.0.0.1", 0), ours.DatagramRequestHandler) as server, pytest.raises(OSError):
        server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    if hasattr(ours, "UnixStreamServer"):
        with (tempfile.TemporaryDirectory() as directory,
              ours.UnixStreamServer(os.path.join(directory, "s"), Echo) as unix, running(unix),
              socket.socket(socket.AF_UNIX) as conn):
            conn.settimeout(10)
            conn.connect(unix.server_address)
            conn.sendall(b"unix\n")
            assert conn.recv(100) == b"unix\n"


def test_importing_the_drop_in_loads_only_what_a_legacy_server_needs() -> None:
    """`import sockwork.socketserver` loads no plugin machinery, config, attrs or entry points;
    constructing a server loads the core (before serving), still without entry points."""
    import subprocess
    import sys

    probe = (
        "import sys; import sockwork.socketserver as s; before = set(sys.modules);"
        "srv = s.ThreadingTCPServer(('127.0.0.1', 0), s.BaseRequestHandler); after = set(sys.modules);"
        "srv.server_close();"
        "heavy = ('attrs', 'pluggy', 'importlib.metadata', 'sockwork.config', 'sockwork.registry',"
        " 'sockwork.assembly');"
        "print(sorted(m for m in heavy if m in before)); print(sorted(m for m in heavy if m in after))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    at_import, at_construction = result.stdout.splitlines()
    assert at_import == "[]"
    assert at_construction == "['attrs', 'pluggy']"  # the options classes; the built-ins' hook markers


class _Reply(ours.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(b"re " + data, self.client_address)


def test_datagrams_waiting_in_the_socket_are_taken_in_one_round_each_answered_once() -> None:
    """The UDP fast path reads without blocking, up to 16 datagrams a round of the loop: a burst sent
    before the server serves is answered, every datagram exactly once; the socket itself stays blocking."""
    with ours.ThreadingUDPServer(("127.0.0.1", 0), _Reply) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        sent = [b"%02d" % n for n in range(40)]
        for data in sent:
            client.sendto(data, server.server_address)
        with running(server):
            replies = sorted(client.recv(100) for _ in sent)
        assert replies == [b"re " + data for data in sent]
        assert server._sockwork().loop.batch == 16
        assert server.socket.gettimeout() is None  # blocking, as handlers that reply with it expect
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recv(100)  # and nothing twice


def test_a_class_that_changes_the_datagram_path_is_served_one_datagram_a_round() -> None:
    """An overridden get_request or service_actions (called once per round, as socketserver calls it
    once per request) keeps one datagram per round of the loop."""
    class OwnGetRequest(ours.UDPServer):
        def get_request(self) -> tuple[object, object]:
            return super().get_request()

    class OwnServiceActions(ours.UDPServer):
        def service_actions(self) -> None:
            pass

    for cls in (OwnGetRequest, OwnServiceActions):
        with cls(("127.0.0.1", 0), _Reply) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            with running(server, poll_interval=0.05):
                client.sendto(b"x", server.server_address)
                assert client.recv(100) == b"re x"
            assert server._sockwork().loop.batch == 1, cls
