"""Helpers for testing servers and components, used by sockwork's own suites.

- :func:`serving` runs a Server's loop in a thread for the length of a
  ``with`` block, then closes it and joins the thread;
- :func:`client` opens a socket connected to a server, of the transport's
  kind (a Unix datagram client is bound to a temporary path so it gets replies);
- :func:`exchange` sends one payload and returns the whole reply;
- :class:`Clients` does both through a transport's ``loopback_client``
  (TLS, a PROXY header first), and :class:`TLSClient` is a blocking TLS
  client that can half-close (close_notify) and still read, as a plain
  socket's ``shutdown(SHUT_WR)`` does;
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
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, final

import attrs

from ._server import Server
from .aio import runs_async
from .assembly import build_component

if TYPE_CHECKING:
    from .registry import Registry

__all__ = [
    "Clients", "HandlerForms", "ResourceSnapshot", "TLSClient", "client", "dispatcher_runs_async", "eventually",
    "exchange", "exchange_address", "recv_until_eof", "serving",
]

Wrap = Callable[[socket.socket], Any]
"""Turns a connected client socket into what talks to the server (a :class:`TLSClient`, say)."""


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
def client(server: Server, timeout: float = 10.0, wrap: Wrap | None = None) -> Iterator[Any]:
    """A socket connected to ``server``; datagram sockets are connected too.

    ``wrap(sock)``, if given, is applied once connected (with the timeout set)
    and its result is what the block gets and what is closed afterwards.
    """
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
        if wrap is None:
            yield sock
        else:
            wrapped = wrap(sock)
            try:
                yield wrapped
            finally:
                wrapped.close()
    finally:
        sock.close()
        if directory is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, "client.sock"))
            os.rmdir(directory)


def exchange(server: Server, payload: bytes, timeout: float = 10.0, wrap: Wrap | None = None) -> bytes:
    """Send ``payload`` and return the reply.

    Stream: sends while reading (so large payloads cannot deadlock), closes
    the sending side and reads until the server closes. Datagram: one datagram
    out, one datagram back.
    """
    with client(server, timeout, wrap) as sock:
        if sock.type != socket.SOCK_STREAM:
            sock.send(payload)
            reply: bytes = sock.recv(1 << 17)
            return reply
        return _exchange_stream(sock, payload)


def exchange_address(address: str | bytes | tuple[Any, ...], payload: bytes, timeout: float = 10.0) -> bytes:
    """Like :func:`exchange` for a TCP or Unix stream server known only by its address."""
    family = socket.AF_UNIX if isinstance(address, (str, bytes)) else (
        socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        sock.settimeout(timeout)
        return _exchange_stream(sock, payload)


def _exchange_stream(sock: Any, payload: bytes) -> bytes:
    sender = threading.Thread(target=_send_and_close_write, args=(sock, payload))
    sender.start()
    try:
        return recv_until_eof(sock)
    finally:
        sender.join()


def _send_and_close_write(sock: Any, payload: bytes) -> None:
    with contextlib.suppress(OSError):  # the reply side reports what went wrong
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)


def recv_until_eof(sock: Any) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


@final
class Clients:
    """Connecting to a server as its transport expects: ``wrap`` is the transport's ``loopback_client``.

    The conformance kit gets one from the ``sockwork_client`` fixture, so a
    transport that changes the wire format (TLS, a PROXY header) is tested
    by the same tests as plain TCP.
    """

    def __init__(self, wrap: Wrap | None = None) -> None:
        self.wrap = wrap

    def connect(self, server: Any, timeout: float = 10.0) -> contextlib.AbstractContextManager[Any]:
        """Like :func:`client`."""
        return client(server, timeout, self.wrap)

    def exchange(self, server: Any, payload: bytes, timeout: float = 10.0) -> bytes:
        """Like :func:`exchange`."""
        return exchange(server, payload, timeout, self.wrap)


@final
class TLSClient:
    """A TLS client over a connected socket that behaves like a plain socket, for tests.

    What ``ssl.SSLSocket`` cannot do and a test needs:

    - connecting does not wait for the server: the handshake runs in a
      helper thread, and what is sent before it ends is kept and sent after
      it, as the kernel keeps bytes for a server that has not accepted yet
      (a test may open several clients to a server that serves one at a time);
    - :meth:`fileno` is readable exactly when application data (or the end
      of the stream) is there to ``recv``, as with a plain socket: the helper
      thread decrypts everything that arrives, so TLS's own records (session
      tickets after the handshake) never wake a selector for nothing;
    - ``shutdown(SHUT_WR)`` sends close_notify and the client keeps reading
      (a half-close, as with a plain socket);
    - one thread may send while another receives, and
      ``recv(n, socket.MSG_WAITALL)`` works.

    A connection that ends without close_notify reads as an end of stream.
    ``recv`` waits at most the socket's timeout (``TimeoutError``). ``close()``
    ends the helper thread.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str | None = None) -> None:
        self.sock = sock
        self.type, self.family = sock.type, sock.family
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._state = threading.Lock()  # the SSL object: never used by two threads at once
        self._sending = threading.Lock()  # records leave in the order they were made
        self._established = False
        self._early: list[bytes] = []  # sent before the handshake ended
        self._early_shutdown = False
        self._failed: BaseException | None = None
        self._ready = threading.Event()  # the handshake has ended, well or not
        self._received = threading.Condition()
        self._buffer = bytearray()  # decrypted, not yet recv'd
        self._eof = False
        # Readable (one byte in it) while there is something to recv: what fileno() shows a selector.
        self._signal_r, self._signal_w = socket.socketpair()
        self._signalled = False
        self._helper = threading.Thread(target=self._run, name="sockwork-tls-client", daemon=True)
        self._helper.start()

    # ---- The helper thread: handshake, then decrypt whatever arrives ----------------------

    def _run(self) -> None:
        try:
            self._handshake()
        except BaseException as exc:  # reported to whoever reads next
            self._failed = exc
            self._ready.set()
            self._deliver(b"", eof=True)
            return
        self._ready.set()
        try:
            while True:
                data = self.sock.recv(65536)
                with self._state:
                    if data:
                        self._incoming.write(data)
                    else:
                        self._incoming.write_eof()
                    plain, ended = self._decrypt()
                self._deliver(plain, eof=ended or not data)
                if ended or not data:
                    return
        except OSError:  # closed under us (close()), or reset: the end of the stream
            self._deliver(b"", eof=True)

    def _handshake(self) -> None:
        while True:
            try:
                with self._state:
                    self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                with self._state:
                    if data:
                        self._incoming.write(data)
                    else:
                        raise ConnectionResetError("the server closed the connection during the TLS handshake") \
                            from None
        with self._sending:
            with self._state:
                self._established = True
                for data in self._early:
                    self._tls.write(data)
                if self._early_shutdown:
                    with contextlib.suppress(ssl.SSLWantReadError):
                        self._tls.unwrap()
                out = self._outgoing.read()
                plain, ended = self._decrypt()  # application data that came with the handshake's end
            if out:
                self.sock.sendall(out)
        self._deliver(plain, eof=ended)

    def _decrypt(self) -> tuple[bytes, bool]:
        """Everything the SSL object can decrypt now (call with ``_state`` held), and whether it ended."""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                return b"".join(chunks), False
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b"".join(chunks), True  # close_notify, or the end of the stream without one
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)

    def _deliver(self, data: bytes, eof: bool) -> None:
        with self._received:
            self._buffer += data
            self._eof = self._eof or eof
            if (self._buffer or self._eof) and not self._signalled:
                self._signal_w.send(b"x")
                self._signalled = True
            self._received.notify_all()

    def _flush(self) -> None:
        with self._sending:
            with self._state:
                data = self._outgoing.read()
            if data:
                self.sock.sendall(data)

    # ---- The socket-like side -------------------------------------------------------------

    def _wait_handshake(self) -> None:
        if not self._ready.wait(self.sock.gettimeout()):
            raise TimeoutError("the TLS handshake did not complete in time")
        if self._failed is not None:
            raise ConnectionError(f"the TLS handshake failed: {self._failed!r}") from self._failed

    @property
    def version(self) -> str | None:
        self._wait_handshake()
        return self._tls.version()

    def selected_alpn_protocol(self) -> str | None:
        self._wait_handshake()
        return self._tls.selected_alpn_protocol()

    def fileno(self) -> int:
        return self._signal_r.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def send(self, data: bytes) -> int:
        with self._sending:
            with self._state:
                if not self._established:
                    self._early.append(bytes(data))
                    return len(data)
                self._tls.write(data)
                out = self._outgoing.read()
            self.sock.sendall(out)
        return len(data)

    sendall = send

    def recv(self, size: int, flags: int = 0) -> bytes:
        if flags & ~socket.MSG_WAITALL:
            raise ValueError(f"TLSClient.recv: only MSG_WAITALL is supported, got flags={flags:#x}")
        want = size if flags & socket.MSG_WAITALL else 1
        timeout = self.sock.gettimeout()
        with self._received:
            if not self._received.wait_for(lambda: len(self._buffer) >= want or self._eof, timeout):
                raise TimeoutError("timed out")
            if not self._buffer and self._failed is not None:
                raise ConnectionError(f"the TLS handshake failed: {self._failed!r}") from self._failed
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            if not self._buffer and not self._eof and self._signalled:
                self._signal_r.recv(1)
                self._signalled = False
            return data

    def shutdown(self, how: int) -> None:
        """``SHUT_WR``: send close_notify, keep reading. ``SHUT_RD``/``SHUT_RDWR``: the socket's own."""
        if how != socket.SHUT_WR:
            self.sock.shutdown(how)
            return
        with self._sending:
            with self._state:
                if not self._established:
                    self._early_shutdown = True
                    return
                # close_notify is written; the server's comes later, read by the helper
                with contextlib.suppress(ssl.SSLWantReadError):
                    self._tls.unwrap()
                out = self._outgoing.read()
            self.sock.sendall(out)

    def close(self) -> None:
        if self._helper.is_alive():
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # ends the helper's wait for the server
            self._helper.join()
        self.sock.close()
        self._signal_r.close()
        self._signal_w.close()

    def __enter__(self) -> TLSClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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

