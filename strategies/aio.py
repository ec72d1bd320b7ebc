"""The ``asyncio`` dispatcher: async handlers on one event loop (asyncio's own, or uvloop) in its own thread.

    server's loop (its thread)                    event loop (this dispatcher's thread)
    accept ─► admit (cap, counted) ─► submit ──► deque ──► take over the socket ─► task: handler(reader, writer)
                                      release: the         (one wake-up per batch)    └► finished(outcome): counted,
                                      server lets go                                      cap freed, hook on failure

The server's loop keeps accepting, admitting and capping exactly as for every
other dispatcher (the decision and its measurements: docs/design.md, "The
asyncio dispatcher"); this module only runs what it is handed:

- a stream connection becomes an ``asyncio`` transport on the event loop
  (``connect_accepted_socket``) and one task runs ``handler.stream(reader,
  writer)``, asyncio's own ``StreamReader``/``StreamWriter``; the connection
  is closed, its buffered reply sent, when the handler returns;
- a datagram becomes one task running ``handler.datagram(payload,
  client_address)``; a reply is sent on the transport's socket.

Rule 1: every request submitted ends with exactly one ``host.finished``:
``submit`` releases it from the server (which counts it active until then).
Rule 2: limits are cancellations. ``idle_timeout`` cancels a stream handler
that has waited that long on its client (one read pending, or the same
bytes unsent); ``request_timeout`` one whose connection is older than that;
both counted ``timed_out`` with an INFO line. A client that resets is
``disconnected`` (INFO, rate limited); a handler that raises ``StageFailed``
refuses its client (``refused``, INFO, rate limited), as a message handler's
framing does. At the drain deadline what still runs
is cancelled (FAILED, INFO): no traceback for what we caused. One timer
checks every connection at a quarter of the shorter timeout (at most every
second): nothing per request.
Rule 3: the event loop thread is joined and the loop closed in ``close()``.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import logging
import math
import socket
import threading
from typing import TYPE_CHECKING, Any, Literal, final

import attrs

from sockwork._ratelimit import RateLimitedLog
from sockwork._requests import DISCONNECT_ERRORS, client_label
from sockwork.aio import AsyncHandler, as_async_handler
from sockwork.connection import StageFailed
from sockwork.handlers import send_datagram
from sockwork.hookspecs import hookimpl
from sockwork.interfaces import ACCEPT_FATAL_ERRNOS, DispatcherHost, Transport, capability
from sockwork.limits import Outcome, auto_waiting_capacity
from sockwork.slots import Slots
from sockwork.validators import off_is_none, optional_positive_int, optional_seconds

if TYPE_CHECKING:
    from sockwork.registry import DispatcherEntry

__all__ = ["AsyncioDispatcher", "AsyncioOptions"]

logger = logging.getLogger("sockwork")

LOOPS = ("asyncio", "uvloop")
CANCEL_GRACE = 1.0
"""Seconds the handlers cancelled at the drain deadline get to run their cleanup."""
SWEEP_AT_MOST = 1.0
"""Seconds between two looks at the connections' timeouts, at most."""
STREAM_LIMIT = 1 << 16
"""The StreamReader's buffer limit (asyncio's default): readline() and kin fail beyond it."""
_LOG_EVERY = 5.0
_CLIENT_GONE = (*DISCONNECT_ERRORS, asyncio.IncompleteReadError)
ACCEPT_BATCH = 64
"""Most connections the event loop accepts per readiness of the listener."""
ACCEPT_PAUSE = 0.1
"""Seconds the event loop stops accepting after a failed accept (out of descriptors, say)."""
STOP_ACCEPTING_WAIT = 2.0
"""Seconds the server's thread waits for the event loop to stop accepting at shutdown."""


def _check_loop(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in LOOPS:
        raise ValueError(f"'{attribute.name}' must be 'asyncio' or 'uvloop', got {value!r}")
    if value == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ValueError(f"'{attribute.name}' is 'uvloop', but uvloop is not installed: "
                         "pip install 'sockwork[uvloop]', or use loop = 'asyncio'")


@final
@attrs.frozen(kw_only=True)
class AsyncioOptions:
    """Options of the ``asyncio`` dispatcher."""

    loop: Literal["asyncio", "uvloop"] = attrs.field(default="asyncio", validator=_check_loop)
    """The event loop: asyncio's own, or uvloop's (faster; install ``sockwork[uvloop]``)."""
    max_tasks: int | None = attrs.field(factory=auto_waiting_capacity, converter=off_is_none,
                                        validator=optional_positive_int)
    """Requests served at once on the loop; at this many the server stops accepting until one
    ends. Default: the process's descriptor limit less a quarter in reserve (as ``limits.max_waiting``,
    an event loop's connections wait in it). None (in files: false): no bound of its own."""
    warn_blocked: float | None = attrs.field(default=0.5, converter=off_is_none, validator=optional_seconds)
    """Seconds a handler may hold the event loop (run without awaiting) before a WARNING names it, at most
    one every 5 s: a blocking call in an async handler delays every other client. Measured as the lateness
    of a timer, so a loop round busy with thousands of clients counts too: hence 0.5 s rather than the 0.1 s
    of asyncio's debug mode, which times every callback. None (in files: false): no check."""


@final
class AsyncioDispatcher:
    """Runs async handlers (:mod:`sockwork.aio`) on one event loop in its own thread.

    ``drain`` waits for the running handlers; ``close`` cancels those still
    running, gives them ``CANCEL_GRACE`` seconds to clean up, stops the loop
    and joins its thread.
    """

    runs_async = True

    def __init__(self, options: AsyncioOptions | None = None) -> None:
        self.options = options or AsyncioOptions()
        self.concurrency = self.options.max_tasks
        self._slots = Slots(self.options.max_tasks)  # submitted and not finished
        self._incoming: collections.deque[tuple[Any, Any]] = collections.deque()
        self._scheduled = False  # a _take_incoming is pending on the loop
        self._conns: set[_Conn] = set()  # the event loop's own: touched only in its thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._draining = False
        self._drained = threading.Event()
        self._log_gone = RateLimitedLog(logger, _LOG_EVERY)
        self._log_accept = RateLimitedLog(logger, _LOG_EVERY)
        self._listener: Transport | None = None  # taken from the server: accepted here, on the event loop
        self._accepting = False  # the listener is watched by the event loop now
        self._stopped_accepting = threading.Event()
        self._log_refused = RateLimitedLog(logger, _LOG_EVERY)
        self._log_blocked = RateLimitedLog(logger, _LOG_EVERY)
        self._beating = False  # the held-loop check runs (only while there are requests on the loop)

    def take_listener(self, transport: Transport) -> bool:
        """Accept this stream transport's connections on the event loop itself (no stages to run first):
        no hand-off from the server's loop per connection."""
        if transport.kind != "stream" or capability(transport, "stages"):
            return False
        self._listener = transport
        return True

    # ---- Starting ------------------------------------------------------------------

    def start(self, host: DispatcherHost) -> None:
        handler = as_async_handler(host.handler, None)
        if handler is None:
            raise TypeError(f"the asyncio dispatcher serves async handlers (sockwork.aio), got {host.handler!r}")
        self._host = host
        self._handler: AsyncHandler = handler
        limits = host.limits
        self._idle_timeout = limits.idle_timeout
        self._request_timeout = limits.request_timeout
        shortest = min(t for t in (limits.idle_timeout, limits.request_timeout, math.inf) if t is not None)
        self._sweep_every = None if shortest == math.inf else min(SWEEP_AT_MOST, shortest / 4)
        self._slots.wake_with(host.wake)
        self._on_error = host.on_error
        self._log_access = host.log_access
        self._observer = host.observer  # metrics; None when off
        self._loop = loop = _new_loop(self.options.loop)
        loop.set_exception_handler(_log_loop_error)
        self._thread = threading.Thread(target=self._run, args=(loop,), name="sockwork-asyncio", daemon=True)
        self._thread.start()
        if self._listener is not None:
            loop.call_soon_threadsafe(self._resume_accepting)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            if self._sweep_every is not None:
                loop.call_soon(self._sweep)
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    # ---- The server's loop hands requests over ------------------------------------------

    def submit(self, request: Any, client_address: Any) -> None:
        self._slots.take()
        item: tuple[bytes, socket.socket] | socket.socket
        if isinstance(request, tuple):
            item = request  # (payload, socket): the socket is the transport's, for the reply
        else:
            # Take the descriptor over: the server's socket object lets go of it (release
            # then closes nothing), and the event loop owns this one from here on.
            item = socket.socket(request.family, request.type, request.proto, request.detach())
        self._host.release(request)
        self._incoming.append((item, client_address))
        if not self._scheduled:  # one wake-up of the event loop per batch, not per request
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._take_incoming)  # type: ignore[union-attr]  # started

    def saturated(self) -> bool:
        return self._slots.full()

    # ---- Accepting on the event loop (take_listener) ------------------------------------------

    def _resume_accepting(self) -> None:
        if self._listener is not None and not self._accepting and not self._stopped_accepting.is_set():
            self._loop.add_reader(self._listener.fileno(), self._accept)  # type: ignore[union-attr]  # started
            self._accepting = True

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._loop.remove_reader(self._listener.fileno())  # type: ignore[union-attr]  # accepting
            self._accepting = False

    def _accept(self) -> None:
        """The listener is readable: accept a batch, each connection admitted, counted and served here."""
        transport, host, loop, conns = self._listener, self._host, self._loop, self._conns
        assert transport is not None and loop is not None
        for _ in range(ACCEPT_BATCH):
            if self._slots.full() or host.at_capacity():
                self._pause_accepting()  # resumed in _end when a handler finishes
                return
            try:
                accepted = transport.accept()
            except OSError as exc:
                self._accept_failed(exc)
                return
            if accepted is None:
                return
            request, client_address = accepted
            if not host.admit(request):
                continue  # closed at once: over a max_connections cap with over_limit = "close"
            self._slots.take()
            sock = socket.socket(request.family, request.type, request.proto, request.detach())
            host.release(request)
            conn = _Conn(client_address, sock, loop.time())
            conn.task = loop.create_task(self._serve_stream(conn, sock))
            conns.add(conn)
            self._watch_for_blocking()

    def _accept_failed(self, exc: OSError) -> None:
        self._pause_accepting()
        if exc.errno in ACCEPT_FATAL_ERRNOS:
            logger.error("accepting on %s failed: %s; the listener cannot recover, no longer accepting",
                         self._listener.address if self._listener is not None else "?", exc)
            return
        self._log_accept(logging.ERROR, "accepting failed: %s; pausing accept for %.0f ms", exc, ACCEPT_PAUSE * 1000)
        self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)  # type: ignore[union-attr]  # started

    def stop_accepting(self) -> None:
        """From the server's thread, before the listener closes: stop watching it, after taking what the
        kernel queued (those are served, not reset); returns once the event loop did so."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            self._stopped_accepting.set()
            return
        loop.call_soon_threadsafe(self._take_backlog_and_stop)
        if not self._stopped_accepting.wait(STOP_ACCEPTING_WAIT):
            logger.warning("the asyncio dispatcher's event loop did not stop accepting within %ss", STOP_ACCEPTING_WAIT)

    def _take_backlog_and_stop(self) -> None:
        try:
            if self._accepting:
                self._accept()  # what the kernel completed already: served, not reset by the close
        finally:
            self._pause_accepting()
            self._stopped_accepting.set()

    # ---- In the event loop's thread -----------------------------------------------------

    def _take_incoming(self) -> None:
        self._scheduled = False  # first: a submit from now on schedules another round
        incoming, loop, conns = self._incoming, self._loop, self._conns
        while incoming:
            item, client_address = incoming.popleft()
            if isinstance(item, tuple):
                conn = _Conn(client_address, None, loop.time())  # type: ignore[union-attr]
                conn.task = loop.create_task(self._serve_datagram(conn, item))  # type: ignore[union-attr]
            else:
                conn = _Conn(client_address, item, loop.time())  # type: ignore[union-attr]
                conn.task = loop.create_task(self._serve_stream(conn, item))  # type: ignore[union-attr]
            conns.add(conn)
        self._watch_for_blocking()

    def _watch_for_blocking(self) -> None:
        """Requests are on the loop: run the held-loop check (unless it runs, or is off)."""
        if not self._beating and self.options.warn_blocked is not None:
            self._beating = True
            self._heartbeat(self._loop.time())  # type: ignore[union-attr]  # started

    def _heartbeat(self, due: float) -> None:
        """Runs every half ``warn_blocked`` while requests are on the loop: later than due, the loop was held.

        A timer that runs late measures, without a cost per request, how long the
        callback before it held the loop; with one handler per server, that names it.
        """
        if not self._conns:
            self._beating = False
            return
        loop = self._loop
        now = loop.time()  # type: ignore[union-attr]  # started
        limit: float = self.options.warn_blocked  # type: ignore[assignment]  # not None while it beats
        if now - due > limit:
            self._log_blocked(
                logging.WARNING, "handler %r held the event loop for at least %.2f s (warn_blocked = %s s), "
                "delaying every other client: a blocking call in an async handler? Await it in a thread "
                "(asyncio.to_thread) instead", self._handler.__qualname__, now - due, limit)
        loop.call_at(now + limit / 2, self._heartbeat, now + limit / 2)  # type: ignore[union-attr]

    async def _serve_stream(self, conn: _Conn, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        outcome, error = Outcome.FAILED, None
        transport: asyncio.Transport | None = None
        log_access = self._log_access  # None once written: one line per request, while the socket is open
        began = self._observer.begin_turn(None) if self._observer is not None else 0.0
        try:
            reader = asyncio.StreamReader(STREAM_LIMIT, loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=sock)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            conn.reader, conn.transport = reader, transport  # for the idle check
            await self._handler.stream(reader, writer)  # type: ignore[misc]  # a stream server: has it
            if log_access is not None:
                log_access(sock, conn.address, Outcome.COMPLETED, loop.time() - conn.started)
                log_access = None
            writer.close()
            await writer.wait_closed()  # the reply is on its way before the request counts as done
            outcome = Outcome.COMPLETED
        except BaseException as exc:  # the event loop carries on whatever a handler raised
            outcome, error = self._outcome_of(conn, exc, sock)
            if log_access is not None:
                log_access(sock, conn.address, outcome, loop.time() - conn.started)
            if transport is None:
                sock.close()
            elif outcome is Outcome.FAILED and conn.reason is None:
                transport.close()  # as after any handler: what it wrote is still sent
            else:
                transport.abort()  # cut off (a timeout, the drain deadline) or gone: nothing to wait for
        finally:
            if self._observer is not None:
                self._observer.end_turn(began)
            self._end(conn, outcome, error)

    async def _serve_datagram(self, conn: _Conn, request: tuple[bytes, socket.socket]) -> None:
        outcome, error = Outcome.FAILED, None
        payload, sock = request
        began = self._observer.begin_turn(None) if self._observer is not None else 0.0
        try:
            if self._handler.datagram_sends:
                reply = await self._handler.datagram(payload, conn.address, _Sender(sock))  # type: ignore[misc]
            else:
                reply = await self._handler.datagram(payload, conn.address)  # type: ignore[misc]  # a datagram server
            if reply is not None:
                send_datagram(sock, reply, conn.address)
            outcome = Outcome.COMPLETED
        except BaseException as exc:
            outcome, error = self._outcome_of(conn, exc, request)
        finally:
            if self._observer is not None:
                self._observer.end_turn(began)
            if self._log_access is not None:
                self._log_access(request, conn.address, outcome, self._loop.time() - conn.started)  # type: ignore[union-attr]
            self._end(conn, outcome, error)

    def _outcome_of(self, conn: _Conn, exc: BaseException, request: Any) -> tuple[Outcome, BaseException | None]:
        """How a request that raised ``exc`` ended, logged once (or given to the server's ``on_error``);
        the error for the hook, if any. Called inside the ``except`` block, as ``on_error`` expects."""
        who = client_label(conn.address)
        if isinstance(exc, asyncio.CancelledError) and conn.reason is not None:
            if conn.reason == "idle":
                logger.info("closing the connection of %s: idle for more than %ss", who, self._idle_timeout)
            elif conn.reason == "request":
                logger.info("closed the connection of %s: its request ran longer than %ss", who,
                            self._request_timeout)
            else:
                logger.info("connection of %s cancelled at the drain deadline", who)
                return Outcome.FAILED, None  # we ended it: no handler failure to report
            return Outcome.TIMED_OUT, None
        if isinstance(exc, StageFailed):  # the client broke the protocol (a line too long): its fault
            self._log_refused(logging.INFO, "refused the connection of %s: %s", who, exc)
            return Outcome.REFUSED, None
        if isinstance(exc, _CLIENT_GONE):
            self._log_gone(logging.INFO, "client %s went away mid-request: %s", who, exc)
            return Outcome.DISCONNECTED, None
        if isinstance(exc, Exception) and self._on_error is not None:
            try:
                self._on_error(request, conn.address, exc)
            except Exception:
                logger.exception("on_error raised while handling the failure of %s's request", who)
        elif isinstance(exc, Exception | asyncio.CancelledError):
            logger.error("error while serving %s", who, exc_info=exc)
        else:  # SystemExit, KeyboardInterrupt from a handler: not the event loop's end
            logger.error("handler serving %s raised %r; the event loop carries on", who, exc)
        return Outcome.FAILED, exc

    def _end(self, conn: _Conn, outcome: Outcome, error: BaseException | None) -> None:
        self._conns.discard(conn)
        try:
            self._host.finished(outcome, error, conn.address)  # counted; the hook hears of a failure
        finally:
            self._slots.give_back()  # wakes the server's loop when this frees room
            if self._draining and not self._slots.taken:
                self._drained.set()
            if self._listener is not None and not self._accepting and not self._stopped_accepting.is_set() \
                    and not self._slots.full() and not self._host.at_capacity():
                self._resume_accepting()

    def _sweep(self) -> None:
        """Cancel the handlers of connections idle or running past their timeouts; runs every ``_sweep_every``."""
        loop = self._loop
        now = loop.time()  # type: ignore[union-attr]
        idle, longest = self._idle_timeout, self._request_timeout
        for conn in list(self._conns):
            if conn.sock is None or conn.reason is not None:
                continue  # a datagram, or cancelled already
            if longest is not None and now - conn.started >= longest:
                conn.cancel("request")
            elif idle is not None and conn.transport is not None:
                # Waiting on the client: the same read still pending as at the last look
                # (asyncio's StreamReader keeps it as ``_waiter``), or the same bytes still
                # unsent because the client does not read. Nothing to count per request.
                waiter = getattr(conn.reader, "_waiter", None)
                unsent = conn.transport.get_write_buffer_size()
                if (waiter is not None and waiter is conn.waiter) or (unsent and unsent == conn.unsent):
                    if now - conn.quiet_since >= idle:
                        conn.cancel("idle")
                else:
                    conn.waiter, conn.unsent, conn.quiet_since = waiter, unsent, now
        loop.call_later(self._sweep_every, self._sweep)  # type: ignore[union-attr,arg-type]

    def _cancel_all(self, reason: str) -> None:
        for conn in list(self._conns):
            if conn.reason is None:
                conn.cancel(reason)

    # ---- Stopping --------------------------------------------------------------------------

    def drain(self, timeout: float | None) -> bool:
        self._draining = True
        if not self._slots.taken:
            return True
        return self._drained.wait(timeout)

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return  # never started
        if thread.is_alive():
            self._draining = True
            if self._slots.taken:
                loop.call_soon_threadsafe(self._cancel_all, "drain")
                if not self._drained.wait(CANCEL_GRACE):
                    logger.error("%d async handler(s) did not end %ss after being cancelled; abandoning them",
                                 self._slots.taken, CANCEL_GRACE)
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
        # Whatever never ended (a handler that ignored its cancellation, requests the loop
        # never took): close its socket and count it, so that nothing is left active.
        leftovers = [(conn.sock, conn.address) for conn in self._conns]
        leftovers += [(item if not isinstance(item, tuple) else None, address) for item, address in self._incoming]
        self._conns.clear()
        self._incoming.clear()
        for sock, address in leftovers:
            if sock is not None:
                sock.close()
            self._host.finished(Outcome.FAILED, None, address)
            self._slots.give_back()


@final
class _Conn:
    """One request on the event loop: its task, and what the timeout sweep needs."""

    __slots__ = ("address", "quiet_since", "reader", "reason", "sock", "started", "task", "transport", "unsent",
                 "waiter")

    def __init__(self, address: Any, sock: socket.socket | None, started: float) -> None:
        self.address = address
        self.sock = sock  # None for a datagram
        self.started = self.quiet_since = started
        self.reader: asyncio.StreamReader | None = None
        self.transport: asyncio.Transport | None = None
        self.waiter: object = None  # the pending read, and the unsent bytes, at the last look that saw a change
        self.unsent = 0
        self.reason: str | None = None  # why we cancelled it: "idle", "request", "drain"
        self.task: asyncio.Task[None] | None = None

    def cancel(self, reason: str) -> None:
        self.reason = reason
        if self.task is not None:
            self.task.cancel()


@final
class _Sender:
    """What a datagram handler's third parameter gets: ``sendto`` on the transport's socket, nothing else."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def sendto(self, data: bytes, client_address: Any) -> None:
        send_datagram(self._sock, data, client_address)


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop  # checked by the options' validator; an optional dependency

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's own errors (a protocol callback that failed) go to the sockwork logger."""
    logger.error("event loop: %s", context.get("message", "error"), exc_info=context.get("exception"))


@hookimpl(trylast=True)
def sockwork_add_dispatchers() -> list[DispatcherEntry]:
    from sockwork.registry import DispatcherEntry  # the registry is loaded only when one is built

    return [
        DispatcherEntry(
            "asyncio", AsyncioDispatcher, AsyncioOptions,
            description="async handlers (sockwork.aio) on one event loop: asyncio's, or uvloop",
        )
    ]
