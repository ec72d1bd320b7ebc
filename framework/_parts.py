"""Built parts, ready to serve: what assembly hands to a Server.

Kept free of the registry and of pluggy's entry-point scanning, so that the
legacy module can make Parts from the built-in components alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

import attrs

from .interfaces import Dispatcher, HandlerFactory, Transport

__all__ = ["LifecycleHooks", "Parts"]


@final
class LifecycleHooks:
    """The lifecycle hooks of one plugin manager, each None when no plugin implements it.

    ``started(server)``, ``stopped(server)``, ``request_failed(server,
    client_address, exc)`` and ``collect_stats(server, stats)`` call the
    hooks of the same names (see :mod:`sockwork.hookspecs`). Nothing on the
    per-request path calls a hook that no plugin implements: the Server
    checks for None first.
    """

    __slots__ = ("collect_stats", "request_failed", "started", "stopped")

    def __init__(self, plugin_manager: Any = None) -> None:
        hook = plugin_manager.hook if plugin_manager is not None else None

        def implemented(name: str) -> Callable[..., Any] | None:
            caller = getattr(hook, name, None) if hook is not None else None
            return caller if caller is not None and caller.get_hookimpls() else None

        self.started = implemented("sockwork_server_started")
        self.stopped = implemented("sockwork_server_stopped")
        self.request_failed = implemented("sockwork_request_failed")
        self.collect_stats = implemented("sockwork_collect_stats")

    def for_worker(self) -> LifecycleHooks:
        """The hooks a supervisor's worker calls: only ``request_failed`` (failures happen there).

        Started, stopped and the counters are the supervising server's: its
        ``server.stats`` already includes the workers'.
        """
        hooks = LifecycleHooks()
        hooks.request_failed = self.request_failed
        return hooks


NO_HOOKS = LifecycleHooks()


@final
@attrs.frozen(kw_only=True)
class Parts:
    """A transport (not yet open), a dispatcher (not yet started) and a handler, checked together.

    Made by :func:`sockwork.assembly.assemble` (from names, options, objects)
    or :func:`sockwork.assembly.assemble_config`; a Server serves them.
    ``transport_name`` is the URL scheme of ``server.url``; ``hooks`` the
    lifecycle hooks of the plugins that contributed the parts; ``registry``
    the Registry they came from (None for parts built without one).
    """

    transport: Transport
    dispatcher: Dispatcher
    handler: HandlerFactory
    transport_name: str = "transport"
    hooks: LifecycleHooks = NO_HOOKS
    registry: Any = None
