"""Server: built parts, served. The facade over the loop, the requests and the lifecycle.

    assembly ──► Parts(transport, dispatcher, handler) ──► Server
                                                            ├── Loop        selector, accept, backoff, watched fds
                                                            ├── Requests    admit, serve, end, count
                                                            └── Lifecycle   start, shutdown, drain, force, signals

Rule 1: the Server resolves no names; given names, it asks assembly once.
Rule 2: the parts talk to each other through the small surfaces above; a
dispatcher sees only its DispatcherHost.
Rule 3: nothing on the per-request path calls a hook that no plugin implements.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, final

from ._lifecycle import Lifecycle
from ._loop import Loop
from ._parts import Parts
from ._requests import Requests
from .deadlines import deadline_after, remaining
from .errors import ConfigError
from .interfaces import Address, Dispatcher, Request, Transport, capability
from .limits import Limits, Outcome, ServerStats, WorkerExit

if TYPE_CHECKING:
    from .config import ServerConfig
    from .registry import Registry

__all__ = ["Server", "build_server"]

logger = logging.getLogger("sockwork")


@final
class _Host:
    """What a Dispatcher sees of its Server (see ``DispatcherHost``)."""

    __slots__ = (
        "add_reader",
        "admit",
        "after_fork",
        "at_capacity",
        "call_later",
        "finished",
        "handler",
        "limits",
        "release",
        "remove_reader",
        "run_worker",
        "serve",
        "take_error",
        "take_turn",
        "turns",
        "wake",
    )

    def __init__(self, server: Server) -> None:
        requests, loop = server.requests, server.loop
        self.serve = loop.serve  # the waiting set's, which serves the connections it holds
        self.release = loop.release
        self.turns = loop.turns  # for a dispatcher that takes_turns (leader/followers), else None
        self.take_turn = loop.take_turn
        # For a dispatcher that took the listener: count (and cap) what it accepts; stop at the cap.
        self.admit = loop.admit
        self.at_capacity = requests.at_capacity
        self.finished = requests.finished
        self.take_error = requests.take_error
        self.after_fork = server.after_fork
        self.wake = loop.wake
        self.add_reader = loop.add_reader
        self.remove_reader = loop.remove_reader
        self.call_later = loop.call_later
        self.run_worker = server.run_worker
        self.limits = server.limits
        self.handler = server.handler


@final
class Server:
    """A network server: a Transport, a Dispatcher and a handler factory, served.

    Give it built parts (``Server(parts=assemble(...))``), or the parts by
    name, options object or ready object, which it assembles once (see
    :func:`sockwork.assembly.assemble`)::

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
    ``handler_server`` is the object handlers receive as ``server`` (default:
    this Server). ``plugin_options`` (``server.plugin_options``) maps a plugin's
    name to its options, for lifecycle-hook plugins to read (a config file's
    ``[plugins.NAME]`` tables). ``access_log`` (``"text"`` or ``"json"``) logs one
    line per request on the ``sockwork.access`` logger.

    Resource handling: ``close()`` (or leaving a ``with`` block) stops
    accepting, lets running requests finish for up to ``drain_timeout``
    seconds, shuts down the connections of those still running after that,
    and closes everything the server opened.
    """

    def __init__(
        self,
        transport: str | object | None = None,
        handler: str | Callable[..., object] | None = None,
        dispatcher: str | object = "thread",
        *,
        parts: Parts | None = None,
        transport_options: Mapping[str, Any] | None = None,
        dispatcher_options: Mapping[str, Any] | None = None,
        handler_options: Mapping[str, Any] | None = None,
        registry: Registry | None = None,
        drain_timeout: float | None = 10.0,
        limits: Limits | None = None,
        on_error: Callable[[Request, Address, Exception], object] | None = None,
        service_actions: Callable[[], object] | None = None,
        handler_server: object = None,
        plugin_options: Mapping[str, Mapping[str, Any]] | None = None,
        access_log: str | None = None,
    ) -> None:
        if drain_timeout is not None and (
            isinstance(drain_timeout, bool)
            or not isinstance(drain_timeout, (int, float))
            or not 0 <= drain_timeout < math.inf
        ):
            raise ConfigError(
                f"'drain_timeout' must be a finite number >= 0, or None to wait forever: {drain_timeout!r}"
            )
        if limits is not None and not isinstance(limits, Limits):
            raise ConfigError(f"'limits' must be a sockwork.Limits, got {limits!r}")
        if parts is None:
            if transport is None or handler is None:
                raise ConfigError("give the parts (parts=...) or a transport and a handler")
            from .assembly import assemble  # the registry is loaded only where names need it

            parts = assemble(transport, handler, dispatcher, transport_options=transport_options,
                             dispatcher_options=dispatcher_options, handler_options=handler_options,
                             registry=registry)
        elif transport is not None or handler is not None or registry is not None or any(
            (transport_options, dispatcher_options, handler_options)
        ):
            raise ConfigError("give either parts=... or transport/handler/dispatcher and their options, not both")
        self.parts = parts
        self.transport: Transport = parts.transport
        self.dispatcher: Dispatcher = parts.dispatcher
        self.handler = parts.handler
        self.registry = parts.registry
        self.limits = limits = limits if limits is not None else Limits()
        self.plugin_options: Mapping[str, Mapping[str, Any]] = dict(plugin_options or {})
        self.drain_timeout = drain_timeout
        self._on_error = on_error
        self._service_actions = service_actions
        self.requests = Requests(
            self.transport, self.handler, limits=limits, hooks=parts.hooks, on_error=on_error,
            handler_server=self if handler_server is None else handler_server, access_log=access_log,
        )
        self.requests.server = self
        self._stats_hook = parts.hooks.collect_stats
        self._next_stats = 0.0

        try:
            self.transport.open()  # last: everything above fails without a socket open
        except BaseException:
            self.dispatcher.close()  # built, never started: close() is still its to run
            raise
        try:
            self.loop = Loop(self.transport, self.dispatcher, self.requests,
                             on_round=self._report_stats if self._stats_hook is not None else None)
        except BaseException:
            self.transport.close()
            self.dispatcher.close()
            raise
        self.lifecycle = Lifecycle(self, self.transport, self.dispatcher, self.loop, self.requests,
                                   parts.hooks, drain_timeout)

    def __repr__(self) -> str:
        return f"<Server {self.url} {type(self.dispatcher).__name__} handler={self.handler!r}>"

    @property
    def url(self) -> str:
        """The bound address as a transport URL, e.g. ``tcp://127.0.0.1:40123``."""
        from .urls import format_address

        return format_address(self.parts.transport_name, self.address)

    @property
    def address(self) -> Address:
        """The bound address (the real port when port 0 was asked for)."""
        return self.transport.address

    @property
    def stats(self) -> ServerStats:
        """A consistent snapshot of the counters, safe to take from any thread.

        With a supervisor (prefork), it includes what the workers last
        reported (``stats_elsewhere``).
        """
        return self.requests.stats(capability(self.transport, "oversized"),
                                   capability(self.dispatcher, "stats_elsewhere"))

    @property
    def wakeup_fd(self) -> int:
        """A descriptor whose writes wake the loop at once (for ``signal.set_wakeup_fd``)."""
        return self.loop.wakeup_fd

    # ---- Serving ---------------------------------------------------------

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Accept and dispatch requests until :meth:`shutdown` is called.

        ``poll_interval`` only matters with ``service_actions``: how often they
        run when nothing happens. Shutdown never waits for it.

        Error handling: handler errors are logged and reported to the
        ``sockwork_request_failed`` hook; failed accepts (out of descriptors
        and the like) are logged at most every few seconds and retried with
        a growing pause; an accept error that cannot heal (the listener was
        closed) is logged once and raised from here.
        """
        self.lifecycle.begin_serving(_Host(self))
        try:
            loop, run_once, batch = self.loop, self.loop.run_once, self.loop.batch
            service_actions = self._service_actions
            if service_actions is None:
                while not loop.stop_requested:
                    run_once(None, batch)
            else:
                while not loop.stop_requested:
                    run_once(poll_interval, batch)
                    service_actions()
        finally:
            self.lifecycle.end_serving()

    def handle_request(self, timeout: float | None = None) -> bool:
        """Wait at most ``timeout`` seconds for a request and dispatch it.

        Returns True if a request was handed to the dispatcher (with ``inline``
        it has also been served). A connection whose handler waits for the
        client counts once the client has sent something (until then it waits
        in the loop, and the next call goes on waiting for it). Returns False if the timeout passed, if
        :meth:`shutdown` was called, or if the pending request vanished before
        it could be taken (a connection the client aborted, one the transport
        refused) — as ``socketserver``'s ``handle_request`` does. ``timeout=0``
        takes a request only if one is already waiting.
        """
        if not self.loop.accepts:
            raise RuntimeError("handle_request() needs a dispatcher the loop hands requests to; "
                               f"{type(self.dispatcher).__name__}'s workers accept by themselves: use serve_forever()")
        deadline = deadline_after(timeout)
        self.lifecycle.begin_serving(_Host(self))
        loop = self.loop
        loop.report_turns(True)
        try:
            while not loop.stop_requested:
                before = loop.submitted
                dispatched = loop.run_once(remaining(deadline), 1)
                if loop.submitted > before:
                    return True
                if dispatched is not None and loop.waiting is None:
                    return False  # the pending request vanished (aborted, refused)
                if deadline is not None and time.monotonic() >= deadline:
                    return False
            return False
        finally:
            loop.report_turns(False)
            self.lifecycle.end_serving()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has returned.

        Returns as soon as the loop notices (no polling interval). Called from
        the serving thread itself (by an inline handler, or a signal handler),
        it does not wait. A shutdown requested while nothing serves makes the
        next ``serve_forever`` return at once, so it is never lost.
        """
        self.lifecycle.shutdown()

    def close(self) -> None:
        """Stop accepting, drain the dispatcher, close everything. Idempotent.

        Running requests get ``drain_timeout`` seconds (counted from this
        call) to finish; after that their connections are shut down, which
        ends any handler blocked on its client, and the dispatcher ends what
        it can (child processes are killed). What still runs is logged.
        """
        self.lifecycle.close()

    def handle_signals(self, *signals: int) -> contextlib.AbstractContextManager[None]:
        """Within this ``with`` block, SIGINT and SIGTERM (or ``signals``) stop the server gracefully.

        The first signal calls :meth:`shutdown` (``serve_forever`` returns; then
        call :meth:`close` inside the block to drain), and holds a handler that
        keeps the loop busy (``inline``) to the drain deadline. A second
        signal kills the dispatcher's child processes and ends the process at
        once with status 1 (as a second Ctrl-C means). Signals delivered to
        any thread wake the loop at once. Main thread only. Inside the block
        sockwork also handles SIGALRM and uses ``ITIMER_REAL`` (the drain
        deadline of an inline handler); the previous handlers, wake-up fd and
        timer state are restored on exit::

            with server.handle_signals():
                server.serve_forever()
                server.close()
        """
        return self.lifecycle.handle_signals(signals or (signal.SIGINT, signal.SIGTERM))

    def abort(self) -> None:
        """Kill the dispatcher's child processes at once, without waiting (for a process about to exit)."""
        self.lifecycle.abort()

    def wait_serving(self, timeout: float | None = None) -> bool:
        """Wait until ``serve_forever`` (in another thread) has started the dispatcher.

        Useful before starting work that must not race with it, such as
        spawning processes while a process-based dispatcher forks its workers.
        """
        return self.lifecycle.serving.wait(timeout)

    def settle(self, request: Request, outcome: Outcome = Outcome.COMPLETED) -> None:
        """Count ``request`` as ended with ``outcome``: for code that served and closed it itself
        (a legacy ``process_request`` override). Does nothing for a request already counted."""
        self.requests.settle(request, outcome)

    def serve_request(self, request: Request, client_address: Address) -> Outcome:
        """Serve one accepted request here and now, as a dispatcher's worker would (``host.serve``)."""
        return self.loop.serve(request, client_address)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- For dispatchers (through _Host) -----------------------------------------

    def after_fork(self) -> None:
        """In a forked child that serves one request: drop the parent's loop and listener."""
        self.loop.close_in_child()
        self.transport.after_fork()
        self.requests.in_child = True  # failures go to the parent's hook, through the dispatcher

    def run_worker(
        self, dispatcher: Dispatcher, max_requests: int | None = None,
        report: Callable[[ServerStats], None] | None = None, report_every: float = 0.2, *,
        parent: int | None = None,
    ) -> WorkerExit:
        """In a supervisor's worker (forked with :func:`sockwork.forking.fork`): serve with ``dispatcher``.

        Serves until SIGTERM (then stops accepting and drains, as ``close()``
        does), until ``max_requests`` requests have finished, or until the
        parent process is gone (``parent``: its pid, read before the fork, so that a
        parent that died before this call is noticed too). ``report`` gets the
        counters at most every ``report_every`` seconds and once at the end.
        Returns why it ended.
        """
        self.loop.close_in_child()  # the parent's loop, inherited: not ours
        if parent is None:
            parent = os.getppid()
        reason = WorkerExit.STOPPED
        next_check = 0.0

        def check() -> None:  # after every round of the worker's loop
            nonlocal reason, next_check
            if max_requests is not None and counters.finished >= max_requests:
                reason = WorkerExit.RECYCLED
                worker.shutdown()  # from the serving thread: stop accepting, drain, exit
                return
            now = time.monotonic()
            if now < next_check:
                return
            next_check = now + report_every
            if report is not None:
                report(worker.stats)
            if os.getppid() != parent:
                reason = WorkerExit.ORPHANED
                logger.warning("prefork worker %d: the parent process %d is gone; draining and stopping",
                               os.getpid(), parent)
                worker.shutdown()

        worker = Server(
            parts=Parts(transport=_Adopted(self.transport), dispatcher=dispatcher, handler=self.handler,
                        transport_name=self.parts.transport_name, hooks=self.parts.hooks.for_worker()),
            drain_timeout=self.drain_timeout, limits=self.limits, on_error=self._on_error,
            handler_server=self.requests.handler_server, service_actions=check,
            plugin_options=self.plugin_options, access_log=self.requests.access_log,
        )
        counters = worker.requests.counters
        if max_requests is not None:
            worker.loop.batch = 1  # one accept per round, so the check after each round is on time
        signal.signal(signal.SIGTERM, lambda signum, frame: worker.shutdown())
        signal.set_wakeup_fd(worker.wakeup_fd, warn_on_full_buffer=False)
        try:
            worker.serve_forever(report_every)
        finally:
            signal.set_wakeup_fd(-1)
            worker.close()
            if report is not None:
                report(worker.stats)
        return reason

    # ---- Counters to the hook ------------------------------------------------------

    def _report_stats(self) -> float:
        """After each round: call ``sockwork_collect_stats`` when due; return the time until next."""
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.limits.stats_interval
            try:
                self._stats_hook(server=self, stats=self.stats)  # type: ignore[misc]  # on_round: only if set
            except Exception:
                logger.exception("sockwork_collect_stats hook raised")
        return max(0.0, self._next_stats - now)


@final
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


def build_server(config: ServerConfig, registry: Registry | None = None) -> Server:
    """Assemble ``config`` (each part resolved once, everything checked), then bind a ready Server."""
    from .assembly import assemble_config

    parts = assemble_config(config, registry)
    logging.getLogger("sockwork").setLevel(config.log_level)
    if config.access_log is not None:
        logging.getLogger("sockwork.access").setLevel(logging.INFO)  # asked for: shown whatever log_level says
    return Server(parts=parts, drain_timeout=config.drain_timeout, limits=config.limits,
                  plugin_options=config.plugins, access_log=config.access_log)

