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
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

from ._ratelimit import RateLimitedLog
from .connection import Connection, StageFailed
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

_READ: Final = selectors.EVENT_READ
_WRITE: Final = selectors.EVENT_WRITE


@final
class Waiting:
    """The loop's record of one connection (internal)."""

    __slots__ = ("batch", "conn", "due", "eof", "events", "messages", "partial_since", "replies", "served",
                 "since", "stage", "why")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.stage = 0  # index of the next stage to run; len(stages) when all are done
        self.events = 0  # what the selector watches for it now (0: not registered)
        self.due: float | None = None  # when its current wait ends (monotonic)
        self.why = ""  # what the current wait is, for the log line when it expires
        self.served = 0  # handler turns so far
        self.messages: list[bytes] = []  # complete messages not yet handed to a worker
        self.batch: list[bytes] | None = None  # the messages of the current turn (message handlers)
        self.replies = bytearray()  # replies not yet written
        self.partial_since: float | None = None  # when the incomplete message in the buffer began
        self.eof = False  # the client has finished sending
        self.since = time.perf_counter()  # accepted at (the access log's duration)


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
        self._timers: list[tuple[float, int, Waiting]] = []  # (due, order, record): a heap, stale entries skipped
        self._order = itertools.count()
        self.ready: collections.deque[Waiting] = collections.deque()
        self._returned: collections.deque[tuple[Waiting, list[bytes] | None]] = collections.deque()
        self.registered = 0  # records in the selector
        self.draining = False
        self._returns_lock = threading.Lock()
        self._taking_returns = True
        self._log_timeout = RateLimitedLog(logger, LOG_EVERY)
        self._log_refused = RateLimitedLog(logger, LOG_EVERY)
        self._log_gone = RateLimitedLog(logger, LOG_EVERY)

    @property
    def waiting(self) -> int:
        """Connections held here without a worker: watched, or readable and queued for one."""
        return self.registered + len(self.ready)

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
            sock.settimeout(self._idle_timeout)  # only the handler does I/O on it: set once, not per turn
        record = Waiting(Connection(sock, client_address, server))
        self._requests.connections[id(sock)] = record
        self._next_stage(record)

    def _next_stage(self, record: Waiting) -> None:
        """Run stages from ``record.stage`` on, as far as the socket allows without blocking."""
        stages = self._stages
        while record.stage < len(stages):
            stage = stages[record.stage]
            if record.why != stage.name:  # entering this stage: its clock starts
                record.why = stage.name
                record.due = None if stage.timeout is None else time.monotonic() + stage.timeout
            before = record.conn.socket
            try:
                want = stage.advance(record.conn)
            except StageFailed as exc:
                self._close(record, Outcome.REFUSED, f"{stage.name} failed: {exc}")
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
        if stages and self._framing is None:
            record.conn.socket.settimeout(self._idle_timeout)  # from here on only the handler does I/O on it
        if self._waits_for_client:
            self._wait_for_bytes(record)
        else:
            self._unwatch(record)
            self._to_worker(record)  # the server speaks first: its handler runs now

    # ---- Selector events ---------------------------------------------------------------

    def on_event(self, record: Waiting, mask: int) -> None:
        if record.stage < len(self._stages):
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
            self._unwatch(record)
            self._to_worker(record)  # the next request is here already (pipelined)
            return
        self._watch(record, _READ, _after(self._idle_timeout), "idle")

    # ---- To and from workers ------------------------------------------------------

    def _to_worker(self, record: Waiting) -> None:
        if self.draining and record.served and not record.conn.buffered and not record.messages:
            self._close(record, Outcome.COMPLETED, None)  # between requests at shutdown: nothing is lost
            return
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
        if self._framing is not None:
            record.batch, record.messages = record.messages, []
        record.due = None
        record.served += 1
        sock = record.conn.socket
        self._requests.redispatch(sock)
        self._submit_to_dispatcher(sock, record.conn.peer)

    def give_back(self, record: Waiting, replies: list[bytes] | None) -> bool:
        """From a worker: the turn is over and the connection stays open (any thread).

        False once the loop takes no more (the end of a shutdown): the worker ends the connection itself.
        """
        with self._returns_lock:
            if not self._taking_returns:
                return False
            self._returned.append((record, replies))
        self._wake()
        return True

    def stop_taking_returns(self) -> None:
        with self._returns_lock:
            self._taking_returns = False
        self.take_returned()

    def take_returned(self) -> None:
        """Back from workers: write their replies, then wait for the next bytes (or close)."""
        returned = self._returned
        while returned:
            record, replies = returned.popleft()
            record.batch = None
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
            record.messages += framing.finish(buffer) if record.eof else framing.split(buffer)
        except ValueError as exc:  # a frame over the limit, a malformed length, a truncated last one
            self._close(record, Outcome.REFUSED, str(exc))
            return False
        if not buffer:
            record.partial_since = None
        elif record.partial_since is None:
            record.partial_since = time.monotonic()  # a message has begun: its clock runs
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
        """Close connections whose wait is over; return seconds until the next deadline (None: none)."""
        timers = self._timers
        if not timers:
            return None
        now = time.monotonic()
        while timers:
            due, _, record = timers[0]
            if due > now:
                return due - now
            heapq.heappop(timers)
            if record.due == due and record.events:  # still this wait: not rescheduled or taken since
                self._expired(record)
        return None

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
                self._selector.register(sock, events, record)
            self.registered += (events != 0) - (record.events != 0)
            record.events = events
        record.why = why
        if due != record.due or due is None:
            record.due = due
            if due is not None:
                heapq.heappush(self._timers, (due, next(self._order), record))

    def _unwatch(self, record: Waiting) -> None:
        if record.events:
            self._selector.unregister(record.conn.socket)
            record.events = 0
            self.registered -= 1
        record.due = None

    def _close(self, record: Waiting, outcome: Outcome, detail: str | None) -> None:
        self._unwatch(record)
        if detail is not None:
            label = record.conn.peer or "an unnamed client"
            if outcome is Outcome.TIMED_OUT:
                self._log_timeout(logging.INFO, "closed the connection of %s: %s", label, detail)
            elif outcome is Outcome.REFUSED:
                self._log_refused(logging.INFO, "refused the connection of %s: %s", label, detail)
            else:
                self._log_gone(logging.INFO, "client %s %s", label, detail)
        self._requests.close_waiting(record.conn.socket, outcome)

    def close_idle(self, *, fresh_too: bool) -> int:
        """At shutdown: close watched connections with no request in them; return how many.

        Those idle between requests always (nothing is lost); with
        ``fresh_too``, also those that never sent a request or are mid-stage
        (after a grace for bytes already on their way).
        """
        closed = 0
        for key in list(self._selector.get_map().values()):
            record = key.data
            if (isinstance(record, Waiting) and not record.messages and not record.replies
                    and (fresh_too or (record.served and record.why == "idle"))):
                self._close(record, Outcome.COMPLETED, None)
                closed += 1
        return closed

    def abandon_ready(self) -> int:
        """At the drain deadline: close the readable connections no worker took; return how many."""
        count = len(self.ready)
        while self.ready:
            self._close(self.ready.popleft(), Outcome.FAILED, None)
        return count


def _after(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def _tls_pending(sock: socket.socket) -> bool:
    """Decrypted bytes a TLS socket holds that its descriptor's readiness does not show."""
    pending = getattr(sock, "pending", None)
    return pending is not None and pending() > 0
