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
- :class:`ResourceSnapshot` records threads, descriptors and child processes,
  and names whatever a test left behind.

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
from typing import Any, final

import attrs

from ._server import Server

__all__ = ["Clients", "ResourceSnapshot", "TLSClient", "client", "exchange", "exchange_address", "recv_until_eof",
           "serving"]

Wrap = Callable[[socket.socket], Any]
"""Turns a connected client socket into what talks to the server (a :class:`TLSClient`, say)."""


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


_RECORD_HEADER = 5  # a TLS record: type (1), version (2), length (2), then the length's bytes


@final
class TLSClient:
    """A TLS client over a connected socket, through memory BIOs, that behaves like a plain socket.

    What ``ssl.SSLSocket`` cannot do and a test needs:

    - connecting does not wait for the server: the handshake runs in a
      helper thread, and what is sent before it ends is kept and sent after
      it, as the kernel keeps bytes for a server that has not accepted yet
      (a test may open several clients to a server that serves one at a time);
    - ``shutdown(SHUT_WR)`` sends close_notify and the client keeps reading
      (a half-close, as with a plain socket);
    - one thread may send while another receives, and
      ``recv(n, socket.MSG_WAITALL)`` works.

    It reads the socket one TLS record at a time, so no decrypted byte waits
    inside it where a selector on :meth:`fileno` would miss it (as long as
    each read asks for at least a record's worth). A connection that ends
    without close_notify reads as an end of stream. ``close()`` ends the
    helper thread.
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
        self._ready = threading.Event()
        self._eof = False
        self._handshaker = threading.Thread(target=self._handshake, name="sockwork-tls-client-handshake",
                                            daemon=True)
        self._handshaker.start()

    def _handshake(self) -> None:
        try:
            while True:
                try:
                    with self._state:
                        self._tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    if not self._read_record():
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
                if out:
                    self.sock.sendall(out)
        except BaseException as exc:  # reported to whoever reads next
            self._failed = exc
        finally:
            self._ready.set()

    def _wait(self) -> None:
        """Until the handshake has ended; raises if it failed."""
        if not self._ready.wait(self.sock.gettimeout()):
            raise TimeoutError("the TLS handshake did not complete in time")
        if self._failed is not None:
            raise ConnectionError(f"the TLS handshake failed: {self._failed!r}") from self._failed

    @property
    def version(self) -> str | None:
        self._wait()
        return self._tls.version()

    def selected_alpn_protocol(self) -> str | None:
        self._wait()
        return self._tls.selected_alpn_protocol()

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def _flush(self) -> None:
        with self._sending:
            with self._state:
                data = self._outgoing.read()
            if data:
                self.sock.sendall(data)

    def _read_record(self) -> bool:
        """Feed one whole TLS record from the socket to the SSL object; False at the end of the stream."""
        header = self._recv_exactly(_RECORD_HEADER)
        body = self._recv_exactly(int.from_bytes(header[3:5], "big")) if len(header) == _RECORD_HEADER else b""
        with self._state:
            if header:
                self._incoming.write(header + body)
            if len(header) < _RECORD_HEADER or len(body) < int.from_bytes(header[3:5], "big"):
                self._incoming.write_eof()
                return False
        return True

    def _recv_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return data

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
        self._wait()
        data = b""
        while len(data) < size:
            chunk = self._recv_some(size - len(data))
            if not chunk:
                break
            data += chunk
            if not flags & socket.MSG_WAITALL:
                break
        return data

    def _recv_some(self, size: int) -> bytes:
        while not self._eof:
            try:
                with self._state:
                    return self._tls.read(size)
            except ssl.SSLWantReadError:
                if not self._read_record():
                    continue  # the SSL object now knows of the end: the next read says how it ended
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True  # close_notify, or the end of the stream without one: both end the stream
        return b""

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
                # close_notify is written; the server's comes later, read by recv()
                with contextlib.suppress(ssl.SSLWantReadError):
                    self._tls.unwrap()
                out = self._outgoing.read()
            self.sock.sendall(out)

    def close(self) -> None:
        if self._handshaker.is_alive():
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # ends the helper's wait for the server
            self._handshaker.join()
        self.sock.close()

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

