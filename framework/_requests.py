"""The requests part of a Server: every accepted request from admission to close, counted.

Rule 1: an accepted request belongs to the Dispatcher until its handler
returns; this part then closes it, even if the handler raised. A request
that cannot be handed to the Dispatcher is closed at once and counted.
Rule 2: every request ends exactly once, with one Outcome, so ``active``
returns to 0 whatever happened (a crash elsewhere is reported with
``finished``).
Rule 3: a client that goes away mid-request is the client's doing: one INFO
line (rate limited), counted as ``disconnected``; tracebacks are for handlers
that fail.
"""

from __future__ import annotations

import contextlib
import logging
import math
import selectors
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

from ._parts import LifecycleHooks
from ._ratelimit import RateLimitedLog
from .connection import KEEP_ALIVE, Connection, StageFailed
from .interfaces import Address, Request, Transport, capability
from .limits import Counters, Deadlines, Limits, Outcome, ServerStats
from .logs import log_access

if TYPE_CHECKING:
    from .observe import Observer

__all__ = ["DISCONNECT_ERRORS", "Requests"]

logger = logging.getLogger("sockwork")

DISCONNECT_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
"""A handler's exceptions that mean "the client went away", not "the handler failed"."""

LOG_EVERY = 5.0


@final
class Requests:
    """Admits, serves, ends and counts the requests of one server.

    ``serve`` is what dispatchers call (as ``host.serve``); ``admit`` and
    ``end`` are the loop's; ``force`` is the lifecycle's, at the drain deadline.
    """

    def __init__(
        self, transport: Transport, handler: Callable[..., object], *, limits: Limits, hooks: LifecycleHooks,
        handler_server: Any, on_error: Callable[[Request, Address, Exception], object] | None,
        access_log: str | None = None, observer: Observer | None = None,
    ) -> None:
        self.transport = transport
        self.handler = handler
        self.limits = limits
        self.handler_server = handler_server  # the object handlers receive as ``server``
        self.server: Any = handler_server  # what hooks receive; the Server sets itself here
        self.on_error = on_error
        self._failure_hook = hooks.request_failed
        stream = transport.kind == "stream"
        cap = limits.max_connections if limits.over_limit == "wait" else None
        close_above = limits.max_connections if limits.over_limit == "close" else None
        self.reject_above: float = math.inf if close_above is None else close_above  # no cap: none turned away
        self.counters = Counters(wake_below=cap)
        self.cap = cap
        self._idle_timeout = limits.idle_timeout if stream else None
        self.deadlines = Deadlines(limits.request_timeout) if stream and limits.request_timeout else None
        self._guard_connections = self._idle_timeout is not None or self.deadlines is not None
        self._takes_connection = bool(capability(handler, "sockwork_takes_connection"))
        self._answer: Callable[[list[bytes], Connection], list[bytes]] | None = capability(
            handler, "sockwork_answer")  # a message handler's turn
        self.in_flight: dict[int, Request] = {}
        # Accepted, not yet started: whoever pops a request from here first (a worker's
        # serve(), or force() at the drain deadline) owns it; dict.pop is atomic.
        self._unstarted: dict[int, Request] = {}
        self._abandoned: set[int] = set()  # closed by force() before any worker started them
        self.forcing = False  # past the drain deadline: connections were shut down on purpose
        self.in_child = False  # a forked child serving one request: the parent reports to hooks
        self._child_error: BaseException | None = None
        self.wake: Callable[[], None] = _nothing  # the loop's, once there is one
        self._log_disconnect = RateLimitedLog(logger, LOG_EVERY)
        self.access_log = access_log
        self.observer = observer  # metrics (sockwork.observe); None: off, one `is None` check per turn
        self._ends_watched = access_log is not None or observer is not None

    # ---- The loop's side ---------------------------------------------------

    def admit(self, request: Request) -> bool:
        """Count an accepted request; close it at once (False) if it is over a ``close`` cap."""
        if self.counters.accept() > self.reject_above:
            self.counters.reject()
            self.transport.close_request(request)
            return False
        self.in_flight[id(request)] = self._unstarted[id(request)] = request
        return True

    def end(self, request: Request) -> None:
        """Close a request the dispatcher failed to take, unless it was served already."""
        self._unstarted.pop(id(request), None)
        if self.in_flight.pop(id(request), None) is not None:
            self.transport.close_request(request)
            self.finished(Outcome.FAILED, turns=0)

    def submit_failed(self, request: Request, client_address: Address, exc: Exception) -> bool:
        """The dispatcher raised taking ``request``: end it (counted failed) and say so once.

        Returns True if the caller should pause accepting (nobody else was told).
        Raises again if the request was served already (it is ``on_error`` that raised).
        """
        if id(request) not in self.in_flight:
            raise exc
        # Never lose an accepted request silently: the application's on_error
        # (socketserver's handle_error), or one rate-limited line and a pause.
        # Not a handler failure: no hook.
        if self.on_error is not None:
            self.on_error(request, client_address, exc)
            self.end(request)
            return False
        self.end(request)
        return True

    # ---- Connections the loop holds (see _waiting) -------------------------------

    def redispatch(self, request: Request) -> None:
        """A held connection goes to a worker (again): until one starts it, force() may close it."""
        self._unstarted[id(request)] = request

    def start(self, request: Request) -> bool:
        """A worker starts a request the loop handed over; False if force() closed it already."""
        key = id(request)
        if self._unstarted.pop(key, None) is None and key in self._abandoned:
            # Closed and counted unanswered at the drain deadline by force(); a worker
            # picked it up only now.
            self._abandoned.discard(key)
            return False
        return True

    def replace(self, old: Request, new: Request) -> None:
        """A connection stage replaced the socket (TLS wraps it): track the new one."""
        self.in_flight.pop(id(old), None)
        self.in_flight[id(new)] = new

    def close_held(self, request: socket.socket, peer: Address, outcome: Outcome, since: float, *,
                   turns: int, idle_closed: bool = False, close: bool = True) -> None:
        """End a connection the waiting set held (any thread: its owner's): close it and count it once.

        ``close=False``: shut it down only; the caller closes it later (it keeps the descriptor's number).
        """
        key = id(request)
        self._unstarted.pop(key, None)
        if self._ends_watched:
            self.connection_ended(peer, outcome, time.perf_counter() - since, traffic(request))
        if self.in_flight.pop(key, None) is not None:
            if close:
                self.transport.close_request(request)
            else:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)
            self.finished(outcome, turns=turns, idle_closed=idle_closed)

    def stats(self, oversized: int, elsewhere: ServerStats | None) -> ServerStats:
        own = self.counters.snapshot(oversized=oversized)
        return own if elsewhere is None else own + elsewhere

    @property
    def saturated(self) -> bool:
        """At the connection cap (with ``over_limit = "wait"``)."""
        return self.cap is not None and self.counters.active >= self.cap

    def at_capacity(self) -> bool:
        """``saturated``, as a method (what a dispatcher that accepts by itself asks)."""
        return self.cap is not None and self.counters.active >= self.cap

    # ---- The dispatcher's side (DispatcherHost) -----------------------------

    def serve(self, request: Request, client_address: Address) -> Outcome:
        """Run the handler on one request, report, close and count it; never raises an Exception.

        (A connection the waiting set holds is served by its owner, ``WaitingSet.serve``.)
        """
        if not self.start(request):
            return Outcome.FAILED
        token = None
        if self._guard_connections and not isinstance(request, tuple):
            if self._idle_timeout is not None:
                request.settimeout(self._idle_timeout)
            if self.deadlines is not None:
                token = self.deadlines.add(request)
        outcome = Outcome.FAILED  # until the handler returns; a BaseException leaves it so
        began = time.perf_counter() if self._ends_watched else 0.0
        observer = self.observer
        if observer is not None:
            turn_began = observer.begin_turn(None)
        kept = False  # the handler returned KEEP_ALIVE: the connection is served to its end here
        try:
            kept = self.handler(request, client_address, self.handler_server) is KEEP_ALIVE and not isinstance(
                request, tuple)
            outcome = Outcome.COMPLETED
        except Exception as exc:
            outcome = self.handler_failed(request, client_address, exc, token)
        except BaseException as exc:
            if self.on_error is None:  # SystemExit in a thread is otherwise silent
                logger.error("handler serving %s raised %r; passing it on", client_label(client_address), exc)
            kept = False
            raise
        finally:
            if observer is not None:
                observer.end_turn(turn_began)
            if token is not None:
                outcome = self.end_deadline(token, outcome, client_address)
            if not kept or outcome is not Outcome.COMPLETED:
                self._end_served(request, client_address, outcome, began)
        if not kept or outcome is not Outcome.COMPLETED:
            return outcome
        idle_closed = False
        try:
            outcome, idle_closed = self.keep_here(request, Connection(request, client_address, self.handler_server),
                                                  [], [])
        finally:
            self._end_served(request, client_address, outcome, began, idle_closed=idle_closed)
        return outcome

    def end_deadline(self, token: int, outcome: Outcome, client_address: Address) -> Outcome:
        """A turn under ``request_timeout`` is over: its outcome, ``timed_out`` if the deadline cut it."""
        if self.deadlines.remove(token) and outcome is not Outcome.TIMED_OUT:  # type: ignore[union-attr]  # token => deadlines
            self._log_deadline(client_address)  # the handler ended quietly on the shut-down connection
            return Outcome.TIMED_OUT
        return outcome

    def _end_served(self, request: Request, client_address: Address, outcome: Outcome, began: float, *,
                    idle_closed: bool = False) -> None:
        """Close a served request and count it (and log it: one access line per connection)."""
        if self._ends_watched:
            self.connection_ended(client_address, outcome, time.perf_counter() - began, traffic(request))
        # Always end it: a dispatcher may serve a request rebuilt in another
        # process, which this process never tracked.
        self.in_flight.pop(id(request), None)
        self.transport.close_request(request)
        self.finished(outcome, idle_closed=idle_closed)

    def keep_here(self, request: socket.socket, conn: Connection, replies: list[bytes],
                  messages: list[bytes]) -> tuple[Outcome, bool]:
        """Keep-alive without the loop (a forked child; a dispatcher that moved the socket).

        The connection is served to its end right here, as a classic handler
        would: wait (under ``idle_timeout``) for the next bytes, take another turn.
        The caller closes and counts it: returns its outcome, and whether it was
        closed idle between requests (``completed``: every request was served).
        """
        client_address = conn.peer
        try:
            request.settimeout(self._idle_timeout)  # a message connection was non-blocking, for the loop
            if messages and self._answer is not None:
                replies = [*replies, *self._answer(messages, conn)]  # framed by the loop before the fork
                messages.clear()
            if replies:
                request.sendall(b"".join(replies))
            while True:
                if not conn.buffered and not _wait_readable(request, self._idle_timeout):
                    logger.info("closing the connection of %s: idle for more than %ss",
                                client_label(client_address), self._idle_timeout)
                    return Outcome.COMPLETED, True
                # A message handler, given the Connection, serves the rest of the stream itself.
                target = conn if self._takes_connection else request
                if self.handler(target, client_address, self.handler_server) is not KEEP_ALIVE:
                    return Outcome.COMPLETED, False
        except Exception as exc:
            return self.handler_failed(request, client_address, exc, None), False

    def release(self, request: Request) -> None:
        """Drop this process's handle on a request now served in another process."""
        key = id(request)
        self.in_flight.pop(key, None)
        self._unstarted.pop(key, None)
        self.transport.release_request(request)

    def connection_ended(self, client_address: Address, outcome: Outcome, seconds: float,
                         traffic: tuple[int | None, int | None]) -> None:
        """A connection (or datagram) ended: its access line, its bytes for the metrics (``host.log_access``)."""
        if self.access_log is not None:
            log_access(self.access_log, client_address, outcome, seconds, traffic)
        if self.observer is not None:
            self.observer.observe_connection(*traffic)

    def finished(self, outcome: Outcome, error: BaseException | None = None, client_address: Address = None, *,
                 turns: int = 1, idle_closed: bool = False) -> None:
        """Count a finished request (wake the loop if that frees a slot under the cap).

        ``error``: a failure that happened in another process, for the hook.
        ``turns``: handler turns it took (0: none ran); ``idle_closed``: closed idle between requests.
        """
        if error is not None:
            self._call_failure_hook(client_address, error)
        if self.counters.finish(outcome, turns, idle_closed):
            self.wake()

    def take_error(self) -> BaseException | None:
        """In a forked child, after ``serve``: the exception that failed its request (once), or None."""
        error, self._child_error = self._child_error, None
        return error

    def settle(self, request: Request, outcome: Outcome) -> None:
        """Count a request that something else served and closed (a legacy override)."""
        self._unstarted.pop(id(request), None)
        if self.in_flight.pop(id(request), None) is not None:
            self.finished(outcome)

    # ---- Failures -------------------------------------------------------------

    def handler_failed(self, request: Request, client_address: Address, exc: Exception, token: int | None) -> Outcome:
        # A socket timeout says exactly "timed out"; a handler's own TimeoutError
        # (a database's, say) is a failure like any other.
        # (Or EAGAIN on a blocking socket: the kernel's timeout, which the loop sets on
        # the sockets of connections it holds; see _waiting.set_idle_timeout.)
        if self._idle_timeout is not None and (
            (isinstance(exc, TimeoutError) and exc.args == ("timed out",))
            or (isinstance(exc, BlockingIOError) and not isinstance(request, tuple) and request.gettimeout() is None)
        ):
            logger.info("closing the connection of %s: idle for more than %ss", client_label(client_address),
                        self._idle_timeout)
            return Outcome.TIMED_OUT
        if token is not None and isinstance(exc, OSError) and token in self.deadlines.expired:  # type: ignore[union-attr]  # token => deadlines
            self._log_deadline(client_address)
            return Outcome.TIMED_OUT
        if isinstance(exc, StageFailed):  # a message handler's client broke its framing: its fault
            logger.info("refused the connection of %s: %s", client_label(client_address), exc)
            return Outcome.REFUSED
        if isinstance(exc, DISCONNECT_ERRORS) and self.on_error is None and not self.forcing:
            self._log_disconnect(logging.INFO, "client %s went away mid-request: %s", client_label(client_address), exc)
            return Outcome.DISCONNECTED
        self.report_failure(request, client_address, exc)
        return Outcome.FAILED

    def _log_deadline(self, client_address: Address) -> None:
        logger.info("closed the connection of %s: its request ran longer than %ss", client_label(client_address),
                    self.limits.request_timeout)

    def report_failure(self, request: Request, client_address: Address, exc: Exception) -> None:
        """A handler (or a dispatcher taking a request) failed: hook, then on_error or the log."""
        if self.in_child:
            self._child_error = exc  # for the dispatcher to send to the parent (take_error)
        else:
            self._call_failure_hook(client_address, exc)
        if self.on_error is not None:
            self.on_error(request, client_address, exc)
        elif self.forcing and isinstance(exc, OSError):
            # Expected: we shut this connection down ourselves at the drain deadline.
            logger.info("connection of %s ended at the drain deadline: %s", client_label(client_address), exc)
        else:
            logger.error("error while serving %s", client_label(client_address), exc_info=exc)

    def _call_failure_hook(self, client_address: Address, exc: BaseException) -> None:
        if self._failure_hook is not None:
            try:
                self._failure_hook(server=self.server, client_address=client_address, exc=exc)
            except Exception:
                logger.exception("sockwork_request_failed hook raised")

    # ---- Stopping ---------------------------------------------------------------

    def force(self) -> int:
        """At the drain deadline: end what is still here; return how many running connections were shut down.

        Requests accepted but never started are closed unanswered now, counted
        as failed and logged as a group (a worker that picks one up later skips
        it). The connections of running requests are shut down, which ends a
        handler blocked on its client at its next read or write.
        """
        self.forcing = True
        closed = 0
        for key in list(self._unstarted):
            self._abandoned.add(key)  # first: a serve() that loses the pop below sees it
            request = self._unstarted.pop(key, None)
            if request is None:  # a worker started it just now: it is running, not waiting
                self._abandoned.discard(key)
                continue
            self.in_flight.pop(key, None)
            self.transport.close_request(request)
            self.finished(Outcome.FAILED, turns=0)
            closed += 1
        if closed:
            logger.warning("%d accepted request(s) never started before the drain deadline; "
                           "closed them unanswered", closed)
        connections = [r for r in list(self.in_flight.values()) if isinstance(r, socket.socket)]
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler or the peer
                connection.shutdown(socket.SHUT_RDWR)
        return len(connections)

    def stop(self) -> None:
        if self.deadlines is not None:
            self.deadlines.stop()


_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_BYTES = struct.Struct("QQ")  # tcp_info.tcpi_bytes_acked, tcpi_bytes_received (Linux >= 4.6)
_TCP_BYTES_AT = 120
_FIN_RECEIVED = frozenset({6, 8, 9, 11})  # TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING (include/net/tcp_states.h)
_FIN_SENT_AND_ACKED = frozenset({5, 6})  # FIN_WAIT2, TIME_WAIT


def traffic(request: Request) -> tuple[int | None, int | None]:
    """(bytes in, bytes out) of a request, where the kernel can tell; None where it cannot."""
    if isinstance(request, tuple):  # a datagram: its payload; replies are the handler's own sends
        return len(request[0]), None
    if _TCP_INFO is None or request.family not in (socket.AF_INET, socket.AF_INET6):
        return None, None
    try:
        info = request.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except OSError:
        return None, None
    if len(info) < _TCP_BYTES_AT + _TCP_BYTES.size:
        return None, None
    acked, received = _TCP_BYTES.unpack_from(info, _TCP_BYTES_AT)
    state = info[0]  # a FIN takes one byte of sequence space: not data
    return received - (state in _FIN_RECEIVED), acked - (state in _FIN_SENT_AND_ACKED)


def client_label(client_address: Address) -> str:
    # Unix clients that did not bind a name have an empty address.
    return str(client_address) if client_address else "an unnamed client"


def _nothing() -> None:
    pass


def _wait_readable(sock: socket.socket, timeout: float | None) -> bool:
    """Block until ``sock`` has bytes (or its end) to read; False after ``timeout`` seconds."""
    pending = getattr(sock, "pending", None)  # TLS: decrypted bytes the descriptor does not show
    if pending is not None and pending():
        return True
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(timeout))
