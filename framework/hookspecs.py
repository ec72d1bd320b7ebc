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
    from .registry import DispatcherEntry, HandlerEntry, TransportEntry

PROJECT = "sockwork"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# ---- Registration: called once when a Registry is built -------------------


@hookspec
def sockwork_add_transports() -> list[TransportEntry]:
    """Contribute transports: a list of :class:`~sockwork.TransportEntry`.

    The first entry registered under a name wins. Built-ins are ``trylast``,
    so a plugin that registers ``"tcp"`` replaces the built-in one.
    """


@hookspec
def sockwork_add_dispatchers() -> list[DispatcherEntry]:
    """Contribute dispatchers: a list of :class:`~sockwork.DispatcherEntry`."""


@hookspec
def sockwork_add_handlers() -> list[HandlerEntry]:
    """Contribute named handler factories: a list of :class:`~sockwork.HandlerEntry`."""


# ---- Lifecycle: called by a running Server ---------------------------------


@hookspec
def sockwork_server_started(server: Any) -> None:
    """The server is bound and about to accept its first request."""


@hookspec
def sockwork_request_failed(server: Any, client_address: Any, exc: BaseException) -> None:
    """A handler raised ``exc`` while serving ``client_address``.

    Called in the process that ran the handler: with the ``fork`` dispatcher
    that is the child. Only called if some plugin implements it. An exception
    raised here is logged and otherwise ignored.
    """


@hookspec
def sockwork_collect_stats(server: Any, stats: Any) -> None:
    """Every ``limits.stats_interval`` seconds (10 by default): the counters.

    ``stats`` is a :class:`~sockwork.ServerStats` snapshot. Called from the
    serving thread, and only if some plugin implements it: export quickly.
    ``server.stats`` gives a fresh snapshot at any time, from any thread.
    """


@hookspec
def sockwork_server_stopped(server: Any) -> None:
    """The server has drained its dispatcher and closed its transport."""
