"""Operations on a running server: reload (SIGHUP) and resize (SIGTTIN/SIGTTOU), and their signals.

    SIGHUP  ──► re-read the config ──► check it (assembly; the handler's modules imported afresh)
                 ├── refused: one ERROR line; the old config keeps serving
                 └── applied: prefork starts new workers with it, then drains the old ones;
                     elsewhere what can change in place does, the rest is named as needing a restart
    SIGTTIN/SIGTTOU ──► a supervisor (prefork): one worker more / fewer (the one removed drains first)
    SIGUSR2 ──► an upgrade in place (sockwork._upgrade)

Rule 1: an action runs in the server's loop (a timer the signal handler sets), never inside the
signal handler, and logs exactly one line: what was asked, and what came of it.
Rule 2: nothing is applied from a config that does not check: all or nothing.
Rule 3: the listening socket is never closed or re-bound by a reload or a resize: no client is refused.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING

import attrs

from .errors import ConfigError
from .interfaces import capability

if TYPE_CHECKING:
    from ._parts import Parts
    from ._server import Server
    from .config import ServerConfig

__all__ = ["fresh_handler_modules", "handle_operations", "reload_server", "reload_transport"]

logger = logging.getLogger("sockwork")

_WITH_NEW_WORKERS = frozenset({"handler", "framing", "dispatcher", "limits", "access_log", "plugins"})
"""Settings a reload applies by starting new workers (a supervisor); elsewhere they need a restart."""

_NEEDS_RESTART = frozenset({"transport", "pid_file", "agent_check", "health", "metrics", "log_format"})
"""Settings bound to sockets or files the running server holds, or set up once at start (log_format): a restart or
an upgrade applies them."""


@contextlib.contextmanager
def handle_operations(
    server: Server, reload: Callable[[], str] | None = None, upgrade: Callable[[], str] | None = None,
) -> Iterator[None]:
    """Within the block: SIGHUP calls ``reload()`` (without one: :func:`reload_transport`), SIGTTIN and
    SIGTTOU resize a supervisor by one worker, SIGUSR2 calls ``upgrade()`` (without one: not handled).
    Main thread only; previous handlers restored after.

    Each action runs in the server's loop and logs one line, ``SIGHUP: <result>``; a ``reload()`` that
    raises :class:`~sockwork.ConfigError` is refused (ERROR, the old config keeps serving).
    """
    actions: dict[int, Callable[[], str]] = {
        signal.SIGHUP: reload if reload is not None else lambda: reload_transport(server),
        signal.SIGTTIN: lambda: resize(server, +1),
        signal.SIGTTOU: lambda: resize(server, -1),
    }
    if upgrade is not None:
        actions[signal.SIGUSR2] = upgrade

    def run(signum: int) -> None:
        name = signal.Signals(signum).name
        if server.lifecycle.phase != "serving":
            logger.info("%s: ignored, the server is stopping", name)
            return
        try:
            result = actions[signum]()
        except ConfigError as exc:
            logger.error("%s: refused, still serving the config loaded before: %s", name,
                         " ".join(str(exc).split()))
            return
        except Exception:
            logger.exception("%s failed", name)
            return
        logger.info("%s: %s", name, result)

    def on_signal(signum: int, frame: object) -> None:
        server.loop.call_later(0, lambda: run(signum))  # the loop runs it, not this handler
        server.loop.wake()

    previous = {signum: signal.signal(signum, on_signal) for signum in actions}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def resize(server: Server, delta: int) -> str:
    """A supervisor's ``resize(delta)``; a dispatcher without one cannot change its size while it serves."""
    method = capability(server.dispatcher, "resize")
    if method is None:
        return (f"not resized: the {type(server.dispatcher).__name__} cannot change its number of workers while "
                "it serves (prefork can); change the config and restart")
    return str(method(delta))


def reload_transport(server: Server) -> str:
    """The transport's ``reload()`` (tls: certificate and key), in words; a failure keeps what was loaded."""
    method = capability(server.transport, "reload")
    name = capability(server.transport, "name") or type(server.transport).__name__
    if method is None:
        return f"the {name} transport has nothing to reload"
    try:
        method()
    except Exception as exc:  # a renewed file that does not load must not stop the server
        return f"reloading the {name} transport failed; still using what was loaded before: {exc}"
    return f"the {name} transport reloaded its files"


@contextlib.contextmanager
def fresh_handler_modules(ref: object) -> Iterator[None]:
    """Within the block, a ``"package.module:attribute"`` handler's modules (its top-level package and all
    under it) are imported afresh. If the block raises, the modules loaded before are put back, so that a
    refused reload leaves the process as it was."""
    top = ref.partition(":")[0].split(".")[0] if isinstance(ref, str) and ":" in ref else None
    if top is None or top == "sockwork":
        yield
        return

    def ours() -> list[str]:
        return [name for name in sys.modules if name == top or name.startswith(top + ".")]

    before: dict[str, ModuleType] = {name: sys.modules.pop(name) for name in ours()}
    importlib.invalidate_caches()  # a module file added since is found
    try:
        yield
    except BaseException:
        for name in ours():
            del sys.modules[name]
        sys.modules.update(before)
        raise


def reload_server(server: Server, old: ServerConfig, new: ServerConfig, parts: Parts) -> str:
    """Apply ``new`` (checked; ``parts`` assembled from it, not started) to ``server``; what happened, in words.

    A supervisor (``replace_workers``) gets new workers with the new handler, dispatcher options and
    limits; in any server the transport reloads its files and ``drain_timeout``, ``lame_duck`` and
    ``log_level`` change in place; what else changed is named as needing a restart or an upgrade.
    """
    changed = [field.name for field in attrs.fields(type(new)) if getattr(new, field.name) != getattr(old, field.name)]
    done = [reload_transport(server)]
    replace = capability(server.dispatcher, "replace_workers")
    supervised = replace is not None and type(parts.dispatcher) is type(server.dispatcher)
    if supervised:
        # What a new worker's server is built from (the supervisor serves nothing itself).
        server.handler = parts.handler
        server.limits = new.limits
        server.plugin_options = dict(new.plugins)
        server.requests.access_log = new.access_log
        done.append(replace(parts.dispatcher))
    else:
        parts.dispatcher.close()  # built, never started: close() is still its to run
    server.drain_timeout = server.lifecycle.drain_timeout = new.drain_timeout
    server.lifecycle.lame_duck = new.lame_duck
    logging.getLogger("sockwork").setLevel(new.log_level)
    later = [name for name in changed if name in _NEEDS_RESTART or (name in _WITH_NEW_WORKERS and not supervised)]
    applied = [name for name in changed if name not in later]
    summary = f"changed and applied: {', '.join(applied)}" if applied else "no setting changed"
    if later:
        summary += f"; changed, and applied only by a restart or an upgrade (SIGUSR2): {', '.join(later)}"
    if not supervised and isinstance(new.handler.ref, str) and ":" in new.handler.ref:
        done.append("the handler's code is the one loaded at start (new code takes a restart or an upgrade)")
    return "; ".join([summary, *done])
