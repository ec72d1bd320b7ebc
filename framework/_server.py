"""Server: built parts, served. The facade over the loop, the requests and the lifecycle.

    assembly ──► Parts(transport, dispatcher, handler) ──► Server
                                                            ├── Loop        selector, accept, backoff, watched fds
                                                            ├── Requests    admit, serve, end, count
                                                            └── Lifecycle   start, shutdown, drain, force, signals

Rule 1: the Server resolves no names; given names, it asks assembly once.
Rule 2: the parts talk to each other through the small surfaces above; a
dispatcher sees only its host (the roles in sockwork.interfaces: DispatcherHost,
ProcessDispatcherHost, SupervisorHost).
Rule 3: nothing on the per-request path calls a hook that no plugin implements.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, final

from ._health import ListenerAddress, close_all, health_listeners, open_all
from ._host import ServerSideHost
from ._lifecycle import Lifecycle
from ._loop import Loop
from ._parts import Parts
from ._requests import Requests
from .deadlines import deadline_after, remaining
from .errors import ConfigError
from .interfaces import Address, Dispatcher, Request, Transport, capability
from .limits import Limits, ServerStats
from .metrics import Observer, metrics_endpoint
from .urls import format_address
from .validators import check_access_log, check_drain_timeout

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["Server"]

logger = logging.getLogger("sockwork")


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
    line per request on the ``sockwork.access`` logger. ``metrics``, ``observer``: see :mod:`sockwork.metrics`.

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
        lame_duck: float = 0.0, agent_check: ListenerAddress = None, health: ListenerAddress = None,
        metrics: ListenerAddress = None, observer: Observer | None = None,
    ) -> None:
        check_drain_timeout(drain_timeout)
        check_access_log(access_log)
        self.side_listeners = health_listeners(self, lame_duck, agent_check, health)  # each checked; bound below
        self.metrics, self.observer = metrics_endpoint(self, metrics, observer)  # checked (the extra); bound below
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
        self._service_actions = service_actions
        self.requests = Requests(self.transport, self.handler, limits=limits, hooks=parts.hooks, on_error=on_error,
                                 handler_server=self if handler_server is None else handler_server,
                                 access_log=access_log, observer=self.observer)
        self.requests.server = self
        self._bind(lame_duck)

    def _bind(self, lame_duck: float) -> None:
        """The end of ``__init__``: open the transport (last: everything before fails without a
        socket open), then the loop and the lifecycle; on failure nothing is left open."""
        try:
            self.transport.open()
        except BaseException:
            self.dispatcher.close()  # built, never started: close() is still its to run
            raise
        hooks = self.parts.hooks
        try:
            open_all(self.side_listeners)
            self.loop = Loop(self.transport, self.dispatcher, self.requests,
                             on_round=hooks.stats_reporter(self, self.limits.stats_interval))
        except BaseException:
            close_all(self.side_listeners)
            self.transport.close()
            self.dispatcher.close()
            raise
        self.lifecycle = Lifecycle(self, self.transport, self.dispatcher, self.loop, self.requests, hooks,
                                   self.drain_timeout, lame_duck, self.side_listeners.values())

    def __repr__(self) -> str:
        return f"<Server {self.url} {type(self.dispatcher).__name__} handler={self.handler!r}>"

    @property
    def url(self) -> str:
        """The bound address as a transport URL, e.g. ``tcp://127.0.0.1:40123``."""
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
        self.lifecycle.begin_serving(ServerSideHost(self))
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
        in the loop, and the next call goes on waiting for it). Returns False
        if the timeout passed, if :meth:`shutdown` was called, or if the pending
        request vanished before it could be taken (aborted by the client,
        refused by the transport), as ``socketserver``'s ``handle_request``
        does. ``timeout=0`` takes a request only if one is already waiting.
        """
        if not self.loop.accepts:
            raise RuntimeError("handle_request() needs a dispatcher the loop hands requests to; "
                               f"{type(self.dispatcher).__name__}'s workers accept by themselves: use serve_forever()")
        deadline = deadline_after(timeout)
        self.lifecycle.begin_serving(ServerSideHost(self))
        (loop := self.loop).report_turns(True)  # turns workers take themselves count as dispatched
        try:
            while not loop.stop_requested:
                if loop.dispatched_since_asked():  # (asyncio may take one while no call waits)
                    return True
                dispatched = loop.run_once(remaining(deadline), 1)
                if loop.dispatched_since_asked():
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

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
