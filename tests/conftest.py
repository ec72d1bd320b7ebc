"""sockwork's own test fixtures, on top of its pytest plugin (sockwork.pytest_plugin, opted in below).

The conformance suite's pairs of transport and dispatcher come from the
registry (``sockwork_conformance_builtins = true`` in pyproject.toml makes it
test the built-ins): registering a component enrolls it. Here the suite also
runs through the legacy socketserver classes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sockwork import Registry, Server
from sockwork.testing import HandlerForms, dispatcher_runs_async

# The plugin is opt-in, for sockwork's own suite as for a plugin author's (docs/plugins.md §5).
pytest_plugins = ["sockwork.pytest_plugin"]


FORK_IN_THREADS = "is multi-threaded, use of fork() may lead to deadlocks"
_forks_in_threads: dict[str, int] = {}


def pytest_warning_recorded(warning_message: warnings.WarningMessage, when: str, nodeid: str, location: Any) -> None:
    """Python 3.12+ warns at each fork from a multi-threaded process (docs/plugins.md, Fork hygiene)."""
    if FORK_IN_THREADS in str(warning_message.message):
        _forks_in_threads[nodeid] = _forks_in_threads.get(nodeid, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for nodeid, count in sorted(_forks_in_threads.items()):
        terminalreporter.write_line(f"forked {count}x from a multi-threaded process: {nodeid}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _forks_in_threads and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a filterwarnings "error" cannot: os.fork() drops it


# The suite writes only to temporary directories: the work tree's files when the session
# starts are the files when it ends. Skipped: what running Python, pytest and pip install
# make as a matter of course (all in .gitignore), and git's own data.
_NOT_WORK_TREE = frozenset({".git", "__pycache__", ".pytest_cache", "build"})
_WORK_TREE = Path(__file__).resolve().parent.parent
_WORK_TREE_KEY = pytest.StashKey[dict[str, tuple[int, int] | None]]()


def work_tree_listing(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (its size and modification time) and directory (None) under root, by relative path."""
    listing: dict[str, tuple[int, int] | None] = {}
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories
                                   if name not in _NOT_WORK_TREE and not name.endswith(".egg-info"))
        for name in subdirectories:
            listing[os.path.relpath(os.path.join(directory, name), root) + os.sep] = None
        for name in files:
            if name in _NOT_WORK_TREE:  # .git is a file in a git worktree
                continue
            path = os.path.join(directory, name)
            try:
                status = os.lstat(path)
            except FileNotFoundError:  # removed while listed
                continue
            listing[os.path.relpath(path, root)] = (status.st_size, status.st_mtime_ns)
    return listing


def work_tree_changes(before: dict[str, tuple[int, int] | None],
                      after: dict[str, tuple[int, int] | None]) -> list[str]:
    """What differs between two listings, one line a path: "appeared: …", "changed: …", "removed: …"."""
    changes = [f"appeared: {path}" for path in sorted(after.keys() - before.keys())]
    changes += [f"changed: {path}" for path in sorted(after.keys() & before.keys()) if after[path] != before[path]]
    changes += [f"removed: {path}" for path in sorted(before.keys() - after.keys())]
    return changes


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_WORK_TREE_KEY] = work_tree_listing(_WORK_TREE)  # before collection imports anything


@pytest.fixture(scope="session", autouse=True)
def work_tree_unchanged(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the last test: the suite changed no file of the work tree (it writes only to temporary directories)."""
    yield
    changes = work_tree_changes(request.config.stash[_WORK_TREE_KEY], work_tree_listing(_WORK_TREE))
    if changes:
        pytest.fail(f"the test suite changed the work tree {_WORK_TREE} (tests must write only to temporary "
                    f"directories):\n  " + "\n  ".join(changes), pytrace=False)


@pytest.fixture(autouse=True)
def no_leaks(sockwork_no_leaks: None) -> None:
    """Every test leaves no thread, descriptor or child process behind (the plugin's check)."""


@pytest.fixture
def short_tmp(sockwork_tmp: Path) -> Path:
    """A short temporary directory: Unix socket paths are limited to ~107 bytes."""
    return sockwork_tmp


@pytest.fixture
def unix_path_with_full_backlog(short_tmp: Path) -> Iterator[Path]:
    """A Unix socket path where a live listener's backlog is full: a blocking connect() would wait forever."""
    import socket

    path = short_tmp / "s.sock"
    queued: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen(0)
        try:
            while len(queued) < 1000:  # bounded: the backlog fills after a handful
                client = socket.socket(socket.AF_UNIX)
                client.setblocking(False)
                try:
                    client.connect(str(path))
                except BlockingIOError:
                    client.close()
                    break
                queued.append(client)
            yield path
        finally:
            for client in queued:
                client.close()


@pytest.fixture(params=["parts", "socketserver"])
def assembly(request: pytest.FixtureRequest) -> str:
    """How the server is built: from parts, or through the legacy socketserver classes."""
    return request.param


# The legacy class for each (transport, dispatcher) pair that socketserver has.
LEGACY_CLASSES = {
    (transport, dispatcher): f"{prefix}{base}"
    for transport, base in [("tcp", "TCPServer"), ("udp", "UDPServer"),
                            ("unix", "UnixStreamServer"), ("unix-dgram", "UnixDatagramServer")]
    for dispatcher, prefix in [("inline", ""), ("thread", "Threading"), ("fork", "Forking")]
}


PROXY_CONFORMANCE_TRANSPORTS = ("tcp", "tls", "unix")

TLS_ASYNCIO = (
    "tls with asyncio: assembly refuses the pair (the TLS session lives in the ssl.SSLSocket the loop's "
    "handshake made; the asyncio dispatcher takes the bare descriptor over); see "
    "test_tls_with_the_asyncio_dispatcher_is_refused_at_assembly")


# Tests whose harness runs a forking server in a thread of this (multi-threaded) pytest process.
# sockwork itself forks from a single thread (tests/unit/test_forking.py counts them in a
# subprocess); these fork from threads only because the test drives the server from here.
FORKS_FROM_TEST_THREADS = (
    "test_saturated_dispatcher_stops_accepting_until_capacity_frees", "test_forced_drain_kills_stuck_children",
    "test_fork_children_close_the_listener", "test_fork_falls_back_to_polling",
    "test_forked_children_are_reaped_without_waiting", "test_a_crashed_workers_requests",
    "test_a_dead_worker_is_logged", "test_workers_are_recycled", "test_a_worker_that_exits_0",
    "test_requests_are_served_by_the_workers", "test_every_registered_dispatcher_runs_inside",
    "test_a_third_party_dispatcher_runs_inside", "test_fork_request_timeout",
    "test_a_crash_loop_backs_off", "test_a_handlers_exit_status_never_fakes", "test_a_stop_right_after_the_spawn",
    "test_workers_call_only_the_failure_hook", "test_a_failure_in_a_forked_child_reaches_the_hook",
    "test_forking_mixin_process_request_called_explicitly", "test_prefork_with_asyncio_inside_uses_every_worker",
    "test_prefork_one_scrape_shows_every_worker_and_loses_nothing_of_a_killed_one",
)
_FORK_WARNING = r"ignore:This process \(pid=\d+\) is multi-threaded:DeprecationWarning"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The legacy flavour exists only for pairs socketserver has a class for: drop the rest.

    Tests that fork from this process's threads (see FORKS_FROM_TEST_THREADS) do not count
    as sockwork forking from threads.
    """
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params is not None else {}
        pair = (params.get("sockwork_transport_name"), params.get("sockwork_dispatcher_name"))
        legacy_impossible = params.get("assembly") == "socketserver" and pair not in LEGACY_CLASSES
        # The PROXY-protocol run of the suite (tests/conformance/test_conformance_proxy.py) is for the
        # stream transports that have the option; the others are not skipped 50 times each, but left out.
        no_proxy_option = (item.path.name == "test_conformance_proxy.py"
                           and pair[0] not in PROXY_CONFORMANCE_TRANSPORTS)
        if pair == ("tls", "asyncio") or (item.path.name == "test_aio.py" and params.get("transport") == "tls"):
            item.add_marker(pytest.mark.skip(reason=TLS_ASYNCIO))
        forking = any(name in ("fork", "prefork") for name in params.values() if isinstance(name, str))
        if forking or item.name.startswith(FORKS_FROM_TEST_THREADS):
            item.add_marker(pytest.mark.filterwarnings(_FORK_WARNING))
        (drop if legacy_impossible or no_proxy_option else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


class LegacyHarness:
    """Drives a sockwork.socketserver server through its classic API, shaped
    like a Server so that the same conformance tests run against it."""

    def __init__(self, classic: Any) -> None:
        self.classic = classic
        core = classic._sockwork()  # the parts the classic server was assembled from
        self.transport, self.dispatcher = core.transport, core.dispatcher

    @property
    def address(self) -> Any:
        return self.classic.server_address

    @property
    def stats(self) -> Any:
        return self.classic._sockwork().stats

    def serve_forever(self) -> None:
        self.classic.serve_forever(poll_interval=0.5)

    def wait_serving(self, timeout: float | None = None) -> bool:
        return self.classic._sockwork().wait_serving(timeout)

    def shutdown(self) -> None:
        self.classic.shutdown()

    def handle_request(self, timeout: float | None = None) -> bool:
        timed_out: list[bool] = []
        self.classic.timeout = timeout
        self.classic.handle_timeout = lambda: timed_out.append(True)
        self.classic.handle_request()
        return not timed_out

    def close(self) -> None:
        self.classic.server_close()


@pytest.fixture
def sockwork_make_server(
    sockwork_transport_name: str, sockwork_dispatcher_name: str, assembly: str,
    sockwork_loopback: Any, sockwork_registry: Registry,
) -> Iterator[Callable[..., Any]]:
    """The plugin's fixture, plus a second way to assemble: the legacy classes."""
    created: list[Any] = []
    pair = (sockwork_transport_name, sockwork_dispatcher_name)
    if "(a plugin failed to load)" in pair:
        pytest.fail(f"plugin(s) failed to load: {sockwork_registry.failures}", pytrace=False)

    def make(handler: Any, **kwargs: Any) -> Any:
        if isinstance(handler, HandlerForms):  # the form this dispatcher serves: blocking or async
            handler = handler.pick(dispatcher_runs_async(sockwork_registry, sockwork_dispatcher_name))
        if assembly == "socketserver":
            server: Any = make_legacy(sockwork_loopback.options, handler, **kwargs)
        else:
            kwargs.setdefault("registry", sockwork_registry)
            server = Server(
                transport=sockwork_transport_name, transport_options=sockwork_loopback.options,
                dispatcher=sockwork_dispatcher_name, handler=handler, **kwargs,
            )
        created.append(server)
        return server

    def make_legacy(options: Any, handler: Any, registry: Registry | None = None, **kwargs: Any) -> LegacyHarness:
        from sockwork import socketserver

        if kwargs:
            pytest.skip(f"socketserver classes take no {', '.join(kwargs)} (they wait as socketserver does)")
        address = getattr(options, "address", None) or options.path
        classic = getattr(socketserver, LEGACY_CLASSES[pair])(address, handler)
        classic.sockwork_registry = registry
        classic.max_packet_size = 65535  # socketserver's 8192 would truncate the large-datagram test
        return LegacyHarness(classic)

    yield make
    for server in created:
        server.close()
