"""Side listeners: tiny TCP endpoints a server answers in its own loop, beside its clients.

    probe ──► side listener ──► (in the server's loop) accept, read the request head, one answer, close

They carry what operators and balancers ask a server about itself: HAProxy's
agent check (a line on connect), HTTP health probes (``/healthz``,
``/readyz``), metrics. A probe never takes one of the handlers' workers, and
a slow or silent probe never blocks the loop.

The whole API::

    listener = SideListener("health", ("127.0.0.1", 0), answer, reads_request=True)
                                     # (or the descriptor of a bound listening socket, taken over)
    listener.open()                  # binds now (a BindError names the listener); .address has the real port
    listener.attach(host)            # host: anything with add_reader, remove_reader, call_later (a Loop,
                                     # a DispatcherHost), whose thread then answers
    listener.close()                 # idempotent: the listener and every probe connection it holds
    listener.close_in_child()        # in a forked child: drop the descriptors, touch nothing else

``answer(request) -> bytes`` gets the request head (the bytes up to the
first blank line, or to the end of what the client sent; a head longer than
MAX_HEAD gets an HTTP 400 without ``answer``) when ``reads_request`` is true, or ``b""`` at
accept when it is false (the agent check speaks first), and returns the
bytes to send; the connection is closed after them. ``http_answer(routes)``
makes an ``answer`` for ``GET`` requests from ``{path: route}``, where
``route()`` returns ``(status, content_type, body)``.

Rule 1: the loop never blocks here: sockets are non-blocking; an answer
larger than the socket buffer is sent in pieces from loop timers.
Rule 2: bounded: at most MAX_PROBES connections at once (more are closed at
accept), each closed PROBE_TIMEOUT seconds after accept whatever it did.
Rule 3: answered where the loop runs: with an ``inline`` handler between its
requests; not at all once the loop has stopped (a probe then times out or is
refused, which balancers and kubelets read as "not ready").
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Protocol, final

from .errors import BindError

__all__ = ["SideListener", "http_answer", "http_response"]

logger = logging.getLogger("sockwork")

MAX_PROBES = 64
"""Probe connections held at once; more are closed at accept."""

PROBE_TIMEOUT = 2.0
"""Seconds a probe connection may take, from accept to its answer sent."""

MAX_HEAD = 8192
"""The longest request head read (bytes); a longer one is answered as a bad request."""

_RESEND = 0.005  # seconds between pieces of an answer larger than the socket buffer


class LoopHost(Protocol):
    """What a side listener needs of the loop that answers it."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> None: ...


@final
class SideListener:
    """A TCP listener whose connections each get one answer (see the module's docstring)."""

    def __init__(
        self, name: str, address: tuple[str, int] | int, answer: Callable[[bytes], bytes], *, reads_request: bool,
    ) -> None:
        self.name = name
        self._requested = address
        self._answer = answer
        self._reads_request = reads_request
        self._socket: socket.socket | None = None
        self._host: LoopHost | None = None
        self._probes: dict[int, _Probe] = {}

    def __repr__(self) -> str:
        return f"<SideListener {self.name} {self.url if self._socket is not None else 'closed'}>"

    @property
    def address(self) -> tuple[str, int]:
        if self._socket is None:
            raise RuntimeError(f"the {self.name} listener is not open")
        host, port = self._socket.getsockname()[:2]
        return host, port

    def fileno(self) -> int:
        if self._socket is None:
            raise RuntimeError(f"the {self.name} listener is not open")
        return self._socket.fileno()

    @property
    def url(self) -> str:
        host, port = self.address
        return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"

    def open(self) -> None:
        if isinstance(self._requested, int):  # inherited, bound and listening (an upgrade in place)
            self._socket = socket.socket(fileno=self._requested)
            self._socket.setblocking(False)
            return
        host, port = self._requested
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(MAX_PROBES)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise BindError(exc.errno, f"couldn't bind the {self.name} listener to {where}: "
                                       f"{exc.strerror or exc}") from exc
        self._socket = sock

    def attach(self, host: LoopHost) -> None:
        """Answer from ``host``'s loop from now on (call it in that loop's thread, or before it runs)."""
        if self._socket is None:
            raise RuntimeError(f"the {self.name} listener is not open")
        self._host = host
        host.add_reader(self._socket.fileno(), self._accept)

    def close(self) -> None:
        for probe in list(self._probes.values()):
            self._end(probe)
        sock, self._socket = self._socket, None
        if sock is None:
            return
        if self._host is not None:
            with contextlib.suppress(KeyError, ValueError, RuntimeError):  # the loop's selector is closed already
                self._host.remove_reader(sock.fileno())
        sock.close()

    def close_in_child(self) -> None:
        """In a forked child: close this process's copies; the parent's loop goes on answering."""
        for probe in self._probes.values():
            probe.sock.close()
        self._probes.clear()
        self._host = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # ---- In the loop -------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._socket is not None and self._host is not None
        for _ in range(MAX_PROBES):
            try:
                conn, _ = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                 errno.ENOMEM):
                    return  # a probe that left, or no descriptor to spare: the next probe tries again
                raise
            if len(self._probes) >= MAX_PROBES:
                conn.close()
                continue
            conn.setblocking(False)
            probe = self._probes[conn.fileno()] = _Probe(conn, time.monotonic() + PROBE_TIMEOUT)
            self._host.call_later(PROBE_TIMEOUT, lambda probe=probe: self._end(probe))  # type: ignore[misc]
            if self._reads_request:
                self._host.add_reader(conn.fileno(), lambda probe=probe: self._read(probe))  # type: ignore[misc]
                probe.reading = True
            else:
                self._reply(probe, b"")

    def _read(self, probe: _Probe) -> None:
        try:
            chunk = probe.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._end(probe)
            return
        probe.head += chunk
        end = probe.head.find(b"\r\n\r\n")
        if end < 0:
            end = probe.head.find(b"\n\n")
        if chunk and end < 0 and len(probe.head) < MAX_HEAD:
            return  # more to come
        self._stop_reading(probe)
        if end < 0 and chunk:
            probe.out = http_response(400, "text/plain", b"request head too long\n")
            self._send(probe)
            return
        self._reply(probe, probe.head[:end] if end >= 0 else probe.head)

    def _reply(self, probe: _Probe, request: bytes) -> None:
        try:
            probe.out = self._answer(request)
        except Exception:
            logger.exception("the %s listener's answer raised", self.name)
            probe.out = http_response(500, "text/plain", b"internal error\n") if self._reads_request else b""
        self._send(probe)

    def _send(self, probe: _Probe) -> None:
        if probe.sock.fileno() < 0:
            return  # ended meanwhile (its timeout)
        try:
            sent = probe.sock.send(probe.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._end(probe)
            return
        probe.out = probe.out[sent:]
        if probe.out and time.monotonic() < probe.deadline:
            assert self._host is not None
            self._host.call_later(_RESEND, lambda: self._send(probe))
            return
        self._end(probe)

    def _stop_reading(self, probe: _Probe) -> None:
        if probe.reading and self._host is not None:
            probe.reading = False
            with contextlib.suppress(KeyError, ValueError, RuntimeError):  # the loop's selector is closed already
                self._host.remove_reader(probe.sock.fileno())

    def _end(self, probe: _Probe) -> None:
        if self._probes.get(probe.fd) is not probe:
            return  # ended already (answered before its timeout)
        self._stop_reading(probe)
        del self._probes[probe.fd]
        probe.sock.close()


@final
class _Probe:
    __slots__ = ("deadline", "fd", "head", "out", "reading", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.deadline = deadline
        self.head = b""
        self.out = b""
        self.reading = False


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


def http_response(status: int, content_type: str, body: bytes) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


Route = Callable[[], tuple[int, str, bytes]]


def http_answer(routes: Mapping[str, Route]) -> Callable[[bytes], bytes]:
    """An ``answer`` for a side listener that serves ``GET``/``HEAD`` on ``routes`` (a query string is ignored)."""

    def answer(request: bytes) -> bytes:
        line = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return http_response(400, "text/plain", b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0].decode("latin-1")
        route = routes.get(target)
        if route is None:
            known = ", ".join(sorted(routes))
            return http_response(404, "text/plain", f"not found; paths: {known}\n".encode())
        if method not in (b"GET", b"HEAD"):
            return http_response(405, "text/plain", b"only GET and HEAD\n")
        status, content_type, body = route()
        response = http_response(status, content_type, body)
        return response[: len(response) - len(body)] if method == b"HEAD" else response

    return answer
