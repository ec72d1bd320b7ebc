"""The host a dispatcher gets in ``start(host)``: every role of ``sockwork.interfaces.ServerHost``.

Rule 1: a dispatcher reaches the server only through these members, each
bound to the one part that owns it (the loop, the requests, the transport).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, final

from ._parts import InheritedTransport, Parts
from ._requests import Requests, traffic
from .interfaces import Address, Dispatcher, Request
from .limits import Outcome

if TYPE_CHECKING:
    from ._server import Server
    from .observe import Observer

__all__ = ["ServerSideHost"]


@final
class ServerSideHost:
    """What a Dispatcher sees of its Server: the loop's services, serving requests (DispatcherHost),
    the forked child's duties (ProcessDispatcherHost) and a worker's own server (SupervisorHost)."""

    __slots__ = (
        "add_reader", "admit", "at_capacity", "call_later", "finished", "handler", "limits", "log_access",
        "observer", "on_error", "release", "remove_reader", "serve", "server", "take_error", "take_turn", "turns",
        "wake",
    )

    def __init__(self, server: Server) -> None:
        requests, loop = server.requests, server.loop
        self.server = server
        self.serve = loop.serve  # the waiting set's, which serves the connections it holds
        self.release = loop.release
        self.turns = loop.turns  # for a dispatcher that takes_turns (leader/followers), else None
        self.take_turn = loop.take_turn
        # For a dispatcher that took the listener: count (and cap) what it accepts; stop at the cap.
        self.admit = loop.admit
        self.at_capacity = requests.at_capacity
        self.finished = requests.finished
        self.take_error = requests.take_error
        self.wake = loop.wake
        self.add_reader = loop.add_reader
        self.remove_reader = loop.remove_reader
        self.call_later = loop.call_later
        self.limits = server.limits
        self.handler = server.handler
        self.on_error = requests.on_error
        self.observer = server.observer
        # A request's end, for the access log and the metrics' bytes histograms; None while both are off.
        watched = requests.access_log is not None or server.observer is not None
        self.log_access = functools.partial(_ended, requests) if watched else None

    def after_fork(self) -> None:
        """In a forked child that serves one request: drop the parent's loop and listener."""
        server = self.server
        server.loop.close_in_child()
        server.transport.after_fork()
        for listener in server.side_listeners.values():  # the parent answers its probes
            listener.close_in_child()
        server.requests.in_child = True  # failures go to the parent's hook, through the dispatcher

    def worker_server(
        self, dispatcher: Dispatcher, service_actions: Callable[[], object] | None = None,
        accept_batch: int | None = None,
    ) -> Server:
        """In a supervisor's worker process: a server of its own on the inherited listener."""
        server, requests = self.server, self.server.requests
        server.loop.close_in_child()  # the parent's loop, inherited: not ours
        for listener in server.side_listeners.values():  # the parent answers its probes
            listener.close_in_child()
        parts = Parts(transport=InheritedTransport(server.transport, accept_batch), dispatcher=dispatcher,
                      handler=server.handler, transport_name=server.parts.transport_name,
                      hooks=server.parts.hooks.for_worker())
        return type(server)(parts=parts, drain_timeout=server.drain_timeout, limits=server.limits,
                            on_error=requests.on_error, handler_server=requests.handler_server,
                            service_actions=service_actions, plugin_options=server.plugin_options,
                            access_log=requests.access_log, observer=_fresh(server.observer))


def _ended(requests: Requests, request: Request, client_address: Address, outcome: Outcome, seconds: float) -> None:
    """``host.log_access``: the access line and the bytes for the metrics, read from the still open socket."""
    requests.connection_ended(client_address, outcome, seconds, traffic(request))


def _fresh(observer: Observer | None) -> Observer | None:
    """A worker's observer: the built-in one afresh (the parent measured nothing: it serves no request, and a
    copy would count what the parent had); another (a plugin's) is the worker's copy of the parent's."""
    from .observe import TurnMetrics  # metrics are optional: loaded when they are on

    return TurnMetrics() if isinstance(observer, TurnMetrics) else observer
