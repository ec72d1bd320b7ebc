"""Production limits and counters: what bounds a server, and what it has done.

- :class:`Limits`: the server-wide connection cap and the timeouts against
  slow clients. Servers assembled from parts get bounded defaults; the legacy
  ``socketserver`` classes use :meth:`Limits.none` (what socketserver did).
- :class:`ServerStats`: a snapshot of the counters (``server.stats``).
- :class:`Outcome`: how one request ended.

Rule 1: counters change under one lock and are read as a whole snapshot, so a
reader in another thread never sees a half-updated set.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import itertools
import math
import os
import socket
import threading
import time
from typing import Any, Literal, final

import attrs

from .validators import off_is_none, optional_seconds

__all__ = ["Limits", "Outcome", "ServerStats", "WorkerExit"]


class Outcome(enum.IntEnum):
    """How a request ended. (A ``fork`` child's exit status is not this value: see
    ``sockwork.strategies.fork.CHILD_EXIT``, so that a handler's own ``os._exit(2)`` is a crash.)"""

    COMPLETED = 0
    FAILED = 1
    TIMED_OUT = 2
    DISCONNECTED = 3
    """The client went away mid-request (connection reset, broken pipe): not a handler failure."""
    REFUSED = 4
    """Closed before any handler ran, for the client's fault: it failed a connection stage (a bad
    PROXY header, a failed TLS handshake) or sent a message larger than allowed."""


class WorkerExit(enum.IntEnum):
    """Why a supervisor's worker process ended; the value is its exit status."""

    STOPPED = 0
    """Told to stop (SIGTERM): it stopped accepting and drained."""
    RECYCLED = 3
    """It finished ``max_requests`` requests and made way for a fresh worker."""
    ORPHANED = 4
    """Its parent process was gone: it drained and stopped by itself."""


def _seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"'{attribute.name}' must be a number of seconds > 0, got {value!r}")


def _optional_count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"'{attribute.name}' must be an int >= 1, or none for no limit, got {value!r}")


def _waiting_count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value != "auto":
        _optional_count(instance, attribute, value)


def _over_limit(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ("wait", "close"):
        raise ValueError(f"'{attribute.name}' must be 'wait' or 'close', got {value!r}")


@final
@attrs.frozen(kw_only=True)
class Limits:
    """What bounds one server. The optional limits may be None (in files:
    ``false`` or ``"none"``) to turn them off."""

    max_connections: int | None = attrs.field(default=None, converter=off_is_none, validator=_optional_count)
    """Requests accepted and not yet finished, across the whole server
    (in threads, workers or child processes; waiting connections included).
    At the cap the server stops accepting; new clients wait in the kernel's
    backlog. Default: no cap of its own (``max_waiting`` and the dispatcher
    bound what a server holds)."""
    over_limit: Literal["wait", "close"] = attrs.field(default="wait", validator=_over_limit)
    """At the cap: ``"wait"`` (stop accepting) or ``"close"`` (accept and close
    at once, so clients learn immediately; counted as ``rejected``)."""
    max_waiting: int | Literal["auto"] | None = attrs.field(default="auto", converter=off_is_none,
                                                           validator=_waiting_count)
    """Stream connections waiting in the loop (for their first bytes, between
    keep-alive requests, mid-stage, or readable and queued for a worker).
    At the cap the server stops accepting. ``"auto"``: the process's
    descriptor limit less a reserve of a quarter (at least 16), so the
    server never runs out of descriptors for its own work."""
    idle_timeout: float | None = attrs.field(default=60.0, converter=off_is_none, validator=optional_seconds)
    """Stream connections: seconds a connection may wait for its client,
    in the loop (for its first bytes, between keep-alive requests) or in a
    handler's read or write (the socket's timeout). A client that sends
    nothing cannot hold a worker at all, and a waiting descriptor no longer
    than this; the connection is closed and counted ``timed_out``."""
    request_timeout: float | None = attrs.field(default=None, converter=off_is_none, validator=optional_seconds)
    """Stream requests: seconds a handler's turn may take; then its connection
    is shut down, which ends the handler at its next read or write (``fork``:
    the child is killed)."""
    message_timeout: float | None = attrs.field(default=30.0, converter=off_is_none, validator=optional_seconds)
    """Message handlers: seconds from a message's first byte until it must be
    complete; a client trickling a message slower is cut (``timed_out``)."""
    stats_interval: float = attrs.field(default=10.0, validator=_seconds)
    """How often ``sockwork_collect_stats`` is called, if a plugin implements it."""

    @classmethod
    def none(cls) -> Limits:
        """No cap and no timeouts: socketserver's behaviour."""
        return cls(max_connections=None, max_waiting=None, idle_timeout=None, request_timeout=None,
                   message_timeout=None)

    def waiting_capacity(self) -> int | float:
        """``max_waiting`` as a number (``"auto"`` worked out from this process's descriptor limit)."""
        if self.max_waiting is None:
            return math.inf
        if self.max_waiting == "auto":
            return auto_waiting_capacity()
        return self.max_waiting


RESERVE_MIN = 16


def auto_waiting_capacity() -> int:
    """The descriptor limit (RLIMIT_NOFILE, soft) less a quarter (at least RESERVE_MIN) kept in reserve."""
    try:
        import resource  # POSIX only: the ImportError below is the other platforms'

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        soft = 1024
    if soft == resource.RLIM_INFINITY or soft > 1 << 20:
        soft = 1 << 20
    return max(1, soft - max(RESERVE_MIN, soft // 4))


@final
@attrs.frozen(kw_only=True)
class ServerStats:
    """Counters of one server since it was created (a consistent snapshot).

    ``active`` = accepted − rejected − (completed + failed + timed_out + disconnected + refused).
    """

    accepted: int = 0
    """Requests taken from the transport (connections accepted, datagrams read)."""
    active: int = 0
    """Requests being served right now, wherever they run."""
    completed: int = 0
    """Requests whose handler returned normally."""
    failed: int = 0
    """Requests whose handler raised (or whose child process failed), or that
    the dispatcher could not take."""
    rejected: int = 0
    """Requests closed at once because of ``max_connections`` with ``over_limit = "close"``."""
    timed_out: int = 0
    """Requests ended by ``idle_timeout`` or ``request_timeout``."""
    disconnected: int = 0
    """Requests whose client went away mid-request (reset, broken pipe): logged at INFO, not failures."""
    refused: int = 0
    """Connections closed before dispatch for the client's fault (a failed stage, an oversized message)."""
    oversized: int = 0
    """Datagrams larger than ``max_packet_size``, dropped (never truncated)."""
    turns: int = 0
    """Handler turns served: one per request, one per request of a kept-alive connection (``KEEP_ALIVE``),
    one per message handler turn; counted when the connection ends. (Not an outcome: a connection counts once
    in ``completed`` whatever its number of turns.)"""
    idle_closed: int = 0
    """Connections closed while idle between requests, every request they sent served: by ``idle_timeout``,
    or to make room when ``max_waiting`` is full. Counted ``completed`` too (their requests were served)."""

    @property
    def finished(self) -> int:
        """Requests that have ended, however they ended (rejected ones aside)."""
        return self.completed + self.failed + self.timed_out + self.disconnected + self.refused

    def __add__(self, other: ServerStats) -> ServerStats:
        """Counters of two processes (or servers) together."""
        return ServerStats(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in attrs.fields(ServerStats)}
        )


class Counters:
    """The live counters behind :class:`ServerStats` (internal)."""

    __slots__ = (
        "_lock", "accepted", "active", "completed", "disconnected", "failed", "idle_closed", "refused", "rejected",
        "timed_out", "turns", "wake_below",
    )

    def __init__(self, wake_below: int | None) -> None:
        self._lock = threading.Lock()
        self.accepted = self.active = self.completed = self.failed = self.rejected = self.timed_out = 0
        self.disconnected = self.refused = self.turns = self.idle_closed = 0
        self.wake_below = wake_below  # the connection cap: crossing it downwards wakes the loop

    def accept(self) -> int:
        with self._lock:
            self.accepted += 1
            self.active += 1
            return self.active

    def reject(self) -> None:
        with self._lock:
            self.active -= 1
            self.rejected += 1

    def finish(self, outcome: Outcome, turns: int = 1, idle_closed: bool = False) -> bool:
        """Count a finished request (and its turns); True if that freed a slot under the cap."""
        with self._lock:
            self.active -= 1
            self.turns += turns
            self.idle_closed += idle_closed
            if outcome is Outcome.COMPLETED:
                self.completed += 1
            elif outcome is Outcome.TIMED_OUT:
                self.timed_out += 1
            elif outcome is Outcome.DISCONNECTED:
                self.disconnected += 1
            elif outcome is Outcome.REFUSED:
                self.refused += 1
            else:
                self.failed += 1
            return self.active + 1 == self.wake_below

    @property
    def finished(self) -> int:
        """Requests ended so far, however they ended (a racy read: for "about how many")."""
        return self.completed + self.failed + self.timed_out + self.disconnected + self.refused

    def snapshot(self, oversized: int) -> ServerStats:
        with self._lock:
            return ServerStats(
                accepted=self.accepted, active=self.active, completed=self.completed, failed=self.failed,
                rejected=self.rejected, timed_out=self.timed_out, disconnected=self.disconnected,
                refused=self.refused, oversized=oversized, turns=self.turns, idle_closed=self.idle_closed,
            )


class Deadlines:
    """Shuts down connections whose request outlived ``request_timeout`` (internal).

    One watchdog thread per process, started with the first request; a forked
    child starts its own (threads do not survive fork).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._running: dict[int, socket.socket] = {}  # token -> connection
        self.expired: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopping = False

    def add(self, connection: socket.socket) -> int:
        token = next(self._tokens)
        with self._lock:
            if self._pid != os.getpid():  # first request in this process
                self._thread, self._pid, self._stopping = None, os.getpid(), False
                self._heap.clear()
                self._running.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="sockwork-deadlines", daemon=True)
                self._thread.start()
            self._running[token] = connection
            heapq.heappush(self._heap, (time.monotonic() + self.timeout, token))
            self._lock.notify()
        return token

    def remove(self, token: int) -> bool:
        """Forget a finished request; True if its deadline had expired."""
        with self._lock:
            self._running.pop(token, None)
            if token in self.expired:
                self.expired.discard(token)
                return True
            return False

    def _watch(self) -> None:
        with self._lock:
            while not self._stopping:
                while self._heap and self._heap[0][1] not in self._running:
                    heapq.heappop(self._heap)  # finished in time
                if not self._heap:
                    self._lock.wait()
                    continue
                deadline, token = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._heap)
                connection = self._running.pop(token)
                self.expired.add(token)
                with contextlib.suppress(OSError):  # already gone
                    connection.shutdown(socket.SHUT_RDWR)  # the handler's next read or write ends

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
            thread = self._thread if self._pid == os.getpid() else None
        if thread is not None:
            thread.join()

