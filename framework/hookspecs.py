"""Every hook sockwork calls; the docstrings are the reference for plugin authors.

A plugin is any module or object with functions decorated ``@hookimpl`` and
named like the specs below. The built-in transports, dispatchers and handlers
are plugins of exactly this kind (see ``sockwork.strategies.pool``).

Implementations may take any subset of a spec's arguments, by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ._server import Server
    from .limits import ServerStats
    from .registry import DispatcherEntry, FramingEntry, HandlerEntry, TransportEntry

PROJECT = "sockwork"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# ---- Registration: called once when a Registry is built -------------------


@hookspec
def sockwork_add_transports() -> list[TransportEntry]:  # type: ignore[empty-body]  # a spec: pluggy never runs it
    """Contribute transports: a list of :class:`~sockwork.TransportEntry`.

    The first entry registered under a name wins. Built-ins are ``trylast``,
    so a plugin that registers ``"tcp"`` replaces the built-in one.
    """


@hookspec
def sockwork_add_dispatchers() -> list[DispatcherEntry]:  # type: ignore[empty-body]  # a spec: pluggy never runs it
    """Contribute dispatchers: a list of :class:`~sockwork.DispatcherEntry`."""


@hookspec
def sockwork_add_handlers() -> list[HandlerEntry]:  # type: ignore[empty-body]  # a spec: pluggy never runs it
    """Contribute named handler factories: a list of :class:`~sockwork.HandlerEntry`."""


# ---- Lifecycle: called by a running Server ---------------------------------


@hookspec
def sockwork_add_framings() -> list[FramingEntry]:  # type: ignore[empty-body]  # a spec: pluggy never runs it
    """Contribute framings (how a byte stream is cut into messages) by name: ``[FramingEntry(...)]``.

    ``factory(options)`` returns a :class:`sockwork.messages.Framing`. A config selects one for a
    message handler with ``framing = "NAME"`` (or ``--framing NAME``). Built-ins (``lines``,
    ``length``) run last, so a plugin can take over a name.
    """


@hookspec
def sockwork_server_started(server: Server) -> None:
    """The server is bound and about to accept its first request."""


@hookspec
def sockwork_request_failed(server: Server, client_address: Any, exc: BaseException) -> None:
    """A handler raised ``exc`` while serving ``client_address``.

    Called in the server's own process, also for a request served in a child
    process (``fork``), where ``exc`` describes the child's failure. Not
    called for a client that went away mid-request (counted as
    ``disconnected``). Only called if some plugin implements it. An exception
    raised here is logged and otherwise ignored.
    """


@hookspec
def sockwork_collect_stats(server: Server, stats: ServerStats) -> None:
    """Every ``limits.stats_interval`` seconds (10 by default): the counters.

    ``stats`` is a :class:`~sockwork.ServerStats` snapshot. Called from the
    serving thread, and only if some plugin implements it: export quickly.
    ``server.stats`` gives a fresh snapshot at any time, from any thread.
    """


@hookspec
def sockwork_server_stopped(server: Server) -> None:
    """The server has drained its dispatcher and closed its transport."""
