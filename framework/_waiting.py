"""The waiting set: the one owner of every stream connection the loop holds, from accept to close.

    accepted ──► stages (loop's selector: non-blocking, each with a deadline)
                   │ done
                   ▼
    turn poller (one epoll, EPOLLONESHOT) ──readable──► loop: a worker (FIFO when the dispatcher is full)
        ▲                                                        │
        │ worker re-arms it itself (KEEP_ALIVE, replies sent)    ▼
        └──────────────────────────────────────────── turn (worker): handler ─► verdict ─► re-arm │ close
                                   message handlers: the loop reads and frames; the worker answers and writes

gunicorn's ``gthread`` worker is the model: connections sit in a poller and
cost a descriptor and a small record (:class:`Waiting`); a thread is taken
only for a turn of the handler, which ends with a verdict the record's owner
(this class) acts on: wait again, write what would block, or close.

Rule 1: a record is in exactly one place: its stage in the loop's selector,
armed in the turn poller, in the ready queue, with a worker (``_dispatched``),
or returned to the loop (``_returned``). Whoever holds it is the only one to
touch it; the loop is the only one to take events from the turn poller.
Rule 2: every way out counts the connection exactly once (``_end``): an idle
or stage deadline is ``timed_out``, a failed stage or an oversized message
``refused``, a reset ``disconnected``, a clean end ``completed``.
Rule 3: readable connections are served first come, first served; a
dispatcher at capacity leaves them queued here, not in the kernel.
Rule 4: a keep-alive turn takes no lock, wakes nobody and makes no system
call beyond the handler's own and the re-arm (``epoll_ctl``).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import heapq
import itertools
import logging
import select
import selectors
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

from ._ratelimit import RateLimitedLog
from .connection import KEEP_ALIVE, ClosedBeforeSpeaking, Connection, StageFailed
from .interfaces import capability
from .limits import Outcome
from .observe import arrived, readable

if TYPE_CHECKING:
    from ._requests import Requests
    from .connection import ConnectionStage
    from .interfaces import Address, Dispatcher, Request

__all__ = ["Waiting", "WaitingSet"]

logger = logging.getLogger("sockwork")

LOG_EVERY = 5.0
MESSAGE_READ = 4096
"""Most bytes the loop reads from a message connection at once, and only when no framed message
waits for a worker: a read of tiny messages (2-byte lines) becomes one object each, so this bounds
them at about 90 KiB per connection (issue 23 C), replies aside (REPLIES_HIGH_WATER)."""
REPLIES_HIGH_WATER = 256 * 1024
"""Unsent reply bytes above which the loop stops reading a client (it is not reading its replies)."""

TURN_MESSAGES = 32
"""Most messages one turn of a message handler answers; the rest wait for the next turn."""

QUEUE_WAIT_SAMPLE = 16
"""Metrics: a turn a worker takes from the turn poller itself has its queueing delay measured (from the
kernel's arrival time of its bytes, one getsockopt) on a connection's first turn and every 16th after."""

POLL_BATCH = 256
"""Most turn-poller events the loop takes in one round."""

EVICT_SCAN = 64
"""Most timer entries make_room() looks at for an idle keep-alive connection to close."""

GRAVE_SECONDS = 1.0
"""How long the loop keeps the number of a socket it ended while workers poll (see WaitingSet._close)."""

_READ: Final = selectors.EVENT_READ
_WRITE: Final = selectors.EVENT_WRITE
_IN: Final = getattr(select, "EPOLLIN", 1)
_OUT: Final = getattr(select, "EPOLLOUT", 4)
_ONESHOT: Final = getattr(select, "EPOLLONESHOT", 0)
_IN_ONESHOT: Final = _IN | _ONESHOT
_IN_OR_HANGUP: Final = _IN | getattr(select, "EPOLLHUP", 0) | getattr(select, "EPOLLERR", 0)


@final
class Waiting:
    """The owner's record of one connection (internal)."""

    __slots__ = ("batch", "closed", "conn", "due", "eof", "events", "fd", "heap_due", "lowat", "messages",
                 "partial_since", "polled", "ready_since", "replies", "served", "since", "stage", "stage_began",
                 "wait_began", "why")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.fd = conn.socket.fileno()
        self.stage = 0  # index of the next stage to run; len(stages) when all are done
        self.events = 0  # what the loop's selector watches for it (stages only; 0: not there)
        self.polled = False  # registered in the turn poller (after its stages)
        self.lowat = 0  # bytes a stage left unread and waits beyond (SO_RCVLOWAT raised above them), or 0
        self.due: float | None = None  # when its current wait ends (monotonic)
        self.heap_due: float | None = None  # when its entry in the timer heap is due (one entry at a time)
        self.closed = False
        self.why = ""  # what the current wait is, for the log line when it expires
        self.served = 0  # handler turns so far
        self.messages: list[bytes] = []  # complete messages not yet handed to a worker
        self.batch: list[bytes] | None = None  # the messages of the current turn (message handlers)
        self.replies = bytearray()  # replies not yet written
        self.partial_since: float | None = None  # when the incomplete message in the buffer began
        self.eof = False  # the client has finished sending
        self.since = time.perf_counter()  # accepted at (the access log's duration)
        self.wait_began = time.monotonic()  # when it began waiting for its first request (after its stages)
        self.stage_began = self.since  # metrics: when its current stage began
        self.ready_since: float | None = None  # metrics: when the loop found it readable (its queueing delay)


class TurnPoller:
    """Connections between turns, armed one-shot: one event hands a connection to one owner.

    Linux: an epoll, which a worker re-arms itself (``epoll_ctl`` is thread-safe).
    Elsewhere: a selector of its own (kqueue) that only the loop's thread
    touches (``rearm_in_workers`` is False: workers give records back to the loop).
    """

    def __init__(self) -> None:
        epoll = getattr(select, "epoll", None)
        self.rearm_in_workers = self.workers_can_rearm()
        if epoll is not None:
            self._epoll = epoll()
            self.poll: Callable[[float, int], list[tuple[int, int]]] = self._epoll.poll
            self.modify: Callable[[int, int], None] = self._epoll.modify  # events | EPOLLONESHOT: a re-arm
        else:
            self._selector = selectors.DefaultSelector()
            self.poll = self._select_once

    @staticmethod
    def workers_can_rearm() -> bool:
        """Whether workers may wait on a turn poller and re-arm it themselves (Linux: epoll)."""
        return hasattr(select, "epoll")

    def fileno(self) -> int:
        return self._epoll.fileno() if self.rearm_in_workers else self._selector.fileno()

    def add(self, fd: int, events: int) -> None:
        if self.rearm_in_workers:
            self._epoll.register(fd, events | _ONESHOT)
        else:
            self._selector.register(fd, _selector_events(events))

    def arm(self, fd: int, events: int) -> None:
        """Watch ``fd`` again, once, for ``events`` (EPOLLIN, EPOLLOUT)."""
        if self.rearm_in_workers:
            self._epoll.modify(fd, events | _ONESHOT)
        else:
            self._selector.register(fd, _selector_events(events))

    def watch(self, fd: int) -> None:
        """Watch a dispatcher's own descriptor (level-triggered, until ``remove``): its wake-up channel."""
        self._epoll.register(fd, _IN)

    def remove(self, fd: int) -> None:
        with contextlib.suppress(KeyError, OSError, ValueError):  # closed already: the kernel forgot it
            if self.rearm_in_workers:
                self._epoll.unregister(fd)
            else:
                self._selector.unregister(fd)

    def close(self) -> None:
        (self._epoll if self.rearm_in_workers else self._selector).close()

    def _select_once(self, timeout: float, limit: int) -> list[tuple[int, int]]:
        events = []
        for key, mask in self._selector.select(timeout)[:limit]:
            self._selector.unregister(key.fd)  # one-shot, as epoll's
            events.append((key.fd, (_IN if mask & _READ else 0) | (_OUT if mask & _WRITE else 0)))
        return events


def _selector_events(events: int) -> int:
    return (_READ if events & _IN else 0) | (_WRITE if events & _OUT else 0)


@final
class WaitingSet:
    """Owns the stream connections the loop holds: their stages, deadlines, turns, framing and replies.

    ``serve`` is the dispatcher's ``host.serve`` when connections wait here: a
    held connection's turn runs here; any other request goes to ``Requests``.
    """

    def __init__(
        self, selector: selectors.BaseSelector, requests: Requests, dispatcher: Dispatcher, *,
        stages: tuple[ConnectionStage, ...], handler: Callable[..., object],
        idle_timeout: float | None, message_timeout: float | None, wake: Callable[[], None],
        submit: Callable[[Any, Any], bool], on_turn: Callable[[], None], stopping: Callable[[], bool],
    ) -> None:
        self._stopping = stopping  # the loop's: a stop was asked for (hand out no more in this round)
        self._observer = requests.observer  # metrics; None when off
        self._on_turn = on_turn  # the loop's, while report_turns: a worker took a turn (handle_request waits)
        self.report_turns = False
        self._submit_to_dispatcher = submit  # the loop's: one place handles a dispatcher that raises
        self._selector = selector
        self._requests = requests
        self._dispatcher = dispatcher
        self._stages = stages
        self._handler = handler
        self._handler_server = requests.handler_server
        self._framing = capability(handler, "sockwork_framing")
        self._answer: Callable[[list[bytes], Connection], list[bytes]] | None = capability(handler, "sockwork_answer")
        self._takes_connection = bool(capability(handler, "sockwork_takes_connection"))
        self._waits_for_client = capability(handler, "sockwork_speaks_first") == "client" or self._framing is not None
        self._idle_timeout = idle_timeout
        self._message_timeout = message_timeout
        self._deadlines = requests.deadlines
        self._wake = wake
        self._timers: list[tuple[float, int, Waiting]] = []  # (due, order, record): a heap, see expire()
        self._order = itertools.count()
        self.turns = TurnPoller()
        # A worker's re-arm, as direct as it gets (epoll.modify), or None where only the loop re-arms.
        self._rearm: Callable[[int, int], None] | None = self.turns.modify if self.turns.rearm_in_workers else None
        # A stage that wraps the socket (TLS) may hold decrypted bytes the descriptor does not show.
        self._wrapped = any(capability(stage, "replaces_socket") for stage in stages)
        # Leader/followers: the dispatcher's workers wait on the turn poller themselves (pool); the loop
        # keeps stages, message framing, deadlines and the drain. Not for message handlers (the loop frames).
        self.workers_take_turns = bool(capability(dispatcher, "takes_turns")) and self._framing is None \
            and self.turns.rearm_in_workers
        self._polled: dict[int, Waiting] = {}  # fd -> record, for those registered in the turn poller
        # fd -> record armed in the turn poller: whoever pops it owns it (a worker for a turn, the loop for
        # a deadline); dict.pop is atomic, so two threads never both take one.
        self._armed: dict[int, Waiting] = {}
        # Sockets the loop ended while armed, closed a moment later (see _bury): (when, socket).
        self._graveyard: collections.deque[tuple[float, socket.socket]] = collections.deque()
        self._held: dict[int, Waiting] = {}  # id(record) -> record: every record alive (dict ops: thread-safe)
        self._dispatched: dict[int, Waiting] = {}  # id(socket) -> record with a worker (submitted, not returned)
        self.ready: collections.deque[Waiting] = collections.deque()
        self._returned: collections.deque[Waiting] = collections.deque()  # from workers, for the loop
        self.draining = False
        self.drain_deadline: float | None = None  # set with draining: after it, nothing more is handed out
        self.returned_idle_at_drain = 0  # connections found idle by the loop while draining, closed (for the log)
        self._taking_returns = True
        self._log_timeout = RateLimitedLog(logger, LOG_EVERY)
        self._log_refused = RateLimitedLog(logger, LOG_EVERY)
        self._log_gone = RateLimitedLog(logger, LOG_EVERY)

    @property
    def held(self) -> int:
        """Records alive: in a stage, watched, ready, or with a worker."""
        return len(self._held)

    @property
    def busy(self) -> int:
        """Records with a worker."""
        return len(self._dispatched)

    @property
    def waiting(self) -> int:
        """Connections held here without a worker (watched, or readable and queued for one), and the
        descriptors of ended ones the loop still keeps (see _close): what max_waiting bounds."""
        return len(self._held) - len(self._dispatched) + len(self._graveyard)

    def census(self) -> tuple[int, int, int]:
        """For metrics: connections held here without a worker as (waiting for bytes or for their replies
        to drain, readable and queued, in a stage)."""
        stages = len(self._stages)
        in_stage = sum(1 for record in list(self._held.values()) if record.stage < stages and not record.closed)
        ready = len(self.ready) + readable(list(self._armed))  # leader/followers: readable, no worker free yet
        return max(0, self.waiting - ready - in_stage), ready, in_stage

    def unsettled(self) -> bool:
        """Whether anything still waits here: a record held (a worker's return not yet taken included).

        Read from the structures themselves, so that a drain ends even after a
        KeyboardInterrupt cut the loop's bookkeeping short.
        """
        return bool(self._held) or bool(self._returned)

    @property
    def needed(self) -> bool:
        """Whether connections wait here at all (or go to the dispatcher at accept)."""
        return bool(self._stages) or self._waits_for_client

    def close(self) -> None:
        self.turns.close()
        while self._graveyard:
            self._graveyard.popleft()[1].close()

    # ---- Arrival -----------------------------------------------------------------

    def add(self, sock: socket.socket, client_address: Any, server: Any) -> None:
        """Take an accepted (and admitted) connection: run its stages, then wait for its first bytes."""
        if self._stages or self._framing is not None:
            sock.setblocking(False)  # the loop reads and writes it: never block
        else:
            self._set_handler_timeout(sock)  # only the handler does I/O on it: set once, not per turn
        record = Waiting(Connection(sock, client_address, server))
        self._held[id(record)] = record
        self._requests.hold(sock)  # the waiting set owns it: not "never started" (redispatch puts it back)
        self._next_stage(record)

    def _set_handler_timeout(self, sock: socket.socket) -> None:
        if self._takes_connection:  # Connection turns the kernel's EAGAIN into TimeoutError
            set_idle_timeout(sock, self._idle_timeout)
        else:
            # A classic handler reads through a buffered file, which takes the kernel's
            # timeout (EAGAIN) for "no more data": it gets Python's timeout, which raises.
            sock.settimeout(self._idle_timeout)

    def _next_stage(self, record: Waiting) -> None:
        """Run stages from ``record.stage`` on, as far as the socket allows without blocking."""
        stages = self._stages
        while record.stage < len(stages):
            stage = stages[record.stage]
            if record.why != stage.name:  # entering this stage: its clock starts
                self._set_due(record, None if stage.timeout is None else time.monotonic() + stage.timeout, stage.name)
            before = record.conn.socket
            unread_before = _unread(before)
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
                record.fd = record.conn.socket.fileno()
            if want == "done":
                if self._observer is not None:
                    record.stage_began = self._observer.stage_done(stage.name, record.stage_began)
                record.stage += 1
                continue
            unread = _unread(record.conn.socket) if want != "write" else 0
            if unread and unread == unread_before:
                # It asks for more having read none of what is there (it peeked): wake it only
                # for more bytes than these, or the loop would call it again at once, forever.
                record.lowat = _wake_on_more_than(record.conn.socket, unread)
            elif record.lowat:  # it read (TLS reads what it needs): the next byte wakes it as usual
                record.lowat = _wake_on_more_than(record.conn.socket, record.lowat, reset=True)
            self._watch_stage(record, _WRITE if want == "write" else _READ)
            return
        if stages:
            if record.lowat:
                record.lowat = _wake_on_more_than(record.conn.socket, record.lowat, reset=True)
            self._watch_stage(record, 0)
            record.wait_began = time.monotonic()
            if self._framing is None:
                self._set_handler_timeout(record.conn.socket)  # from here on only the handler does I/O
        if self._waits_for_client:
            self._wait_for_bytes(record)
        else:
            self._to_worker(record)  # the server speaks first: its handler runs now

    def _watch_stage(self, record: Waiting, events: int) -> None:
        sock = record.conn.socket
        if events != record.events:
            if not events:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            elif record.events:
                self._selector.modify(sock, events, record)
            else:
                self._register_stage(sock, events, record)
            record.events = events

    def _register_stage(self, sock: socket.socket, events: int, record: Waiting) -> None:
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

    # ---- The turn poller (loop side) ------------------------------------------------------

    def on_stage_event(self, record: Waiting) -> None:
        """The loop's selector says a record in a stage can go on."""
        if record.lowat and _unread(record.conn.socket) <= record.lowat:
            # Readable with no byte more than the stage has seen: the client ended (or reset)
            # its connection in the middle of the stage.
            self._close(record, Outcome.DISCONNECTED, f"went away during the {self._stages[record.stage].name}")
            return
        self._next_stage(record)

    def on_turns_ready(self) -> None:
        """The turn poller has events: each is a connection to serve (or, for messages, to read/write)."""
        armed, stopping = self._armed, self._stopping
        for fd, mask in self.turns.poll(0, POLL_BATCH):
            record = armed.pop(fd, None)
            if record is None or record.closed:
                continue
            if self._framing is None:
                if stopping():  # (an inline dispatcher serves in this thread: a batch can take long)
                    record.due, record.why = None, "ready"
                    self.ready.append(record)  # for the drain, first come, first served
                else:
                    self._to_worker(record)
                continue
            if mask & _OUT and not self._write_replies(record):
                continue
            if mask & _IN_OR_HANGUP:
                self._read_messages(record)
            else:
                self._settle(record)

    def _wait_for_bytes(self, record: Waiting) -> None:
        """Arm ``record`` for its next bytes (loop thread); served at once if they are here already."""
        conn = record.conn
        if conn.buffered or _tls_pending(conn.socket):
            self._to_worker(record)  # the next request is here already (pipelined)
            return
        self._set_due(record, _after(self._idle_timeout), "idle")
        self._arm(record, _IN)

    def _arm(self, record: Waiting, events: int) -> None:
        self._armed[record.fd] = record
        if record.polled:
            self.turns.arm(record.fd, events)
            return
        self._polled[record.fd] = record
        record.polled = True
        try:
            self.turns.add(record.fd, events)
        except FileExistsError:  # a stale registration under a reused number: the old socket is gone
            self.turns.arm(record.fd, events)

    # ---- To and from workers ------------------------------------------------------

    def _to_worker(self, record: Waiting) -> None:
        record.due, record.why = None, "ready"  # it has work: no deadline until its turn is over
        if self._observer is not None:
            record.ready_since = time.perf_counter()
        if self.ready or self._dispatcher.saturated() or (self.draining and self._past_drain_deadline()):
            self.ready.append(record)  # first come, first served when a worker frees up
        else:
            self._submit(record)

    def dispatch_ready(self) -> None:
        """Hand queued readable connections to the dispatcher while it has room (oldest first)."""
        ready, saturated = self.ready, self._dispatcher.saturated
        while ready and not saturated():
            if self.draining and self._past_drain_deadline():
                return  # an inline dispatcher serves in this thread: the deadline holds between requests
            self._submit(ready.popleft())

    def _past_drain_deadline(self) -> bool:
        return self.drain_deadline is not None and time.monotonic() >= self.drain_deadline

    def _submit(self, record: Waiting) -> None:
        if self._framing is not None:  # at most TURN_MESSAGES per turn: the replies are bounded too
            record.batch, record.messages = record.messages[:TURN_MESSAGES], record.messages[TURN_MESSAGES:]
        record.served += 1
        sock = record.conn.socket
        self._dispatched[id(sock)] = record
        self._requests.redispatch(sock)
        if not self._submit_to_dispatcher(sock, record.conn.peer):
            self._drop(record)  # the dispatcher raised: the loop ended (closed and counted) it

    def serve(self, request: Request, client_address: Address) -> Outcome:
        """The dispatcher's ``host.serve``: a held connection's turn here; any other request in Requests."""
        record = self._dispatched.get(id(request))
        if record is None:
            return self._requests.serve(request, client_address)
        return self._turn(record, handed_over=True)

    def take_turn(self, fd: int) -> None:
        """A worker waiting on the turn poller got ``fd``: serve its turn (``host.take_turn``, leader/followers)."""
        record = self._armed.pop(fd, None)
        if record is not None:  # else the loop took it first (a deadline): nothing to do
            record.served += 1
            self._dispatched[id(record.conn.socket)] = record  # with a worker: counted busy
            if self.report_turns:
                self._on_turn()
            self._turn(record, handed_over=False)

    def _turn(self, record: Waiting, *, handed_over: bool) -> Outcome:
        """One turn of the handler on a held connection (a worker's thread), then act on its verdict."""
        conn = record.conn
        sock = conn.socket
        requests = self._requests
        if handed_over and not requests.start(sock):  # handed over by the loop, not taken from the poller
            self._dispatched.pop(id(sock), None)
            return Outcome.FAILED  # closed unanswered at the drain deadline already
        deadlines = self._deadlines
        token = deadlines.add(sock) if deadlines is not None and record.batch is None else None
        kept: list[bytes] | None = None  # the verdict: the connection stays open, with these replies to send
        outcome = Outcome.FAILED  # until the handler returns; a BaseException leaves it so
        observer = self._observer
        if observer is not None:  # taken from the poller by a worker: its bytes' arrival, as the kernel saw it,
            # for a connection's first turn and every 16th (a getsockopt per turn would cost 5 % of the CPU)
            turn_began = observer.begin_turn(record.ready_since if handed_over else
                                             arrived(sock) if record.served % QUEUE_WAIT_SAMPLE == 1 else None)
        try:
            if record.batch is not None:
                kept = self._answer(record.batch, conn)  # type: ignore[misc]  # batch => a message handler
            elif self._handler(conn if self._takes_connection else sock, conn.peer,
                               self._handler_server) is KEEP_ALIVE:
                kept = []
            outcome = Outcome.COMPLETED
        except Exception as exc:
            outcome = requests.handler_failed(sock, conn.peer, exc, token)
        except BaseException:
            self._end(record, Outcome.FAILED, None)
            raise
        finally:
            if observer is not None:
                observer.end_turn(turn_began)
            if token is not None:
                outcome = requests.end_deadline(token, outcome, conn.peer)
        if kept is None or outcome is not Outcome.COMPLETED:
            self._end(record, outcome, None)
        elif requests.in_child:  # a forked child: no loop to give it back to; served to its end here
            outcome, idle_closed = requests.keep_here(sock, conn, kept, record.messages)
            self._end(record, outcome, None, idle_closed=idle_closed)
        else:
            self._keep(record, kept)
        return outcome

    def _keep(self, record: Waiting, replies: list[bytes]) -> None:
        """The verdict "keep": write the replies, then wait for the next bytes (a worker's thread)."""
        record.batch = None
        conn = record.conn
        self._dispatched.pop(id(conn.socket), None)  # the turn is over: no longer busy (what follows is I/O)
        if conn.socket.fileno() < 0:
            # Its handler closed the socket (and said KEEP_ALIVE): its number may be a new connection's
            # already, so neither the armed table nor the poller may be touched under it.
            self._end(record, Outcome.COMPLETED, None)
            return
        if replies:
            record.replies += b"".join(replies)
            if not self._write_replies(record):
                return  # gone (ended there)
        if (self._rearm is not None and self._framing is None and not record.replies and not self.draining
                and not conn.buffered and record.partial_since is None
                and not (self._wrapped and _tls_pending(conn.socket))):
            # The common keep-alive case: the worker re-arms it, no lock, no wake-up. The
            # idle deadline is read by the loop when its timer comes due.
            if self._idle_timeout is not None:
                record.due = time.monotonic() + self._idle_timeout
            record.why = "idle"
            self._armed[record.fd] = record
            try:
                self._rearm(record.fd, _IN_ONESHOT)
            except (OSError, ValueError):  # the socket was shut down under us (force at the drain deadline)
                if self._armed.get(record.fd) is record:
                    del self._armed[record.fd]
                self._return(record)
            return
        self._return(record)

    def _return(self, record: Waiting) -> None:
        """Give a record back to the loop (replies that would block, pipelined bytes, a drain, no epoll)."""
        self._returned.append(record)
        if not self._taking_returns and self._returned:
            # The loop takes no more (the end of a shutdown): end it here.
            with contextlib.suppress(IndexError, ValueError):
                self._returned.remove(record)
                if record.replies:
                    with contextlib.suppress(OSError):
                        record.conn.socket.setblocking(True)
                        record.conn.socket.sendall(record.replies)
                self._end(record, Outcome.COMPLETED, None)
            return
        self._wake()

    def forget(self, record_or_request: Any) -> None:
        """Drop the record of a connection that left for good (released to another process)."""
        record = self._dispatched.pop(id(record_or_request), None)
        if record is None or record.closed:
            return
        self._drop(record)

    def release(self, request: Request) -> None:
        """The dispatcher's ``host.release``: the connection is now served in another process."""
        self.forget(request)
        self._requests.release(request)

    def stop_taking_returns(self) -> None:
        self._taking_returns = False
        self.take_returned()

    def take_returned(self) -> None:
        """Back from workers: write their replies, then wait for the next bytes (or close)."""
        returned = self._returned
        while returned:
            record = returned.popleft()
            if record.closed:
                continue
            if record.conn.socket.fileno() < 0:  # closed under us (force at the drain deadline)
                self._close(record, Outcome.DISCONNECTED, None)
                continue
            if self._framing is not None:
                if record.messages or self._frame(record):  # what arrived behind the last turn's messages
                    self._settle(record)
            elif self.draining and not record.conn.buffered and not _tls_pending(record.conn.socket):
                self._close(record, Outcome.COMPLETED, None)  # its turn ended as the drain began: idle now
                self.returned_idle_at_drain += 1
            else:
                self._wait_for_bytes(record)

    # ---- Message handlers: the loop reads and frames, the worker answers and writes ----------

    def _read_messages(self, record: Waiting) -> None:
        conn, framing = record.conn, self._framing
        assert framing is not None
        try:
            data = conn.socket.recv(MESSAGE_READ)
        except (BlockingIOError, InterruptedError):
            self._settle(record)
            return
        except OSError as exc:
            self._close(record, Outcome.DISCONNECTED, f"went away: {exc}")
            return
        conn.buffer.extend(data)
        record.eof = not data
        if self._frame(record):
            self._settle(record)

    def _frame(self, record: Waiting) -> bool:
        """Split what the buffer holds into messages; False if the client was refused for it."""
        framing, buffer = self._framing, record.conn.buffer
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
            self._to_worker(record)
            return
        if record.eof and not record.messages:
            if not record.replies:
                self._close(record, Outcome.COMPLETED, None)
                return
            self._set_due(record, _after(self._idle_timeout), "idle")
            self._arm(record, _OUT)
            return
        if self.draining and not record.messages and not record.conn.buffered and not record.replies:
            self._close(record, Outcome.COMPLETED, None)  # idle between messages as the drain runs
            self.returned_idle_at_drain += 1
            return
        events = _OUT if record.replies else 0
        if len(record.replies) <= REPLIES_HIGH_WATER and not record.messages:
            events |= _IN  # a client that does not read its replies is not read either
        if record.partial_since is not None and self._message_timeout is not None:
            self._set_due(record, record.partial_since + self._message_timeout, "message")
        else:
            self._set_due(record, _after(self._idle_timeout), "idle")
        self._arm(record, events)

    def _write_replies(self, record: Waiting) -> bool:
        """Write what the socket takes now; False if the connection is gone (ended here)."""
        try:
            sent = record.conn.socket.send(record.replies)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            self._end(record, Outcome.DISCONNECTED, f"went away before reading its replies: {exc}")
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
        timers, graveyard = self._timers, self._graveyard
        if not timers and not graveyard:
            return None
        now = time.monotonic()
        while graveyard and graveyard[0][0] <= now:
            graveyard.popleft()[1].close()
        next_grave = graveyard[0][0] - now if graveyard else None
        dispatched = self._dispatched
        while timers:
            due, _, record = timers[0]
            if due > now:
                return due - now if next_grave is None else min(due - now, next_grave)
            heapq.heappop(timers)
            if record.heap_due != due or record.closed:
                continue  # superseded by an earlier entry, or gone
            record.heap_due = None
            if id(record.conn.socket) in dispatched or record.due is None:
                self._push(record, now + (self._idle_timeout or 1.0))  # look again after its turn
            elif record.due > now:
                self._push(record, record.due)
            elif not record.polled or self._claim(record):
                self._expired(record)
            else:  # a worker has it (leader/followers): look again after its turn
                self._push(record, now + (self._idle_timeout or 1.0))
        return next_grave

    def make_room(self) -> bool:
        """``max_waiting`` is full and a new client waits: close the longest-idle keep-alive connection.

        Only one whose requests were all served and that waits idle for its
        next one (as nginx reuses its keep-alive connections); counted
        completed and ``idle_closed``. False if there is none (within the
        EVICT_SCAN earliest deadlines): the server then stops accepting.
        """
        timers, dispatched = self._timers, self._dispatched
        put_back: list[tuple[float, int, Waiting]] = []
        found = None
        try:
            for _ in range(EVICT_SCAN):
                if not timers:
                    break
                entry = heapq.heappop(timers)
                due, _, record = entry
                if record.heap_due != due or record.closed:
                    continue  # superseded, or gone
                if record.due is not None and record.due > due:  # re-armed since: its place is later
                    self._push(record, record.due)
                    continue
                if (record.served and record.why == "idle" and id(record.conn.socket) not in dispatched
                        and not record.messages and not record.conn.buffered and not _unread(record.conn.socket)
                        and self._claim(record)):
                    record.heap_due = None
                    found = record
                    break
                put_back.append(entry)
        finally:
            for entry in put_back:
                heapq.heappush(timers, entry)
        if found is None:
            return False
        self._close(found, Outcome.COMPLETED, "idle between requests, closed to make room for a new client "
                    "(max_waiting is full)", idle_closed=True)
        return True

    def _claim(self, record: Waiting) -> bool:
        """Take an armed record for the loop (a deadline, a drain); False if a worker has it."""
        taken = self._armed.pop(record.fd, None)
        if taken is record:
            return True
        if taken is not None:  # another record under that number (cannot happen while ours is open): put back
            self._armed[record.fd] = taken
        return False

    def _compact_timers(self) -> None:
        """Drop the entries of closed records once they outnumber the live ones (memory bounded by ``held``)."""
        timers = self._timers
        if len(timers) > 2 * len(self._held) + 64:
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
        if why == "idle" and record.served and not record.messages and not record.conn.buffered:
            # Served, then idle between requests: nothing was lost, the connection simply ended.
            self._close(record, Outcome.COMPLETED, f"idle for more than {self._idle_timeout}s", idle_closed=True)
            return
        if why == "idle":
            detail = f"idle for more than {self._idle_timeout}s"
        elif why == "message":
            detail = f"its message was not complete {self._message_timeout}s after its first byte"
        else:
            detail = f"the {why} was not complete in time"
        self._close(record, Outcome.TIMED_OUT, detail)

    # ---- The end ------------------------------------------------------------------------

    def _drop(self, record: Waiting) -> None:
        """Take ``record`` out of every structure (its owner's thread)."""
        record.closed = True
        self._held.pop(id(record), None)
        self._dispatched.pop(id(record.conn.socket), None)
        if record.events:
            with contextlib.suppress(KeyError, ValueError):  # its handler closed the socket: dropped as stale
                self._selector.unregister(record.conn.socket)
            record.events = 0
        if record.polled:
            record.polled = False
            # Only while the socket is open is its number surely still its own: a handler that
            # closed it freed the number for the next accept (the kernel forgot it already).
            if record.conn.socket.fileno() >= 0:
                self._polled.pop(record.fd, None)
                self.turns.remove(record.fd)

    def _close(self, record: Waiting, outcome: Outcome, detail: str | None, *, idle_closed: bool = False) -> None:
        """End a connection from the loop's thread.

        While workers poll (leader/followers), a record the loop ends out of the
        poller keeps its descriptor number for GRAVE_SECONDS: a worker may have
        taken its event just before the loop claimed it, and not yet looked it
        up; were the number reused by the next accept at once, that worker would
        take the new connection's record. It is shut down now (the client hears
        the end) and closed a moment later.
        """
        self._end(record, outcome, detail, keep_number=self.workers_take_turns and record.polled,
                  idle_closed=idle_closed)
        self._compact_timers()

    def _end(self, record: Waiting, outcome: Outcome, detail: str | None, *, keep_number: bool = False,
             idle_closed: bool = False) -> None:
        """End a connection (its owner: the loop, or the worker whose turn it is): log, close, count once."""
        if record.closed:
            return
        self._drop(record)
        if keep_number:
            self._graveyard.append((time.monotonic() + GRAVE_SECONDS, record.conn.socket))
        if detail is not None:
            label = record.conn.peer or "an unnamed client"
            if outcome is Outcome.TIMED_OUT or idle_closed:
                self._log_timeout(logging.INFO, "closed the connection of %s: %s", label, detail)
            elif outcome is Outcome.REFUSED:
                self._log_refused(logging.INFO, "refused the connection of %s: %s", label, detail)
            else:
                self._log_gone(logging.INFO, "client %s %s", label, detail)
        self._requests.close_held(record.conn.socket, record.conn.peer, outcome, record.since, turns=record.served,
                                  idle_closed=idle_closed, close=not keep_number)

    def close_idle(self, *, fresh_since: float | None) -> int:
        """At shutdown: close watched connections with no request in them; return how many.

        Those idle between requests always (nothing is lost); those waiting
        for their first request, and those mid-stage (counted ``timed_out``),
        only if their wait began before ``fresh_since`` (None: not yet);
        readable ones (a request arrived just now) are left for the loop to serve.
        """
        dispatched = self._dispatched
        if fresh_since is not None:
            # Mid-stage ones get what fresh ones get (DRAIN_GRACE since they arrived), not their whole stage.
            for record in list(self._held.values()):
                if record.events and not record.closed and record.wait_began <= fresh_since:
                    self._close(record, Outcome.TIMED_OUT, f"the {record.why} was not complete when the drain began")
        candidates = []
        for record in list(self._polled.values()):
            if (record.closed or id(record.conn.socket) in dispatched or record.messages or record.replies
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
            if record.conn.socket.fileno() not in readable and self._claim(record):
                self._close(record, Outcome.COMPLETED, None)
                closed += 1
        return closed

    def abandon_ready(self) -> tuple[int, int]:
        """At the drain deadline: close what no worker took; return (readable ones, idle ones).

        Readable connections (queued here, or armed in the poller with bytes
        waiting) are closed unanswered and counted failed; idle ones completed.
        """
        abandoned = 0
        while self.ready:
            record = self.ready.popleft()
            if not record.closed:
                self._close(record, Outcome.FAILED, None)
                abandoned += 1
        idle = 0
        for record in list(self._armed.values()):
            if record.closed or not self._claim(record):
                continue
            if record.messages or record.conn.buffered or _unread(record.conn.socket):
                self._close(record, Outcome.FAILED, None)
                abandoned += 1
            else:
                self._close(record, Outcome.COMPLETED, None)
                idle += 1
        return abandoned, idle


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

def _wake_on_more_than(sock: socket.socket, unread: int, *, reset: bool = False) -> int:
    """Make the socket readable (for the selector) only once it holds more than ``unread`` bytes.

    A stage that peeks at a partial header and asks to "read" again must not
    be called again at once while those bytes sit unread (a one-packet busy
    loop): SO_RCVLOWAT makes epoll report the socket readable only when it
    holds more, or at its end. ``reset``: back to 1 (before anyone else reads
    it). Returns the mark's base (``unread``), or 0 once reset. Where the
    kernel has no such option (not Linux), nothing changes.
    """
    if _FIONREAD is None:
        return 0
    mark = 1 if reset else unread + 1
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
    return 0 if reset else unread


def _unread(sock: socket.socket) -> int:
    """Bytes the kernel holds for ``sock`` that nobody read yet (FIONREAD; 0 if it cannot tell)."""
    if _FIONREAD is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), _FIONREAD, b"\0\0\0\0"))[0])
    except (OSError, TypeError):
        return 0


_FIONREAD = getattr(termios, "FIONREAD", None) if sys.platform.startswith("linux") else None


def _after(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def _tls_pending(sock: socket.socket) -> bool:
    """Decrypted bytes a TLS socket holds that its descriptor's readiness does not show."""
    pending = getattr(sock, "pending", None)
    return pending is not None and pending() > 0
