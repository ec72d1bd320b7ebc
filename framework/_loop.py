"""The loop: one selector that accepts requests, holds waiting connections, and hands work to the dispatcher.

    selector ──► listener readable ──► accept (a batch) ──► admit (count, cap) ──► dispatcher.submit
             │                                                      └─ or ──► the waiting set (below)
             ──► a waiting connection ──► its stage / its first bytes / its framed messages (_waiting.py)
             ──► wake-up socket    ──► look again (shutdown, freed capacity, connections given back, a signal)
             ──► a watched fd      ──► its callback (a child's pidfd, a worker's report pipe)

Stream connections whose handler waits for the client (``sockwork_speaks_first
= "client"``: sockwork's own handlers), or whose transport has stages (PROXY,
TLS), wait in the loop's selector — a descriptor and a small record, no
worker — until there is work for a handler; handlers that serve one request
at a time give the connection back (``KEEP_ALIVE``). Classic handlers, which
may speak first, are dispatched at accept as socketserver did.

Rule 1: the loop never busy-waits. It sleeps in one selector that also
watches a wake-up socket, so shutdown, freed capacity and signals wake it at
once; while saturated or backing off it stops listening, and looks again at
least every SATURATED_RECHECK seconds.
Rule 2: "out of resources" accept errors (EMFILE, ENFILE, ENOBUFS, ENOMEM)
pause accepting for a growing time; an error that cannot heal (EBADF,
ENOTSOCK, EINVAL: the listener is gone) is logged once and ends the loop.
Rule 3: the common round (not paused, no stats hook) reads no clock and makes
no call but ``saturated()``.
Rule 4: with a waiting set, a busy dispatcher does not stop accepting: new
connections wait here (up to ``max_waiting``), readable ones queue first come,
first served; only a full waiting set (or the connection cap) does.
"""

from __future__ import annotations

import errno
import heapq
import logging
import math
import selectors
import socket
import time
from collections.abc import Callable
from typing import final

from ._ratelimit import RateLimitedLog
from ._requests import Requests
from ._waiting import TurnPoller, Waiting, WaitingSet
from .interfaces import ACCEPT_CAPACITY_ERRNOS, ACCEPT_FATAL_ERRNOS, Address, Dispatcher, Request, Transport, capability
from .limits import Outcome

__all__ = ["ACCEPT_CAPACITY_ERRNOS", "ACCEPT_FATAL_ERRNOS", "Loop"]

logger = logging.getLogger("sockwork")

SATURATED_RECHECK = 0.05
"""While the dispatcher is saturated, look again at least this often (seconds),
in case a plugin dispatcher frees capacity without calling ``wake()``."""

BACKOFF_MIN, BACKOFF_MAX = 0.01, 1.0
"""Pause after a failed accept (seconds); doubles on each failure in a row."""

DRAIN_GRACE = 0.5
"""At shutdown, how long connections accepted but not yet readable (or mid-stage) get
for bytes already on their way, before they are closed (within the drain timeout)."""

LOG_EVERY = 5.0
"""Accept failures are logged at most once per this many seconds."""

_LISTENER = "listener"
_WAKE = "wake"
_TURNS = "turns"


@final
class Loop:
    """Selector, wake-up channel, accepting with backoff, and watched descriptors.

    ``run_once(timeout, limit)`` waits for one round of events and handles
    them; ``stop_requested`` (set by ``request_stop()``) ends accepting within
    the round. The surface for everyone else: ``request_stop()``, ``wake()``,
    ``wakeup_fd`` (for ``signal.set_wakeup_fd``),
    ``add_reader``/``remove_reader``, ``stop_listening()``, ``close()`` and,
    in a forked child, ``close_in_child()``.
    """

    def __init__(
        self, transport: Transport, dispatcher: Dispatcher, requests: Requests, *,
        on_round: Callable[[], float | None] | None = None,
    ) -> None:
        self.transport = transport
        self.dispatcher = dispatcher
        self.requests = requests
        self.stop_requested = False
        self.submitted = 0  # requests handed to the dispatcher, ever
        self.saturated_recheck: float | None = SATURATED_RECHECK  # None: trust the dispatcher's wake()
        self.batch: int = capability(transport, "accept_batch")
        # A supervisor's workers accept by themselves: this loop only watches them.
        self.accepts = not capability(dispatcher, "accepts_itself")
        # An event-loop dispatcher may take the listener and accept on its own loop (asyncio).
        take_listener = capability(dispatcher, "take_listener")
        self._listener_taken = bool(self.accepts and take_listener is not None and take_listener(transport))
        self._listens = self.accepts and not self._listener_taken  # this loop accepts from the listener
        self._report_turns = False  # handle_request() waits: count what workers take themselves, wake
        self._asked_at = 0  # `submitted` when handle_request last looked
        self._no_room = 0.0  # max_waiting full and no idle connection to close: accept again from then on
        self._on_round = on_round  # runs after each round; returns the longest next wait
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # (when, order, callback): a heap
        self._timer_order = 0
        self._listening = False
        self.stopped_listening = False  # for good: the listener is closing (close())
        self._closed = False
        self._paused_until = 0.0
        self._backoff = BACKOFF_MIN
        self._log_accept_failure = RateLimitedLog(logger, LOG_EVERY)
        self._wake_pending = False  # a byte is in the wake-up socket, or about to be
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            for end in (self._wake_r, self._wake_w):
                end.setblocking(False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        except BaseException:
            self._wake_r.close()
            self._wake_w.close()
            raise
        self._listener_fd = transport.fileno()
        requests.wake = self.wake
        self.waiting: WaitingSet | None = None
        self.max_waiting: int | float = 0  # inf: no cap
        # What dispatchers call as host.serve / host.release: the waiting set owns the connections it holds.
        self.serve: Callable[[Request, Address], Outcome] = requests.serve
        self.release: Callable[[Request], None] = requests.release
        self.turns: TurnPoller | None = None  # for a dispatcher that takes_turns, when connections wait here
        self.take_turn: Callable[[int], None] = _no_turns
        self._choose_where_requests_wait()

    def _choose_where_requests_wait(self) -> None:
        """Stream connections wait in a waiting set, if their handler or transport needs one; else (and
        datagrams) the loop accepts and hands each to the dispatcher."""
        transport, dispatcher, requests = self.transport, self.dispatcher, self.requests
        if transport.kind == "stream" and self.accepts:
            waiting = WaitingSet(
                self._selector, requests, dispatcher, stages=tuple(capability(transport, "stages")),
                handler=requests.handler,
                idle_timeout=requests.limits.idle_timeout, message_timeout=requests.limits.message_timeout,
                wake=self.wake, submit=self.submit, on_turn=self._turn_taken, stopping=self._stop_was_requested,
            )
            if waiting.needed:
                self.waiting = waiting
                self.max_waiting = requests.limits.waiting_capacity()
                self.serve = waiting.serve
                self.release = waiting.release
                if waiting.workers_take_turns:
                    self.turns = waiting.turns  # the dispatcher's workers wait on it (host.turns)
                    self.take_turn = waiting.take_turn
                else:
                    self._selector.register(waiting.turns.fileno(), selectors.EVENT_READ, _TURNS)
            else:
                waiting.close()

    @property
    def wakeup_fd(self) -> int:
        """A descriptor whose writes wake the loop: give it to ``signal.set_wakeup_fd``."""
        return self._wake_w.fileno()

    def request_stop(self, requested: bool = True) -> None:
        """Ask ``run_once``'s caller to stop (and wake the loop to notice), or clear the request."""
        self.stop_requested = requested
        if requested:
            self.wake()

    def wake(self) -> None:
        # One byte per round is enough: whatever changed before this call is seen
        # at the start of the loop's next round, which the pending byte guarantees.
        if self._wake_pending:
            return
        self._wake_pending = True
        try:  # noqa: SIM105 -- per request: cheaper than contextlib.suppress
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full: a wake-up is pending already; closed: nobody is left to wake

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        self._selector.unregister(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback()`` in the loop's thread after ``delay`` seconds (never sooner; later if busy).

        Only from the loop's thread (a dispatcher's callbacks run there).
        """
        self._timer_order += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._timer_order, callback))

    # ---- One round -------------------------------------------------------------

    def run_once(self, timeout: float | None, limit: int) -> int | None:
        """Wait for one round of events and handle them.

        Returns the number of requests dispatched, or None if the listener was
        not ready in this round.
        """
        paused = self._paused_until and time.monotonic() < self._paused_until
        if self._paused_until and not paused:
            self._paused_until = 0.0  # over: the common round reads no clock again
        waiting = self.waiting
        if waiting is None:
            # (Not asked of a dispatcher that took the listener: it counts in its own thread.)
            saturated = self._listens and (self.dispatcher.saturated() or self.requests.saturated)
        else:
            waiting.take_returned()
            waiting.dispatch_ready()
            at_cap = waiting.waiting >= self.max_waiting
            if self._no_room and (not at_cap or time.monotonic() >= self._no_room):
                self._no_room = 0.0  # room again, or time to look for an idle connection to close again
            saturated = (at_cap and bool(self._no_room)) or self.requests.saturated
            next_due = waiting.expire()
            if next_due is not None:
                timeout = _shorter(timeout, next_due)
        listening = self._listens and not (paused or saturated)
        if listening != self._listening:
            self._set_listening(listening)
        if paused:
            timeout = _shorter(timeout, self._paused_until - time.monotonic())
        elif saturated and self.saturated_recheck is not None:
            timeout = _shorter(timeout, self.saturated_recheck)
        if self._on_round is not None:
            next_due = self._on_round()
            if next_due is not None:
                timeout = _shorter(timeout, next_due)
        if self._timers:
            timeout = _shorter(timeout, max(0.0, self._timers[0][0] - time.monotonic()))
        dispatched = None
        for key, _ in self._selector.select(timeout):
            what = key.data
            if what is _TURNS:
                waiting.on_turns_ready()  # type: ignore[union-attr]  # registered only with a waiting set
            elif type(what) is Waiting:
                if what.events:  # not closed by an earlier event of this round
                    waiting.on_stage_event(what)  # type: ignore[union-attr]  # records exist only with a waiting set
            elif what is _LISTENER:
                dispatched = self._accept_batch(limit)
            elif what is _WAKE:
                _drain(self._wake_r)
                self._wake_pending = False  # after draining: a wake() from here on sends again
            elif self._selector.get_map().get(key.fd) is key:
                # Still watched: an earlier callback of this round may have removed it
                # (a worker's exit closes its report pipe), and its number may be reused.
                what()
        if self._timers:
            self._run_due_timers()
        return dispatched

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            callback()

    def _accept_batch(self, limit: int) -> int:
        accept = self.transport.accept
        saturated = self.dispatcher.saturated
        requests = self.requests
        admit = requests.admit
        waiting = self.waiting
        dispatched = taken = 0  # taken: dispatched or closed at once; a round takes at most `limit`
        while taken < limit and not self.stop_requested:
            if waiting is not None and waiting.waiting >= self.max_waiting and (taken or not self._room_for_one_more()):
                break  # full; on the round's first accept the listener was readable: a client waits, make room
            try:
                accepted = accept()
            except OSError as exc:
                if exc.errno in ACCEPT_FATAL_ERRNOS:
                    logger.error("accepting on %s failed: %s; the listener cannot recover, stopping",
                                 self.transport.address if exc.errno != errno.EBADF else "a closed listener", exc)
                    raise
                self._pause(exc)
                break
            if accepted is None:
                break
            request, client_address = accepted
            taken += 1
            if not admit(request):
                continue  # closed at once (over_limit = "close")
            if waiting is not None:
                waiting.add(request, client_address, requests.handler_server)
                if requests.saturated:
                    break
                continue
            if not self.submit(request, client_address):
                break  # one request per round from here: the transport's next accept may block
            dispatched += 1
            if saturated() or requests.saturated:
                break
        if dispatched or (taken and waiting is not None):
            self._backoff = BACKOFF_MIN
        return dispatched

    def _stop_was_requested(self) -> bool:
        return self.stop_requested

    def _turn_taken(self) -> None:
        # A worker took a turn itself (leader/followers) while handle_request() waits for one.
        self.submitted += 1
        self.wake()

    def report_turns(self, on: bool) -> None:
        """Count turns workers take themselves as dispatched, and wake the loop for each (handle_request)."""
        self._report_turns = on
        if self.waiting is not None:
            self.waiting.report_turns = on

    def admit(self, request: Request) -> bool:
        """``host.admit``: a dispatcher that took the listener accepted ``request`` (its thread)."""
        if not self.requests.admit(request):
            return False
        self.submitted += 1  # for handle_request, even between its calls (a lost update still shows a change)
        if self._report_turns:
            self.wake()
        return True

    def dispatched_since_asked(self) -> bool:
        """For handle_request: whether a request was dispatched since the last time it asked."""
        if self.submitted > self._asked_at:
            self._asked_at = self.submitted
            return True
        return False

    def _room_for_one_more(self) -> bool:
        """``max_waiting`` is full: make room by closing the longest-idle keep-alive connection, if any;
        else stop accepting, and look again after SATURATED_RECHECK (one may have become idle by then)."""
        if self.waiting is not None and self.waiting.make_room():
            return True
        self._no_room = time.monotonic() + SATURATED_RECHECK
        return False

    def submit(self, request: Request, client_address: Address) -> bool:
        """Hand one admitted request to the dispatcher; False if it raised (the request was ended)."""
        try:
            self.dispatcher.submit(request, client_address)
            self.submitted += 1
        except Exception as exc:
            if self.requests.submit_failed(request, client_address, exc):
                self._pause(exc)
            return False
        except BaseException:
            self.requests.end(request)
            raise
        return True

    def _pause(self, exc: Exception) -> None:
        """Stop accepting for a growing pause and log it, at most every LOG_EVERY seconds."""
        pause = self._backoff
        self._paused_until = time.monotonic() + pause
        self._backoff = min(pause * 2, BACKOFF_MAX)
        self._set_listening(False)
        capacity = isinstance(exc, OSError) and exc.errno in ACCEPT_CAPACITY_ERRNOS
        self._log_accept_failure(
            logging.ERROR, "%s on %s: %s; pausing accept for %.0f ms",
            "out of resources accepting" if capacity else "accept/dispatch failed", self.transport.address, exc,
            pause * 1000,
        )

    def _set_listening(self, listening: bool) -> None:
        if listening == self._listening or ((self._closed or self.stopped_listening) and listening):
            return
        if listening:
            self._selector.register(self._listener_fd, selectors.EVENT_READ, _LISTENER)
        else:
            self._selector.unregister(self._listener_fd)
        self._listening = listening

    # ---- Ending ----------------------------------------------------------------------

    def stop_listening(self) -> None:
        self._set_listening(False)
        if self._listener_taken and not self.stopped_listening:
            self.dispatcher.stop_accepting()  # type: ignore[attr-defined]  # take_listener's pair
        self.stopped_listening = True

    def take_backlog(self) -> int:
        """At shutdown, before the listener closes: accept what the kernel has queued; return how many.

        Closing a listener resets the connections in its queue, and a balancer
        cannot retry those (the connection was established, maybe its request
        sent). Taken into the waiting set, they are served by the drain.
        """
        waiting = self.waiting
        if waiting is None or self._closed or capability(self.transport, "accept_batch") == 1:
            return 0  # (a transport whose accept() may block, such as the legacy module's: not here)
        taken = 0
        while True:
            try:
                accepted = self.transport.accept()
            except OSError:
                break
            if accepted is None:
                break
            request, client_address = accepted
            if self.requests.admit(request):
                waiting.add(request, client_address, self.requests.handler_server)
                taken += 1
        return taken

    def drain_waiting(self, deadline: float | None) -> None:
        """At shutdown, after the listener closed: serve what waiting connections already sent, close the rest.

        Connections idle between requests are closed at once; those that have
        not sent their first request get DRAIN_GRACE from the start of their
        wait (bytes may be on their way), and those mid-stage their stage's
        own deadline; readable ones and framed messages go to the dispatcher,
        which takes them before it drains; what no worker took by the drain
        deadline is closed unanswered and logged.
        """
        waiting = self.waiting
        if waiting is None:
            return
        waiting.draining = True
        waiting.drain_deadline = deadline
        waiting.take_returned()
        idle = waiting.close_idle(fresh_since=None)
        while not self._closed and waiting.unsettled():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            idle += waiting.close_idle(fresh_since=now - DRAIN_GRACE)
            self.run_once(_shorter(SATURATED_RECHECK, max(0.0, (deadline or math.inf) - now)), 0)
        waiting.stop_taking_returns()  # first: what a worker returns from here on it ends itself
        abandoned, idle_at_deadline = waiting.abandon_ready()  # then: nothing can land in ready after it
        idle += idle_at_deadline + waiting.returned_idle_at_drain
        if idle:
            logger.info("closed %d idle connection(s) at shutdown", idle)
        if abandoned:
            logger.warning("%d connection(s) with a request read were not taken by a worker before the drain "
                           "deadline; closed them unanswered", abandoned)

    def close(self) -> None:
        self._closed = True
        if self.waiting is not None:
            self.waiting.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def close_in_child(self) -> None:
        """In a forked child: drop the parent's loop (its selector and wake-up channel)."""
        self.close()


def _no_turns(fd: int) -> None:
    raise RuntimeError("no connections wait in this server's loop: host.turns is None")


def _shorter(timeout: float | None, other: float) -> float:
    return other if timeout is None else min(timeout, other)


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass
