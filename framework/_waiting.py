"""The waiting set: every stream connection the loop holds while no handler needs a worker for it.

    accepted ──► stages (non-blocking, each with a deadline) ──► wait for bytes (idle_timeout)
                                                                   │ readable
    given back (KEEP_ALIVE, replies) ◄── handler's turn ◄── ready (FIFO) ◄─┘
       │ message handlers: replies written here, without blocking; frames read and split here
       └──► wait for bytes again │ closed (end of stream, or draining)

gunicorn's ``gthread`` worker is the model: connections sit in the poller and
cost a descriptor and a small record (:class:`Waiting`); a thread is taken
only for a turn of the handler. Everything here runs in the loop's thread,
except :meth:`WaitingSet.give_back`, which workers call.

Rule 1: a record is in exactly one place: registered in the selector
(waiting for a stage, for bytes or for its replies to drain), in the ready
queue, with a worker, or in the given-back queue.
Rule 2: every way out counts the connection exactly once (``Requests.close_waiting``):
an idle or stage deadline is ``timed_out``, a failed stage or an oversized
message ``refused``, a reset ``disconnected``, a clean end ``completed``.
Rule 3: readable connections are served first come, first served; a
dispatcher at capacity leaves them queued here, not in the kernel, so
keep-alive clients beyond the worker count are served in turn.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import select
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

from ._ratelimit import RateLimitedLog
from .connection import ClosedBeforeSpeaking, Connection, StageFailed
from .limits import Outcome

if TYPE_CHECKING:
    from ._requests import Requests
    from .connection import ConnectionStage
    from .interfaces import Dispatcher
    from .messages import Framing

__all__ = ["Waiting", "WaitingSet"]

logger = logging.getLogger("sockwork")

LOG_EVERY = 5.0
READ_CHUNK = 65536
REPLIES_HIGH_WATER = 256 * 1024
"""Unsent reply bytes above which the loop stops reading a client (it is not reading its replies)."""

TURN_MESSAGES = 32
"""Most messages one turn of a message handler answers; the rest wait for the next turn."""

_READ: Final = selectors.EVENT_READ
_WRITE: Final = selectors.EVENT_WRITE
_EPOLL_SELECTOR: Any = getattr(selectors, "EpollSelector", ())
_EPOLLIN_ONESHOT: Final = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLONESHOT", 0)


@final
class Waiting:
    """The loop's record of one connection (internal)."""

    __slots__ = ("batch", "busy", "closed", "conn", "due", "eof", "events", "heap_due", "messages", "oneshot",
                 "partial_since", "replies", "served", "since", "stage", "wait_began", "why")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.stage = 0  # index of the next stage to run; len(stages) when all are done
        self.events = 0  # what the selector watches for it now (0: not registered)
        self.due: float | None = None  # when its current wait ends (monotonic)
        self.heap_due: float | None = None  # when its entry in the timer heap is due (one entry at a time)
        self.busy = False  # with a worker (between submit and its return)
        self.closed = False
        self.oneshot = False  # watched for bytes with EPOLLONESHOT: a worker re-arms it, no loop round-trip
        self.why = ""  # what the current wait is, for the log line when it expires
        self.served = 0  # handler turns so far
        self.messages: list[bytes] = []  # complete messages not yet handed to a worker
        self.batch: list[bytes] | None = None  # the messages of the current turn (message handlers)
        self.replies = bytearray()  # replies not yet written
        self.partial_since: float | None = None  # when the incomplete message in the buffer began
        self.eof = False  # the client has finished sending
        self.since = time.perf_counter()  # accepted at (the access log's duration)
        self.wait_began = time.monotonic()  # when it began waiting for its first request (after its stages)


@final
class WaitingSet:
    """Stream connections held by the loop: their stages, deadlines, readiness, framing and replies."""

    def __init__(
        self, selector: selectors.BaseSelector, requests: Requests, dispatcher: Dispatcher, *,
        stages: tuple[ConnectionStage, ...], speaks_first: str, framing: Framing | None,
        idle_timeout: float | None, message_timeout: float | None, wake: Callable[[], None],
        submit: Callable[[Any, Any], object],
    ) -> None:
        self._submit_to_dispatcher = submit  # the loop's: one place handles a dispatcher that raises
        self._selector = selector
        self._requests = requests
        self._dispatcher = dispatcher
        self._stages = stages
        self._waits_for_client = speaks_first == "client" or framing is not None
        self._framing = framing
        self._idle_timeout = idle_timeout
        self._message_timeout = message_timeout
        self._wake = wake
        self._timers: list[tuple[float, int, Waiting]] = []  # (due, order, record): a heap, see expire()
        self._order = itertools.count()
        self.ready: collections.deque[Waiting] = collections.deque()
        self._returned: collections.deque[tuple[Waiting, list[bytes] | None]] = collections.deque()
        self.held = 0  # records alive: watched, ready, or with a worker
        self.busy = 0  # of which with a worker
        self._rearmed: collections.deque[None] = collections.deque()  # one entry per re-arm by a worker
        self._ending: collections.deque[Waiting] = collections.deque()  # ended by workers, for the loop to close
        self.draining = False
        # Linux: a connection between turns is watched with EPOLLONESHOT, which a worker
        # re-arms itself after a KEEP_ALIVE turn: no wake-up and no two loop syscalls per request.
        raw = getattr(selector, "_selector", None) if isinstance(selector, _EPOLL_SELECTOR) else None
        self._epoll: Any = raw if framing is None and hasattr(raw, "modify") else None
        self._returns_lock = threading.Lock()
        self._taking_returns = True
        self._log_timeout = RateLimitedLog(logger, LOG_EVERY)
        self._log_refused = RateLimitedLog(logger, LOG_EVERY)
        self._log_gone = RateLimitedLog(logger, LOG_EVERY)

    @property
    def waiting(self) -> int:
        """Connections held here without a worker: watched, or readable and queued for one."""
        return self.held - self.busy

    def unsettled(self) -> bool:
        """Whether anything still waits here: a record watched or queued, a return not yet taken.

        Read from the structures themselves, not the counters, so that a drain
        ends even after a KeyboardInterrupt cut the loop's bookkeeping short.
        """
        if self.ready or self._returned or self._ending:
            return True
        return any(type(key.data) is Waiting for key in self._selector.get_map().values())

    @property
    def needed(self) -> bool:
        """Whether connections wait here at all (or go to the dispatcher at accept)."""
        return bool(self._stages) or self._waits_for_client

    # ---- Arrival -----------------------------------------------------------------

    def add(self, sock: socket.socket, client_address: Any, server: Any) -> None:
        """Take an accepted (and admitted) connection: run its stages, then wait for its first bytes."""
        if self._stages or self._framing is not None:
            sock.setblocking(False)  # the loop reads and writes it: never block
        else:
            set_idle_timeout(sock, self._idle_timeout)  # only the handler does I/O on it: set once, not per turn
        record = Waiting(Connection(sock, client_address, server))
        self._requests.connections[id(sock)] = record
        self.held += 1
        self._next_stage(record)

    def _next_stage(self, record: Waiting) -> None:
        """Run stages from ``record.stage`` on, as far as the socket allows without blocking."""
        stages = self._stages
        while record.stage < len(stages):
            stage = stages[record.stage]
            if record.why != stage.name:  # entering this stage: its clock starts
                self._set_due(record, None if stage.timeout is None else time.monotonic() + stage.timeout, stage.name)
            before = record.conn.socket
            try:
                want = stage.advance(record.conn)
            except BlockingIOError:
                want = "read"  # nothing to read yet: try again when there is
            except StageFailed as exc:
                self._close(record, Outcome.REFUSED, f"{stage.name} failed: {exc}")
                return
            except ClosedBeforeSpeaking as exc:  # a health check: counted, not news
                logger.debug("client %s: %s", record.conn.peer, exc)
                self._close(record, Outcome.DISCONNECTED, None)
                return
            except OSError as exc:
                self._close(record, Outcome.DISCONNECTED, f"went away during the {stage.name}: {exc}")
                return
            except Exception:
                logger.exception("connection stage %r raised on the connection of %s; closing it",
                                 stage.name, record.conn.peer)
                self._close(record, Outcome.FAILED, None)
                return
            if record.conn.socket is not before:
                self._requests.replace(before, record.conn.socket)
            if want == "done":
                record.stage += 1
                continue
            self._watch(record, _WRITE if want == "write" else _READ, record.due, stage.name)
            return
        if stages:
            record.wait_began = time.monotonic()
            if self._framing is None:
                set_idle_timeout(record.conn.socket, self._idle_timeout)  # from here on only the handler does I/O
        if self._waits_for_client:
            self._wait_for_bytes(record)
        else:
            self._unwatch(record)
            self._to_worker(record)  # the server speaks first: its handler runs now

    # ---- Selector events ---------------------------------------------------------------

    def on_event(self, record: Waiting, mask: int) -> None:
        if record.oneshot:
            if not record.busy:  # fired once: the kernel disarmed it; it stays in the selector's map
                self._to_worker(record)
        elif record.stage < len(self._stages):
            self._next_stage(record)
        elif self._framing is None:
            self._unwatch(record)
            self._to_worker(record)
        else:
            if mask & _WRITE and not self._write_replies(record):
                return
            if mask & _READ:
                self._read_messages(record)
            else:
                self._settle(record)

    def _wait_for_bytes(self, record: Waiting) -> None:
        conn = record.conn
        if conn.buffered or _tls_pending(conn.socket):
            if not record.oneshot:
                self._unwatch(record)
            self._to_worker(record)  # the next request is here already (pipelined)
            return
        if self._epoll is None:
            self._watch(record, _READ, _after(self._idle_timeout), "idle")
            return
        if not record.oneshot:
            if record.events:
                self._selector.unregister(conn.socket)
            self._register(conn.socket, _READ, record)  # in the map, for select() to find it
            record.events, record.oneshot = _READ, True
        self._set_due(record, _after(self._idle_timeout), "idle")
        self._epoll.modify(conn.socket.fileno(), _EPOLLIN_ONESHOT)

    # ---- To and from workers ------------------------------------------------------

    def _to_worker(self, record: Waiting) -> None:
        record.due, record.why = None, "ready"  # it has work: no deadline until its turn is over
        if self.ready or self._dispatcher.saturated():
            self.ready.append(record)  # first come, first served when a worker frees up
        else:
            self._submit(record)

    def dispatch_ready(self) -> None:
        """Hand queued readable connections to the dispatcher while it has room (oldest first)."""
        ready, saturated = self.ready, self._dispatcher.saturated
        while ready and not saturated():
            self._submit(ready.popleft())

    def _submit(self, record: Waiting) -> None:
        if self._framing is not None:  # at most TURN_MESSAGES per turn: the replies are bounded too
            record.batch, record.messages = record.messages[:TURN_MESSAGES], record.messages[TURN_MESSAGES:]
        record.busy = True
        self.busy += 1
        record.served += 1
        sock = record.conn.socket
        self._requests.redispatch(sock)
        self._submit_to_dispatcher(sock, record.conn.peer)

    def give_back(self, record: Waiting, replies: list[bytes] | None) -> bool:
        """From a worker: the turn is over and the connection stays open (any thread).

        False once the loop takes no more (the end of a shutdown): the worker ends the connection itself.
        """
        if (record.oneshot and not replies and not self.draining and not record.closed
                and not record.conn.buffered and record.conn.socket.fileno() >= 0
                and not _tls_pending(record.conn.socket)):
            # The common keep-alive case, done by the worker: the next bytes wake the loop,
            # and the idle deadline is read by the loop when its timer comes due.
            record.due = None if self._idle_timeout is None else time.monotonic() + self._idle_timeout
            record.why = "idle"
            record.busy = False
            self._rearmed.append(None)
            try:  # noqa: SIM105 -- per request: cheaper than contextlib.suppress
                self._epoll.modify(record.conn.socket.fileno(), _EPOLLIN_ONESHOT)
            except (OSError, ValueError):
                pass  # closed meanwhile by the loop (a shutdown): it was counted there
            return True
        with self._returns_lock:
            if not self._taking_returns:
                return False
            self._returned.append((record, replies))
        self._wake()
        return True

    def close_later(self, record: Waiting) -> bool:
        """From a worker that ended a connection the selector still maps: the loop unregisters and closes it.

        False once the loop takes no more (the end of a shutdown): the worker closes it itself.
        """
        with self._returns_lock:
            if not self._taking_returns:
                return False
            self._ending.append(record)
        self._wake()
        return True

    def forget(self, record: Waiting) -> None:
        """Drop a record whose connection left the loop for good (released to another process, ended)."""
        if record.closed:
            return
        self._unwatch(record)
        record.closed = True
        self.held -= 1
        self._compact_timers()
        if record.busy:
            record.busy = False
            self.busy -= 1

    def stop_taking_returns(self) -> None:
        with self._returns_lock:
            self._taking_returns = False
        self.take_returned()

    def take_returned(self) -> None:
        """Back from workers: write their replies, then wait for the next bytes (or close)."""
        rearmed = self._rearmed
        while rearmed:
            rearmed.popleft()
            self.busy -= 1
        ending = self._ending
        while ending:
            record = ending.popleft()
            self.forget(record)
            self._requests.transport.close_request(record.conn.socket)
        returned = self._returned
        while returned:
            record, replies = returned.popleft()
            record.batch = None
            record.busy = False
            self.busy -= 1
            if record.conn.socket.fileno() < 0:  # closed under us (force at the drain deadline)
                self._close(record, Outcome.DISCONNECTED, None)
                continue
            if replies:
                record.replies += b"".join(replies)
                if not self._write_replies(record):
                    continue
            if self._framing is not None:
                if record.messages or self._frame(record):  # what arrived behind the last turn's messages
                    self._settle(record)
            elif self.draining:
                self._close(record, Outcome.COMPLETED, None)
            else:
                self._wait_for_bytes(record)

    # ---- Message handlers: the loop frames, the worker computes ------------------------

    def _read_messages(self, record: Waiting) -> None:
        conn, framing = record.conn, self._framing
        assert framing is not None
        try:
            data = conn.socket.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(record, Outcome.DISCONNECTED, f"went away: {exc}")
            return
        conn._buffer += data  # noqa: SLF001 -- the loop fills the record's own read buffer
        record.eof = not data
        if self._frame(record):
            self._settle(record)

    def _frame(self, record: Waiting) -> bool:
        """Split what the buffer holds into messages; False if the client was refused for it."""
        framing, buffer = self._framing, record.conn._buffer  # noqa: SLF001 -- see above
        assert framing is not None
        if not buffer:
            record.partial_since = None
            return True
        try:
            messages = framing.finish(buffer) if record.eof else framing.split(buffer)
        except ValueError as exc:  # a frame over the limit, a malformed length, a truncated last one
            self._close(record, Outcome.REFUSED, str(exc))
            return False
        record.messages += messages
        if not buffer:
            record.partial_since = None
        elif messages or record.partial_since is None:
            record.partial_since = time.monotonic()  # a new message has begun: its clock runs from now
        return True

    def _settle(self, record: Waiting) -> None:
        """Decide what a message connection waits for next: a worker, bytes, its replies to drain, or its end."""
        if record.messages and len(record.replies) <= REPLIES_HIGH_WATER:
            self._unwatch(record)
            self._to_worker(record)
            return
        if record.eof and not record.messages:
            if not record.replies:
                self._close(record, Outcome.COMPLETED, None)
                return
            self._watch(record, _WRITE, _after(self._idle_timeout), "idle")
            return
        if self.draining and not record.messages and not record.conn.buffered and not record.replies:
            self._close(record, Outcome.COMPLETED, None)
            return
        events = _WRITE if record.replies else 0
        if len(record.replies) <= REPLIES_HIGH_WATER:
            events |= _READ  # a client that does not read its replies is not read either
        if record.partial_since is not None and self._message_timeout is not None:
            self._watch(record, events, record.partial_since + self._message_timeout, "message")
        else:
            self._watch(record, events, _after(self._idle_timeout), "idle")

    def _write_replies(self, record: Waiting) -> bool:
        """Write what the socket takes now; False if the connection is gone."""
        try:
            sent = record.conn.socket.send(record.replies)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            self._close(record, Outcome.DISCONNECTED, f"went away before reading its replies: {exc}")
            return False
        del record.replies[:sent]
        return True

    # ---- Deadlines ------------------------------------------------------------------

    def expire(self) -> float | None:
        """Close connections whose wait is over; return seconds until the next deadline (None: none).

        One heap entry per record at a time: a record whose deadline moved
        later (a worker re-armed it; it is with a worker now) is pushed back,
        not re-pushed on every turn.
        """
        timers = self._timers
        now = time.monotonic()
        while timers:
            due, _, record = timers[0]
            if due > now:
                return due - now
            heapq.heappop(timers)
            if record.heap_due != due or record.closed:
                continue  # superseded by an earlier entry, or gone
            record.heap_due = None
            if record.busy:
                self._push(record, now + (self._idle_timeout or 1.0))  # look again after its turn
            elif record.due is not None and record.due > now:
                self._push(record, record.due)
            elif record.due is not None:
                self._expired(record)
        return None

    def _compact_timers(self) -> None:
        """Drop the entries of closed records once they outnumber the live ones (memory bounded by ``held``)."""
        timers = self._timers
        if len(timers) > 2 * self.held + 64:
            timers[:] = [entry for entry in timers if not entry[2].closed and entry[2].heap_due == entry[0]]
            heapq.heapify(timers)

    def _set_due(self, record: Waiting, due: float | None, why: str) -> None:
        record.due, record.why = due, why
        if due is not None and (record.heap_due is None or due < record.heap_due):
            self._push(record, due)

    def _push(self, record: Waiting, due: float) -> None:
        record.heap_due = due
        heapq.heappush(self._timers, (due, next(self._order), record))

    def _expired(self, record: Waiting) -> None:
        why = record.why
        if why == "idle":
            detail = f"idle for more than {self._idle_timeout}s"
        elif why == "message":
            detail = f"its message was not complete {self._message_timeout}s after its first byte"
        else:
            detail = f"the {why} was not complete in time"
        self._close(record, Outcome.TIMED_OUT, detail)

    # ---- The selector and the end ------------------------------------------------------

    def _watch(self, record: Waiting, events: int, due: float | None, why: str) -> None:
        sock = record.conn.socket
        if events != record.events:
            if not events:
                self._selector.unregister(sock)
            elif record.events:
                self._selector.modify(sock, events, record)
            else:
                self._register(sock, events, record)
            record.events = events
        self._set_due(record, due, why)

    def _unwatch(self, record: Waiting) -> None:
        if record.events:
            with contextlib.suppress(KeyError, ValueError):  # its handler closed the socket: dropped as stale
                self._selector.unregister(record.conn.socket)
            record.events = 0
            record.oneshot = False
        record.due = None

    def _register(self, sock: socket.socket, events: int, record: Waiting) -> None:
        """Register ``sock``; first drop a stale entry under its number (a handler closed its socket
        while the loop still mapped it, and the number was reused: the kernel forgot it already)."""
        try:
            self._selector.register(sock, events, record)
        except KeyError:
            stale = self._selector.get_map().get(sock.fileno())
            if stale is None or stale.fileobj.fileno() >= 0:  # type: ignore[union-attr]  # sockets only here
                raise
            self._selector.unregister(stale.fileobj)
            self._selector.register(sock, events, record)

    def _close(self, record: Waiting, outcome: Outcome, detail: str | None) -> None:
        self._unwatch(record)
        record.closed = True
        self.held -= 1
        self._compact_timers()
        if detail is not None:
            label = record.conn.peer or "an unnamed client"
            if outcome is Outcome.TIMED_OUT:
                self._log_timeout(logging.INFO, "closed the connection of %s: %s", label, detail)
            elif outcome is Outcome.REFUSED:
                self._log_refused(logging.INFO, "refused the connection of %s: %s", label, detail)
            else:
                self._log_gone(logging.INFO, "client %s %s", label, detail)
        self._requests.close_waiting(record.conn.socket, outcome)

    def close_idle(self, *, fresh_since: float | None) -> int:
        """At shutdown: close watched connections with no request in them; return how many.

        Those idle between requests always (nothing is lost); those waiting
        for their first request only if their wait began before
        ``fresh_since`` (None: not yet). Mid-stage ones finish or time out;
        readable ones (a request arrived just now) are left for the loop to serve.
        """
        candidates = []
        for key in list(self._selector.get_map().values()):
            record = key.data
            if (not isinstance(record, Waiting) or record.busy or record.messages or record.replies
                    or record.why != "idle" or record.conn.buffered or _tls_pending(record.conn.socket)):
                continue
            if record.served or (fresh_since is not None and record.wait_began <= fresh_since):
                candidates.append(record)
        if not candidates:
            return 0
        poller = select.poll()
        for record in candidates:
            poller.register(record.conn.socket, select.POLLIN)
        readable = {fd for fd, _ in poller.poll(0)}
        closed = 0
        for record in candidates:
            if record.conn.socket.fileno() not in readable:
                self._close(record, Outcome.COMPLETED, None)
                closed += 1
        return closed

    def abandon_ready(self) -> int:
        """At the drain deadline: close the readable connections no worker took; return how many."""
        count = 0
        while self.ready:
            record = self.ready.popleft()
            if not record.closed:
                self._close(record, Outcome.FAILED, None)
                count += 1
        return count


def set_idle_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Bound each wait of a handler on ``sock`` to ``seconds``.

    A plain socket gets the kernel's SO_RCVTIMEO/SO_SNDTIMEO on a blocking
    descriptor: each read or write is then one system call, where Python's own
    timeout polls before every one (measured: half the CPU per keep-alive
    request with 8 workers). A wait that runs out raises ``BlockingIOError``
    (EAGAIN), which the server counts as ``timed_out`` and ``Connection``
    turns into ``TimeoutError``. Other sockets (TLS) get Python's timeout.
    """
    if seconds is None or type(sock) is not socket.socket or _SO_TIMEOUTS is None:
        sock.settimeout(seconds)
        return
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.settimeout(None)
    for option in _SO_TIMEOUTS:
        sock.setsockopt(socket.SOL_SOCKET, option, timeval)


_SO_TIMEOUTS = ((socket.SO_RCVTIMEO, socket.SO_SNDTIMEO)
                if hasattr(socket, "SO_RCVTIMEO") and sys.platform.startswith("linux") else None)


def _after(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def _tls_pending(sock: socket.socket) -> bool:
    """Decrypted bytes a TLS socket holds that its descriptor's readiness does not show."""
    pending = getattr(sock, "pending", None)
    return pending is not None and pending() > 0
