"""Forked children start clean: no inherited signal wake-up fd, handlers or mask (issue 14 item 1).

Every server here runs in a subprocess this test starts in a session (and so a
process group) of its own: signals go to that group only, and the fork happens
in the subprocess's main thread, with no other thread running.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from sockwork import forking

pytestmark = pytest.mark.timeout(60)

BACKEND_SOCKETS = 4

# A handler that opens sockets to a backend, says so to its client, and holds
# them open until the client says "finish": a fork child's descriptors are
# whatever numbers the kernel hands out, the parent's freed ones first.
HANDLER_MODULE = textwrap.dedent(
    f"""
    import os
    import socket

    def hold_backend(request, client_address, server):
        lines = request.makefile("rb")
        assert lines.readline() == b"go\\n"
        backend = ("127.0.0.1", int(os.environ["BACKEND_PORT"]))
        conns = [socket.create_connection(backend) for _ in range({BACKEND_SOCKETS})]
        request.sendall(b"ready\\n")
        assert lines.readline() == b"finish\\n"
        for conn in conns:
            conn.shutdown(socket.SHUT_WR)
            conn.close()
        request.sendall(b"done\\n")
    """
)


@contextmanager
def own_process_group(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Start ``args`` as the leader of a new process group; on the way out, kill what is left of that group.

    The group outlives its leader while a forked child of the leader lives, so
    a test that fails half-way leaves no child behind either.
    """
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):  # every process of the group has exited
            os.killpg(process.pid, signal.SIGKILL)  # our group only: its id is the leader's pid
        process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


def test_signal_to_the_process_group_writes_nothing_into_a_fork_childs_sockets(tmp_path: Path) -> None:
    """Ctrl-C to ``sockwork serve --dispatcher fork``: the child's backend sockets get no stray b'\\x02'."""
    (tmp_path / "backend_handler.py").write_text(HANDLER_MODULE)
    with socket.create_server(("127.0.0.1", 0)) as backend:
        env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                   BACKEND_PORT=str(backend.getsockname()[1]))
        args = [sys.executable, "-m", "sockwork", "serve", "--dispatcher", "fork",
                "--transport", "tcp://127.0.0.1:0", "--handler", "backend_handler:hold_backend"]
        with own_process_group(args, env) as server:
            line = server.stdout.readline()  # type: ignore[union-attr]
            started = re.search(r"on tcp://127\.0\.0\.1:(\d+) ", line)
            assert started, line + server.stderr.read()  # type: ignore[union-attr]
            with ExitStack() as held, socket.create_connection(("127.0.0.1", int(started.group(1))),
                                                               timeout=30) as client:
                client.sendall(b"go\n")
                assert client.recv(100) == b"ready\n", server.stderr.read()  # type: ignore[union-attr]
                conns = [held.enter_context(backend.accept()[0]) for _ in range(BACKEND_SOCKETS)]
                # kill() marks the signal pending in every process of the group before
                # it returns; the child acts on it (its C-level handler writes to the
                # wake-up fd, if one is set) before its recv() below can return.
                os.killpg(server.pid, signal.SIGINT)
                client.sendall(b"finish\n")
                reply = client.recv(100)
                received = []
                for conn in conns:
                    conn.settimeout(30)
                    received.append(b"".join(iter(lambda c=conn: c.recv(100), b"")))
            assert server.wait(timeout=30) == 0  # SIGINT to the parent: a graceful stop
            stderr = server.stderr.read()  # type: ignore[union-attr]
    assert received == [b""] * BACKEND_SOCKETS, stderr
    assert reply == b"done\n", stderr
    assert "signal wakeup fd" not in stderr


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter's main thread (where a fork has no other thread to worry about)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=30, start_new_session=True)


PARENT_PLUMBING = """
    import json, os, signal, socket, sys
    from sockwork import forking

    def parent_handler(signum, frame):
        raise SystemExit(f"the parent's handler ran in {os.getpid()}")

    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGTERM, parent_handler)   # as `sockwork serve` does
    signal.signal(signal.SIGUSR1, parent_handler)   # an application's own
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})  # as a thread waiting in sigwait() would
    report_r, report_w = os.pipe()
"""


def test_fork_gives_the_child_none_of_the_parents_signal_plumbing() -> None:
    """In the child: no wake-up fd, the parent's caught signals ignored, nothing blocked; the parent keeps its own."""
    result = run_python(PARENT_PLUMBING + """
    pid = forking.fork()
    if pid == 0:
        name = lambda handler: handler.name if isinstance(handler, signal.Handlers) else handler.__name__
        state = {
            "wakeup_fd": signal.set_wakeup_fd(-1),
            "handlers": {s.name: name(signal.getsignal(s))
                         for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGCHLD)},
            "blocked": sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())),
        }
        os.write(report_w, json.dumps(state).encode())
        os._exit(0)
    os.close(report_w)
    child = json.loads(os.read(report_r, 10000))
    assert os.waitpid(pid, 0)[1] == 0
    parent = {
        "wakeup_fd": signal.set_wakeup_fd(wake_w.fileno()) == wake_w.fileno(),
        "blocked": sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())),
        "SIGTERM": signal.getsignal(signal.SIGTERM).__name__,
    }
    print(json.dumps({"child": child, "parent": parent}))
    """)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["child"] == {
        "wakeup_fd": -1,
        "handlers": {"SIGINT": "_ignore", "SIGTERM": "_ignore", "SIGUSR1": "_ignore",
                     "SIGHUP": "SIG_IGN", "SIGCHLD": "SIG_DFL"},
        "blocked": [],
    }
    assert report["parent"] == {"wakeup_fd": True, "blocked": ["SIGUSR2"], "SIGTERM": "parent_handler"}


def test_a_signal_between_fork_and_the_childs_first_line_waits_for_prepare_child() -> None:
    """A signal reaching the child inside os.fork() waits until the child is ready: nothing written, nothing run."""
    result = run_python(PARENT_PLUMBING + """
    # Runs in the child inside os.fork(), before fork() returns: the earliest a signal can come.
    os.register_at_fork(after_in_child=lambda: os.kill(os.getpid(), signal.SIGTERM))
    pid = forking.fork()
    if pid == 0:
        os._exit(0)
    status = os.waitpid(pid, 0)[1]
    try:
        stray = wake_r.recv(100)
    except BlockingIOError:
        stray = b""
    print(json.dumps({"status": status, "stray": stray.hex()}))
    """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": 0, "stray": ""}, result.stderr


def test_a_child_that_cannot_be_prepared_exits_instead_of_returning() -> None:
    """If prepare_child() fails, the child says why and exits with CHILD_SETUP_FAILED.

    It never runs the parent's code."""
    result = run_python("""
    import os
    from sockwork import forking

    def broken() -> None:
        raise RuntimeError("no signals here")

    forking.prepare_child = broken
    pid = forking.fork()
    if pid == 0:
        print("the child returned into its parent's code", flush=True)
        os._exit(0)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    assert result.stdout.split() == [str(forking.CHILD_SETUP_FAILED)]
    assert "cannot start: RuntimeError('no signals here')" in result.stderr


def test_flush_stdio_ignores_broken_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed stdout does not stop a fork or a child's exit."""
    broken = io.StringIO()
    broken.close()
    monkeypatch.setattr(sys, "stdout", broken)
    monkeypatch.setattr(sys, "stderr", None)
    forking.flush_stdio()


def test_public_api() -> None:
    """sockwork.forking exports exactly its documented functions; the fork dispatcher still offers flush_stdio."""
    from sockwork.strategies import fork as fork_dispatcher

    assert forking.__all__ == ["CHILD_SETUP_FAILED", "flush_stdio", "fork", "prepare_child"]
    assert fork_dispatcher.flush_stdio is forking.flush_stdio


# Before each fork, the process writes how many threads it has (Linux: one entry per thread).
COUNT_THREADS_AT_FORK = (
    "import os; os.register_at_fork(before=lambda: os.write(2, b'threads at fork: %d\\n'"
    " % len(os.listdir('/proc/self/task'))))"
)


def threads_at_fork(stderr: str) -> list[int]:
    return [int(n) for n in re.findall(r"^threads at fork: (\d+)$", stderr, re.MULTILINE)]


def echo_once(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: conn.recv(1000), b""))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_sockwork_serve_forks_from_a_single_threaded_process() -> None:
    """``sockwork serve --dispatcher fork`` with every limit on: no other thread exists at any fork.

    A lock held by another thread at fork() stays locked forever in the child
    (Python 3.12+ warns); sockwork starts no thread in a fork server's process.
    """
    code = f"{COUNT_THREADS_AT_FORK}; import sys; from sockwork._cli import main; sys.exit(main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, "serve", "--dispatcher", "fork", "--transport", "tcp://127.0.0.1:0",
            "--option", "limits.request_timeout=30", "--option", "limits.idle_timeout=30",
            "--option", "limits.max_connections=2", "--option", "limits.stats_interval=0.01",
            "--log-level", "DEBUG"]
    with own_process_group(args, dict(os.environ)) as server:
        line = server.stdout.readline()  # type: ignore[union-attr]
        started = re.search(r"on tcp://127\.0\.0\.1:(\d+) ", line)
        assert started, line + server.stderr.read()  # type: ignore[union-attr]
        port = int(started.group(1))
        replies = [echo_once(port, b"request %d" % i) for i in range(4)]
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        stderr = server.stderr.read()  # type: ignore[union-attr]
    assert replies == [b"request %d" % i for i in range(4)]
    assert threads_at_fork(stderr) == [1, 1, 1, 1], stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_legacy_forking_server_forks_from_a_single_threaded_process() -> None:
    """``socketserver.ForkingTCPServer`` served from the main thread: no other thread exists at any fork."""
    code = COUNT_THREADS_AT_FORK + textwrap.dedent("""
    from sockwork import socketserver

    class Echo(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.read())

    with socketserver.ForkingTCPServer(("127.0.0.1", 0), Echo) as server:
        print(server.server_address[1], flush=True)
        for _ in range(3):
            server.handle_request()
    """)
    with own_process_group([sys.executable, "-c", code], dict(os.environ)) as server:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        replies = [echo_once(port, b"request %d" % i) for i in range(3)]
        assert server.wait(timeout=30) == 0
        stderr = server.stderr.read()  # type: ignore[union-attr]
    assert replies == [b"request %d" % i for i in range(3)]
    assert threads_at_fork(stderr) == [1, 1, 1], stderr
