"""What a server tells balancers and orchestrators about itself: HAProxy's agent check and HTTP probes.

Both are side listeners (:mod:`sockwork._side_listener`), answered in the
server's loop, never by a handler's worker. What they say follows the
lifecycle's ``phase``:

=========== ======================== ====================== ================
phase        agent check (a line)     ``GET /readyz``        ``GET /healthz``
=========== ======================== ====================== ================
serving      ``up`` or ``up NN%``     200 ``ready``          200 ``alive``
lame duck    ``drain``                503 ``lame duck``      200 ``alive``
draining     ``maint``                503 ``draining``       200 ``alive``
=========== ======================== ====================== ================

``up NN%`` is given where the dispatcher states its concurrency: NN is the
share of it not busy (at least 1), so HAProxy sends fewer new connections to
a busier server; without a stated concurrency (``prefork``, ``thread``
without a bound) the answer is plain ``up``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._side_listener import SideListener, http_answer
from .validators import check_lame_duck, check_listener_url

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["ListenerAddress", "agent_answer", "close_all", "health_listeners", "open_all"]

ListenerAddress = str | tuple[str, int] | int | None
"""A side listener's address: ``"tcp://HOST:PORT"``, ``(HOST, PORT)``, the descriptor of a bound listening
socket (an upgrade in place hands them over), or None for none."""


def agent_answer(server: Server) -> bytes:
    """One line of HAProxy's agent-check protocol for ``server`` now."""
    phase = server.lifecycle.phase
    if phase == "lame duck":
        return b"drain\n"
    if phase != "serving":
        return b"maint\n"
    concurrency = server.dispatcher.concurrency
    if not concurrency:
        return b"up\n"
    waiting = server.loop.waiting.waiting if server.loop.waiting is not None else 0
    busy = max(0, server.requests.counters.active - waiting)  # read without the lock: a gauge, not an account
    return b"up %d%%\n" % max(1, 100 - (100 * busy) // concurrency)


def _ready(server: Server) -> tuple[int, str, bytes]:
    phase = server.lifecycle.phase
    if phase == "serving":
        return 200, "text/plain", b"ready\n"
    return 503, "text/plain", phase.encode() + b"\n"


def health_listeners(
    server: Server, lame_duck: float, agent_check: ListenerAddress, health: ListenerAddress,
) -> dict[str, SideListener]:
    """The operations settings checked, and the asked-for listeners (``{"agent check": ..., "health": ...}``)
    built, not yet bound."""
    check_lame_duck(lame_duck)
    agent_check = check_listener_url(agent_check, "agent_check")
    health = check_listener_url(health, "health")
    listeners: dict[str, SideListener] = {}
    if agent_check is not None:
        listeners["agent check"] = SideListener("agent check", agent_check, lambda request: agent_answer(server),
                                                reads_request=False)
    if health is not None:
        routes = {
            "/healthz": lambda: (200, "text/plain", b"alive\n"),
            "/readyz": lambda: _ready(server),
        }
        listeners["health"] = SideListener("health", health, http_answer(routes), reads_request=True)
    return listeners


def open_all(listeners: dict[str, SideListener]) -> None:
    for listener in listeners.values():
        listener.open()


def close_all(listeners: dict[str, SideListener]) -> None:
    for listener in listeners.values():
        listener.close()
