"""Server = Transport + Dispatcher + HandlerFactory, and the accept loop that joins them.

Rule 1: an accepted request belongs to the Dispatcher until its handler
returns; the Server then closes it, even if the handler raised. A request
that cannot be handed to the Dispatcher is closed at once and logged.
Rule 2: the loop never busy-waits. It sleeps in one selector that also
watches a wake-up socket, so shutdown() and freed capacity wake it at once.
Rule 3: nothing on the per-request path calls a hook no plugin implements.
"""

from __future__ import annotations

import errno
import logging
import math
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, final

from ._deadline import deadline_after, remaining
from ._ratelimit import RateLimitedLog
from .errors import ConfigError
from .interfaces import Address, Dispatcher, Request, Transport
from .limits import Counters, Deadlines, Limits, Outcome, ServerStats
from .registry import Kind, Registry
from .urls import format_address, parse_transport_url

__all__ = ["ACCEPT_CAPACITY_ERRNOS", "Server", "check_handler_kind"]

logger = logging.getLogger("sockwork")

ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""accept() errors that mean "out of resources right now": back off and retry."""

ACCEPT_BATCH = 16
"""Most requests accepted per wake-up, so one busy listener cannot starve the loop."""

SATURATED_RECHECK = 0.05
"""While the dispatcher is saturated, look again at least this often (seconds),
in case a plugin dispatcher frees capacity without calling ``wake()``."""

BACKOFF_MIN, BACKOFF_MAX = 0.01, 1.0
"""Pause after a failed accept (seconds); doubles on each failure in a row."""

LOG_EVERY = 5.0
"""Accept failures are logged at most once per this many seconds."""

LOOP_EXIT_GRACE = 0.25
"""However short the drain timeout, how long close() lets the loop notice the stop."""

FORCE_GRACE = 1.0
"""After the drain deadline, how long handlers get to notice their
connections were shut down before the Server gives up on them."""

_LISTENER = "listener"
_WAKE = "wake"


@final
class _Host:
    """What a Dispatcher sees of its Server (see ``DispatcherHost``)."""

    __slots__ = ("add_reader", "after_fork", "finished", "release", "remove_reader", "run_worker", "serve", "wake")

    def __init__(self, server: Server) -> None:
        self.serve = server._serve
        self.release = server._release
        self.finished = server._finished
        self.after_fork = server._after_fork
        self.wake = server._wake
        self.add_reader = server._add_reader
        self.remove_reader = server._remove_reader
        self.run_worker = server._run_worker


@final
class Server:
    """A network server assembled from a Transport, a Dispatcher and a handler factory.

    Each part may be given as a registered name (with a mapping of options),
    as an options object of a registered component, or as a ready component;
    a transport also as a URL (see :mod:`sockwork.urls`)::

        Server(transport="tcp://127.0.0.1:0", dispatcher="pool", handler=EchoHandler)
        Server(transport="tcp", transport_options={"address": ("127.0.0.1", 0)}, handler="echo")
        Server(transport=TCPOptions(address=("127.0.0.1", 8000), backlog=4096),
               dispatcher=PoolOptions(workers=8), handler=EchoHandler)

    The transport is bound before ``__init__`` returns; anything invalid fails
    first, with a :class:`~sockwork.ConfigError`, and leaves no socket open.

    ``on_error(request, client_address, exc)``, if given, is called (inside
    the ``except`` block) instead of logging a handler's exception.
    ``service_actions()``, if given, runs after every round of the loop, and
    at least every ``poll_interval`` seconds when ``serve_forever`` gets one.

    Resource handling: ``close()`` (or leaving a ``with`` block) stops
    accepting, lets running requests finish for up to ``drain_timeout``
    seconds, shuts down the connections of those still running after that,
    and closes everything the server opened.
    """

    def __init__(
        self,
        transport: str | object,
        handler: str | Callable[..., object],
        dispatcher: str | object = "thread",
        *,
        transport_options: Mapping[str, Any] | None = None,
        dispatcher_options: Mapping[str, Any] | None = None,
        handler_options: Mapping[str, Any] | None = None,
        drain_timeout: float | None = 10.0,
        limits: Limits | None = None,
        registry: Registry | None = None,
        on_error: Callable[[Request, Address, Exception], object] | None = None,
        service_actions: Callable[[], object] | None = None,
        handler_server: object = None,
    ) -> None:
        if drain_timeout is not None and (
            isinstance(drain_timeout, bool)
            or not isinstance(drain_timeout, (int, float))
            or not 0 <= drain_timeout < math.inf
        ):
            raise ConfigError(f"'drain_timeout' must be a finite number >= 0, or None to wait forever: {drain_timeout!r}")
        if limits is not None and not isinstance(limits, Limits):
            raise ConfigError(f"'limits' must be a sockwork.Limits, got {limits!r}")
        self.limits = limits = limits if limits is not None else Limits()
        self.registry = registry if registry is not None else Registry()
        self.drain_timeout = drain_timeout
        self.transport: Transport = _component(self.registry, "transport", transport, transport_options, Transport)
        self.dispatcher: Dispatcher = _component(
            self.registry, "dispatcher", dispatcher, dispatcher_options, Dispatcher
        )
        self.handler = _handler(self.registry, handler, handler_options)
        check_handler_kind(self.handler, self.transport, handler)
        # The object handlers receive as ``server``; the legacy module passes itself.
        self._handler_server = self if handler_server is None else handler_server
        self._on_error = on_error
        self._service_actions = service_actions
        hook = self.registry.plugin_manager.hook
        self._hook = hook
        self._failure_hook = hook.sockwork_request_failed if hook.sockwork_request_failed.get_hookimpls() else None
        self._stats_hook = hook.sockwork_collect_stats if hook.sockwork_collect_stats.get_hookimpls() else None
        self._next_stats = 0.0

        stream = self.transport.kind == "stream"
        self._cap = limits.max_connections if limits.over_limit == "wait" else None
        self._reject_above = limits.max_connections if limits.over_limit == "close" else None
        self._counters = Counters(wake_below=self._cap)
        self._idle_timeout = limits.idle_timeout if stream else None
        self._deadlines = Deadlines(limits.request_timeout) if stream and limits.request_timeout else None
        self._guard_connections = self._idle_timeout is not None or self._deadlines is not None

        self._in_flight: dict[int, Request] = {}
        self._state_lock = threading.Lock()
        self._serving_thread: int | None = None
        self._not_serving = threading.Event()
        self._not_serving.set()
        self._serving = threading.Event()
        self._teardown_by_loop = False
        self._shutdown_requested = False
        self._forcing = False
        self._started = False
        self._closed = False
        self._listening = False
        self._paused_until = 0.0
        self._backoff = BACKOFF_MIN
        self._log_accept_failure = RateLimitedLog(logger, LOG_EVERY)

        self.transport.open()  # last: everything above fails without a socket open
        try:
            self._wake_r, self._wake_w = socket.socketpair()
            for end in (self._wake_r, self._wake_w):
                end.setblocking(False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        except BaseException:
            self.transport.close()
            raise
        self._listener_fd = self.transport.fileno()
        # A dispatcher whose workers accept by themselves (prefork): the loop only supervises.
        self._dispatcher_accepts = bool(getattr(self.dispatcher, "accepts_itself", False))

    def __repr__(self) -> str:
        return f"<Server {self.url} {type(self.dispatcher).__name__} handler={self.handler!r}>"

    @property
    def url(self) -> str:
        """The bound address as a transport URL, e.g. ``tcp://127.0.0.1:40123``."""
        return format_address(getattr(self.transport, "name", "transport"), self.address)

    @property
    def stats(self) -> ServerStats:
        """A consistent snapshot of the counters, safe to take from any thread.

        With a dispatcher whose workers serve in other processes (prefork),
        it includes what they last reported (``stats_elsewhere``).
        """
        own = self._counters.snapshot(oversized=getattr(self.transport, "oversized", 0))
        elsewhere = getattr(self.dispatcher, "stats_elsewhere", None)
        return own if elsewhere is None else own + elsewhere

    @property
    def address(self) -> Address:
        """The bound address (the real port when port 0 was asked for)."""
        return self.transport.address

    # ---- Serving ---------------------------------------------------------

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Accept and dispatch requests until :meth:`shutdown` is called.

        ``poll_interval`` only matters with ``service_actions``: how often they
        run when nothing happens. Shutdown never waits for it.

        Error handling: handler errors are logged and reported to the
        ``sockwork_request_failed`` hook; failed accepts (out of descriptors
        and the like) are logged at most every few seconds and retried with
        a growing pause; the loop never spins.
        """
        self._begin_serving()
        try:
            batch = getattr(self.transport, "accept_batch", ACCEPT_BATCH)
            service_actions = self._service_actions
            if service_actions is None:
                while not self._shutdown_requested:
                    self._run_once(None, batch)
            else:
                while not self._shutdown_requested:
                    self._run_once(poll_interval, batch)
                    service_actions()
        finally:
            self._end_serving()

    def handle_request(self, timeout: float | None = None) -> bool:
        """Wait at most ``timeout`` seconds for a request and dispatch it.

        Returns True if a request was handed to the dispatcher (with ``inline``
        it has also been served). Returns False if the timeout passed, if
        :meth:`shutdown` was called, or if the pending request vanished before
        it could be taken (a connection the client aborted, one the transport
        refused) — as ``socketserver``'s ``handle_request`` does. ``timeout=0``
        takes a request only if one is already waiting.
        """
        if self._dispatcher_accepts:
            raise RuntimeError("handle_request() needs a dispatcher the loop hands requests to; "
                               f"{type(self.dispatcher).__name__}'s workers accept by themselves: use serve_forever()")
        deadline = deadline_after(timeout)
        self._begin_serving()
        try:
            while not self._shutdown_requested:
                dispatched = self._run_once(remaining(deadline), 1)
                if dispatched is not None:
                    return dispatched > 0
                if deadline is not None and time.monotonic() >= deadline:
                    return False
            return False
        finally:
            self._end_serving()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has returned.

        Returns as soon as the loop notices (no polling interval). Called from
        the serving thread itself (by an inline handler), it does not wait.
        A shutdown requested while nothing serves makes the next
        ``serve_forever`` return at once, so it is never lost.
        """
        self._shutdown_requested = True
        self._wake()
        if self._serving_thread != threading.get_ident():
            self._not_serving.wait()

    def close(self) -> None:
        """Stop accepting, drain the dispatcher, close everything. Idempotent.

        Running requests get ``drain_timeout`` seconds (counted from this
        call) to finish; after that their connections are shut down, which
        ends any handler blocked on its client, and the dispatcher ends what
        it can (child processes are killed). What still runs is logged.
        """
        with self._state_lock:
            if self._closed:
                return
            if self._serving_thread == threading.get_ident():
                raise RuntimeError("close() called from the serving thread; call shutdown() instead")
            self._closed = True
        deadline = deadline_after(self.drain_timeout)
        self._shutdown_requested = True
        self._wake()
        try:
            if not self._stop_and_drain(deadline):
                self._force_stop()
            self.dispatcher.close()
        finally:
            with self._state_lock:
                # A loop still held by an inline handler owns its selector until it
                # leaves; closing it under the loop would hang or crash it.
                loop_left = self._serving_thread is None
                self._teardown_by_loop = not loop_left
            if loop_left:
                self._teardown()

    def _teardown(self) -> None:
        if self._deadlines is not None:
            self._deadlines.stop()
        self.transport.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        if self._started:
            self._call_lifecycle_hook(self._hook.sockwork_server_stopped)

    def wait_serving(self, timeout: float | None = None) -> bool:
        """Wait until ``serve_forever`` (in another thread) has started the dispatcher.

        Useful before starting work that must not race with it, such as
        spawning processes while a process-based dispatcher forks its workers.
        """
        return self._serving.wait(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- The loop --------------------------------------------------------

    def _begin_serving(self) -> None:
        with self._state_lock:
            if self._closed:
                raise RuntimeError("the server is closed")
            if self._serving_thread is not None:
                raise RuntimeError("the server is already serving in another thread")
            self._serving_thread = threading.get_ident()
            self._not_serving.clear()
            first = not self._started
            self._started = True
        if first:
            self.dispatcher.start(_Host(self))
            self._call_lifecycle_hook(self._hook.sockwork_server_started)
        self._serving.set()

    def _end_serving(self) -> None:
        with self._state_lock:
            self._shutdown_requested = False
            self._serving_thread = None
            self._serving.clear()
            self._not_serving.set()
            teardown = self._teardown_by_loop
        if teardown:
            self._teardown()

    def _run_once(self, timeout: float | None, limit: int) -> int | None:
        """Wait for one round of events and handle them.

        Returns the number of requests dispatched, or None if the listener was
        not ready in this round.
        """
        # The common case (not paused, no stats hook) reads no clock and makes no
        # call but saturated(): this runs once per request when accepting one at a time.
        paused = self._paused_until and time.monotonic() < self._paused_until
        saturated = self._saturated()
        listening = not (paused or saturated or self._dispatcher_accepts)
        if listening != self._listening:
            self._set_listening(listening)
        if paused:
            timeout = _shorter(timeout, self._paused_until - time.monotonic())
        elif saturated:
            timeout = _shorter(timeout, SATURATED_RECHECK)
        if self._stats_hook is not None:
            timeout = _shorter(timeout, max(0.0, self._next_stats - time.monotonic()))
        dispatched = None
        for key, _ in self._selector.select(timeout):
            what = key.data
            if what is _LISTENER:
                dispatched = self._accept_batch(limit)
            elif what is _WAKE:
                _drain_socket(self._wake_r)
            else:
                what()
        if self._stats_hook is not None and time.monotonic() >= self._next_stats:
            self._report_stats()
        return dispatched

    def _saturated(self) -> bool:
        """Whether to stop accepting: the dispatcher is full, or the connection cap is reached."""
        cap = self._cap
        return self.dispatcher.saturated() or (cap is not None and self._counters.active >= cap)

    def _accept_batch(self, limit: int) -> int:
        accept = self.transport.accept
        submit = self.dispatcher.submit
        saturated = self._saturated
        count_accepted = self._counters.accept
        reject_above = self._reject_above if self._reject_above is not None else math.inf
        in_flight = self._in_flight
        dispatched = 0
        while dispatched < limit and not self._shutdown_requested:
            try:
                accepted = accept()
            except OSError as exc:
                self._pause_accepting(exc)
                break
            if accepted is None:
                break
            request, client_address = accepted
            if count_accepted() > reject_above:
                self._counters.reject()  # over the cap, and told to say so at once
                self.transport.close_request(request)
                continue
            in_flight[id(request)] = request
            try:
                submit(request, client_address)
            except Exception as exc:
                if id(request) not in in_flight:
                    raise  # served and reported already: it is on_error that raised
                # Never lose an accepted request silently: report it, end it, and
                # pause (unless the application handles its errors itself).
                self._report_failure(request, client_address, exc)
                self._end_request(request)
                if self._on_error is None:
                    self._pause_accepting(exc)
                break  # one request per round from here: the transport's next accept may block
            except BaseException:
                self._end_request(request)
                raise
            dispatched += 1
            if saturated():
                break
        if dispatched:
            self._backoff = BACKOFF_MIN
        return dispatched

    def _pause_accepting(self, exc: Exception) -> None:
        """Stop accepting for a growing pause and log it, at most every LOG_EVERY seconds."""
        pause = self._backoff
        self._paused_until = time.monotonic() + pause
        self._backoff = min(pause * 2, BACKOFF_MAX)
        self._set_listening(False)
        capacity = isinstance(exc, OSError) and exc.errno in ACCEPT_CAPACITY_ERRNOS
        self._log_accept_failure(
            logging.ERROR, "%s on %s: %s; pausing accept for %.0f ms",
            "out of resources accepting" if capacity else "accept/dispatch failed", self.address, exc, pause * 1000,
        )

    def _report_stats(self) -> None:
        self._next_stats = time.monotonic() + self.limits.stats_interval
        try:
            self._stats_hook(server=self, stats=self.stats)  # type: ignore[misc]
        except Exception:
            logger.exception("sockwork_collect_stats hook raised")

    def _set_listening(self, listening: bool) -> None:
        if listening == self._listening or self._closed and listening:
            return
        if listening:
            self._selector.register(self._listener_fd, selectors.EVENT_READ, _LISTENER)
        else:
            self._selector.unregister(self._listener_fd)
        self._listening = listening

    # ---- Host services for the dispatcher ----------------------------------

    def _serve(self, request: Request, client_address: Address) -> Outcome:
        token = None
        if self._guard_connections and not isinstance(request, tuple):
            if self._idle_timeout is not None:
                request.settimeout(self._idle_timeout)
            if self._deadlines is not None:
                token = self._deadlines.add(request)
        outcome = Outcome.FAILED  # until the handler returns; a BaseException leaves it so
        try:
            self.handler(request, client_address, self._handler_server)
            outcome = Outcome.COMPLETED
        except Exception as exc:
            outcome = self._handler_failed(request, client_address, exc, token)
        except BaseException as exc:
            if self._on_error is None:  # SystemExit in a thread is otherwise silent
                logger.error("handler serving %s raised %r; passing it on", _client(client_address), exc)
            raise
        finally:
            if token is not None and self._deadlines.remove(token) and outcome is not Outcome.TIMED_OUT:  # type: ignore[union-attr]
                self._log_deadline(client_address)  # the handler ended quietly on the shut-down connection
                outcome = Outcome.TIMED_OUT
            # Always end it: a dispatcher may serve a request rebuilt in another
            # process, which this process never tracked.
            self._in_flight.pop(id(request), None)
            self.transport.close_request(request)
            self._finished(outcome)
        return outcome

    def _handler_failed(self, request: Request, client_address: Address, exc: Exception, token: int | None) -> Outcome:
        # A socket timeout says exactly "timed out"; a handler's own TimeoutError
        # (a database's, say) is a failure like any other.
        if isinstance(exc, TimeoutError) and self._idle_timeout is not None and exc.args == ("timed out",):
            logger.info("closing the connection of %s: idle for more than %ss", _client(client_address),
                        self._idle_timeout)
            return Outcome.TIMED_OUT
        if token is not None and isinstance(exc, OSError) and token in self._deadlines.expired:  # type: ignore[union-attr]
            self._log_deadline(client_address)
            return Outcome.TIMED_OUT
        self._report_failure(request, client_address, exc)
        return Outcome.FAILED

    def _log_deadline(self, client_address: Address) -> None:
        logger.info("closed the connection of %s: its request ran longer than %ss", _client(client_address),
                    self.limits.request_timeout)

    def _finished(self, outcome: Outcome) -> None:
        """Count a finished request; wake the loop if that frees a slot under the cap."""
        if self._counters.finish(outcome):
            self._wake()

    def _end_request(self, request: Request) -> None:
        """Close a request the dispatcher failed to take, unless it was served already."""
        if self._in_flight.pop(id(request), None) is not None:
            self.transport.close_request(request)
            self._finished(Outcome.FAILED)

    def _report_failure(self, request: Request, client_address: Address, exc: Exception) -> None:
        if self._failure_hook is not None:
            try:
                self._failure_hook(server=self, client_address=client_address, exc=exc)
            except Exception:
                logger.exception("sockwork_request_failed hook raised")
        if self._on_error is not None:
            self._on_error(request, client_address, exc)
        elif self._forcing and isinstance(exc, OSError):
            # Expected: we shut this connection down ourselves at the drain deadline.
            logger.info("connection of %s ended at the drain deadline: %s", _client(client_address), exc)
        else:
            logger.error("error while serving %s", _client(client_address), exc_info=exc)

    def _settle(self, request: Request, outcome: Outcome) -> None:
        """Count a request something else served and closed (a legacy override)."""
        if self._in_flight.pop(id(request), None) is not None:
            self._finished(outcome)

    def _release(self, request: Request) -> None:
        self._in_flight.pop(id(request), None)
        self.transport.release_request(request)

    def _after_fork(self) -> None:
        # In a child: drop the parent's loop; the child serves one request and exits.
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        self.transport.after_fork()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            # Full: a wake-up is already pending. Closed: nobody is left to wake.
            pass

    def _run_worker(
        self, dispatcher: Dispatcher, max_requests: int | None = None,
        report: Callable[[ServerStats], None] | None = None, report_every: float = 0.2,
    ) -> Outcome:
        """In a forked child: a complete server on this one's transport, with ``dispatcher``.

        It serves until SIGTERM (then stops accepting and drains, as ``close()``
        does) or until it has finished ``max_requests`` requests. ``report``
        gets its counters at most every ``report_every`` seconds and once at
        the end. Returns COMPLETED after a clean stop; the caller then exits.
        """
        self._selector.close()  # the parent's loop, inherited: not ours
        self._wake_r.close()
        self._wake_w.close()
        worker = Server(
            transport=_Adopted(self.transport), dispatcher=dispatcher, handler=self.handler,
            drain_timeout=self.drain_timeout, limits=self.limits, registry=self.registry,
            on_error=self._on_error, handler_server=self._handler_server,
        )
        next_report = 0.0

        def service() -> None:
            nonlocal next_report
            done = worker._counters
            if max_requests is not None and done.completed + done.failed + done.timed_out >= max_requests:
                worker._shutdown_requested = True  # recycled: stop accepting, drain, exit
            if report is not None and time.monotonic() >= next_report:
                next_report = time.monotonic() + report_every
                report(worker.stats)

        if max_requests is not None or report is not None:
            worker._service_actions = service
        signal.signal(signal.SIGINT, _ignore_signal)  # the parent decides when workers stop
        signal.signal(signal.SIGTERM, lambda signum, frame: worker.shutdown())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # whatever the parent blocked
        signal.set_wakeup_fd(worker._wake_w.fileno(), warn_on_full_buffer=False)
        try:
            worker.serve_forever(report_every if report is not None else None)
        finally:
            signal.set_wakeup_fd(-1)
            worker.close()
            if report is not None:
                report(worker.stats)
        return Outcome.COMPLETED

    def _add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def _remove_reader(self, fd: int) -> None:
        self._selector.unregister(fd)

    # ---- Stopping ----------------------------------------------------------

    def _stop_and_drain(self, deadline: float | None) -> bool:
        """Wait for the loop to stop, stop listening, drain; True if all finished in time."""
        # Leaving the loop takes microseconds unless an inline handler holds it,
        # so even a zero drain timeout waits a moment for that.
        left = remaining(deadline)
        if not self._not_serving.wait(None if left is None else max(left, LOOP_EXIT_GRACE)):
            return False  # an inline handler holds the loop; _force_stop deals with it
        self._stop_listening()
        return not self._started or self.dispatcher.drain(remaining(deadline))

    def _stop_listening(self) -> None:
        self._set_listening(False)
        if self.transport.kind == "stream":
            # Close the listener before draining: a worker stuck on a slow client
            # must not leave new clients waiting in a backlog nobody will accept.
            # (A datagram socket is also the reply channel of running requests.)
            self.transport.close()

    def _force_stop(self) -> None:
        """After the drain deadline: shut down the connections still served here.

        What runs elsewhere (forked children) is ended by ``dispatcher.close()``.
        """
        self._forcing = True
        connections = [r for r in self._in_flight.values() if isinstance(r, socket.socket)]
        logger.warning(
            "requests still running after the %ss drain timeout; %s", self.drain_timeout,
            f"shutting down their {len(connections)} connection(s)" if connections else "ending them",
        )
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler or the peer
        if connections and self._stop_and_drain(deadline_after(FORCE_GRACE)):
            return
        if self._in_flight:
            logger.error(
                "%d request(s) did not finish after the drain deadline; abandoning them",
                len(self._in_flight),
            )

    def _call_lifecycle_hook(self, hook: Any) -> None:
        try:
            hook(server=self)
        except Exception:
            logger.exception("%s hook raised", hook.name)


class _Adopted:
    """A transport already open, taken over by a worker process's server."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def open(self) -> None:
        pass  # opened by the parent; this process inherited it

    def close(self) -> None:
        # Only this process's copy: the parent still serves (and owns a Unix
        # socket file, which must stay).
        self._transport.after_fork()


def _ignore_signal(signum: int, frame: Any) -> None:
    pass


def check_handler_kind(handler: Any, transport: Any, name: object = None) -> None:
    """Refuse a handler made for the other kind of request (see ``stream_handler``)."""
    handles = getattr(handler, "sockwork_kind", None)
    if handles is not None and handles != transport.kind:
        shown = name if isinstance(name, str) else getattr(handler, "__qualname__", handler)
        raise ConfigError(
            f"handler {shown!r} serves {handles} requests, "
            f"but the {getattr(transport, 'name', 'given')} transport delivers {transport.kind} requests"
        )


def _client(client_address: Address) -> str:
    # Unix clients that did not bind a name have an empty address.
    return str(client_address) if client_address else "an unnamed client"


def _shorter(timeout: float | None, other: float) -> float:
    return other if timeout is None else min(timeout, other)


def _drain_socket(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


def _component(registry: Registry, kind: Kind, spec: object, options: Mapping[str, Any] | None, role: type) -> Any:
    """Turn a name, an options object or a ready component into a component."""
    if isinstance(spec, str):
        if kind == "transport" and ":" in spec:
            if options is not None:
                raise ConfigError(f"transport_options cannot be combined with the URL {spec!r}")
            spec, options = parse_transport_url(spec)
        return registry.build(kind, spec, options)
    entry = registry.entry_for_options(kind, spec)
    if entry is not None:
        if options is not None:
            raise ConfigError(f"{kind} options were given twice: as {spec!r} and as {options!r}")
        return registry.build(kind, entry.name, spec)
    if options is not None:
        raise ConfigError(f"{kind}_options only apply to a {kind} given by name, not to {spec!r}")
    missing = [name for name in _REQUIRED_METHODS[kind] if not callable(getattr(spec, name, None))]
    if missing:
        names = ", ".join(e.name for e in registry.entries(kind))
        raise ConfigError(
            f"{kind} must be a registered name ({names}), the options object of one, "
            f"or a {role.__name__} object; got {spec!r}, which lacks {', '.join(m + '()' for m in missing)}"
        )
    return spec


# What a ready component must have; the Protocols in sockwork.interfaces document them.
_REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    "transport": ("open", "fileno", "accept", "close_request", "release_request", "after_fork", "close"),
    "dispatcher": ("start", "submit", "saturated", "drain", "close"),
}


def _handler(registry: Registry, spec: object, options: Mapping[str, Any] | None) -> Callable[..., object]:
    if isinstance(spec, str):
        return registry.build("handler", spec, options)
    if options is not None:
        raise ConfigError(f"handler_options only apply to a handler given by name, not to {spec!r}")
    if not callable(spec):
        names = ", ".join(e.name for e in registry.entries("handler"))
        raise ConfigError(
            f"handler must be callable as handler(request, client_address, server) "
            f"or a registered handler name ({names}); got {spec!r}"
        )
    return spec
