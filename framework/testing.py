"""Helpers for testing servers and components, used by sockwork's own suites.

- :func:`serving` runs a Server's loop in a thread for the length of a
  ``with`` block, then closes it and joins the thread;
- :func:`client` opens a socket connected to a server, of the transport's
  kind (a Unix datagram client is bound to a temporary path so it gets replies);
- :func:`exchange` sends one payload and returns the whole reply;
- :func:`eventually` waits (bounded) for a condition, such as a counter
  the server updates just after the client saw its reply;
- :class:`ResourceSnapshot` records threads, descriptors and child processes,
  and names whatever a test left behind;
- :class:`HandlerForms` holds one test handler in its blocking and its async
  form; :func:`dispatcher_runs_async` says which form a dispatcher serves.

Everything talks to loopback or Unix sockets only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, final

import attrs

from ._server import Server

if TYPE_CHECKING:
    from .registry import Registry

__all__ = [
    "HandlerForms", "ResourceSnapshot", "client", "dispatcher_runs_async", "eventually", "exchange",
    "exchange_address", "recv_until_eof", "serving",
]


@final
@attrs.frozen
class HandlerForms:
    """One test handler in both forms: blocking (``handler(request, client_address, server)``)
    and async (:mod:`sockwork.aio`). The conformance kit passes these, and
    ``sockwork_make_server`` serves the form its dispatcher runs."""

    blocking: Callable[..., object]
    asynchronous: Callable[..., object]

    def pick(self, runs_async: bool) -> Callable[..., object]:
        return self.asynchronous if runs_async else self.blocking


def dispatcher_runs_async(registry: Registry, name: str) -> bool:
    """Whether the dispatcher registered as ``name`` (default options) serves async handlers."""
    from .aio import runs_async
    from .assembly import build_component

    dispatcher = build_component(registry, "dispatcher", registry.get("dispatcher", name), None)
    try:
        return runs_async(dispatcher)
    finally:
        dispatcher.close()


def eventually(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds (checked every few milliseconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


@contextlib.contextmanager
def serving(server: Server) -> Iterator[Server]:
    """Run ``server.serve_forever()`` in a thread; close the server on exit."""
    loop_error: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_forever()
        except BaseException as exc:  # reported in the test's thread below
            loop_error.append(exc)

    thread = threading.Thread(target=run, name="sockwork-test-loop")
    thread.start()
    # Serving has begun (dispatcher started) before the test goes on: a test that
    # spawns processes must not race with a dispatcher forking its workers.
    while not server.wait_serving(0.05) and thread.is_alive():
        pass
    try:
        yield server
    finally:
        server.close()
        thread.join()
    if loop_error:
        raise AssertionError("serve_forever() raised") from loop_error[0]


@contextlib.contextmanager
def client(server: Server, timeout: float = 10.0) -> Iterator[socket.socket]:
    """A socket connected to ``server``; datagram sockets are connected too."""
    transport = server.transport
    kind = socket.SOCK_STREAM if transport.kind == "stream" else socket.SOCK_DGRAM
    sock = socket.socket(transport.family, kind)
    directory = None
    try:
        if transport.family == socket.AF_UNIX and kind == socket.SOCK_DGRAM:
            directory = tempfile.mkdtemp(prefix="sockwork-client-")
            sock.bind(os.path.join(directory, "client.sock"))
        # Connect blocking, as most clients do: a Unix stream connect with a
        # timeout fails with EAGAIN instead of waiting when the backlog is full.
        sock.connect(server.address)
        sock.settimeout(timeout)
        yield sock
    finally:
        sock.close()
        if directory is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, "client.sock"))
            os.rmdir(directory)


def exchange(server: Server, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send ``payload`` and return the reply.

    Stream: sends while reading (so large payloads cannot deadlock), closes
    the sending side and reads until the server closes. Datagram: one datagram
    out, one datagram back.
    """
    with client(server, timeout) as sock:
        if sock.type != socket.SOCK_STREAM:
            sock.send(payload)
            return sock.recv(1 << 17)
        return _exchange_stream(sock, payload)


def exchange_address(address: str | bytes | tuple[Any, ...], payload: bytes, timeout: float = 10.0) -> bytes:
    """Like :func:`exchange` for a TCP or Unix stream server known only by its address."""
    family = socket.AF_UNIX if isinstance(address, (str, bytes)) else (
        socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        sock.settimeout(timeout)
        return _exchange_stream(sock, payload)


def _exchange_stream(sock: socket.socket, payload: bytes) -> bytes:
    sender = threading.Thread(target=_send_and_close_write, args=(sock, payload))
    sender.start()
    try:
        return recv_until_eof(sock)
    finally:
        sender.join()


def _send_and_close_write(sock: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):  # the reply side reports what went wrong
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)


def recv_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


@final
@attrs.frozen
class ResourceSnapshot:
    """Threads, open descriptors and child processes of this process, at one moment."""

    threads: frozenset[str]
    fds: frozenset[int]
    children: frozenset[int]

    @classmethod
    def take(cls) -> ResourceSnapshot:
        return cls(
            threads=frozenset(f"{t.name} ({t.ident})" for t in threading.enumerate()),
            fds=_open_fds(),
            children=_child_pids(),
        )

    def leaks(self, settle: float = 2.0) -> list[str]:
        """What exists now and did not in this snapshot, after up to ``settle`` s.

        Threads that have been joined are gone at once; the short settling
        time only covers threads that are finishing their last lines.
        """
        deadline = time.monotonic() + settle
        while True:
            now = ResourceSnapshot.take()
            found = [
                *(f"thread {t}" for t in sorted(now.threads - self.threads)),
                *(f"fd {fd} -> {_describe_fd(fd)}" for fd in sorted(now.fds - self.fds)),
                *(f"child process {pid}" for pid in sorted(now.children - self.children)),
            ]
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.02)


def _open_fds() -> frozenset[int]:
    directory = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    fds = set()
    for name in os.listdir(directory):
        fd = int(name)
        with contextlib.suppress(OSError):
            os.fstat(fd)  # the listing's own descriptor is closed by now
            fds.add(fd)
    return frozenset(fds)


def _describe_fd(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def _child_pids() -> frozenset[int]:
    """Children, zombies included (from /proc where available)."""
    pid = os.getpid()
    task_dir = f"/proc/{pid}/task"
    if sys.platform.startswith("linux") and os.path.isdir(task_dir):
        pids: set[int] = set()
        for tid in os.listdir(task_dir):
            with contextlib.suppress(OSError), open(f"{task_dir}/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        return frozenset(pids)
    try:  # elsewhere: any child at all? (reaps a zombie, but reports it)
        found, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return frozenset()
    return frozenset({found or -1})

