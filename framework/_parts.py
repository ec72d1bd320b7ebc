"""Built parts, ready to serve: what assembly hands to a Server.

Kept free of the registry and of pluggy's entry-point scanning, so that the
legacy module can make Parts from the built-in components alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, final

import attrs

from .interfaces import Address, Dispatcher, HandlerFactory, Transport, capability

__all__ = ["InheritedTransport", "LifecycleHooks", "Parts"]

logger = logging.getLogger("sockwork")


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

    def stats_reporter(self, server: Any, interval: float) -> Callable[[], float] | None:
        """What the loop runs after each round to call ``collect_stats(server, stats)`` every
        ``interval`` seconds (returning the time until the next call), or None without the hook."""
        hook = self.collect_stats
        if hook is None:
            return None
        due = 0.0

        def report() -> float:
            nonlocal due
            now = time.monotonic()
            if now >= due:
                due = now + interval
                try:
                    hook(server=server, stats=server.stats)
                except Exception:
                    logger.exception("sockwork_collect_stats hook raised")
            return max(0.0, due - now)

        return report

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


@final
class InheritedTransport:
    """A transport opened by the parent process, served by a forked worker's server.

    Every member a Server uses is the parent's transport's, passed on
    (optional ones too, ``accept_batch`` replaceable); ``open()`` does nothing
    (the worker inherited the open listener) and ``close()`` drops only this
    process's copy (``after_fork()``): the parent still serves, and owns a
    Unix socket file, which must stay.
    """

    def __init__(self, transport: Transport, accept_batch: int | None = None) -> None:
        self.inherited = transport
        self.kind = transport.kind
        self.family = transport.family
        self.name = capability(transport, "name")
        self.accept_batch: int = accept_batch or capability(transport, "accept_batch")
        self.stages = capability(transport, "stages")
        self.reload = capability(transport, "reload")
        # The listener stays open in the parent and the other workers: a worker closing its
        # copy resets nothing, and must not stop the kernel from completing their connections.
        self.stop_new_connections = None
        self.handshakes_pending = None
        self.adopt = None  # opened by the parent already
        self.fileno = transport.fileno
        self.accept = transport.accept
        self.close_request = transport.close_request
        self.release_request = transport.release_request
        self.after_fork = transport.after_fork

    @property
    def address(self) -> Address:
        return self.inherited.address

    @property
    def oversized(self) -> int:
        return int(capability(self.inherited, "oversized"))

    def open(self) -> None:
        pass  # opened by the parent; this process inherited it

    def close(self) -> None:
        self.inherited.after_fork()
