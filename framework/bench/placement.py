"""Where the server runs: free on every CPU, or pinned to one CPU with the load on the others (Linux).

Pinned, the server's CPU per request is what one core does for it, with no contention from the load
generator; free, the server's threads spread over every CPU and contend for the GIL across cores, so
a convoy (locks and wake-ups per request) shows as more CPU per request than pinned. ``--pin both``
measures the two in one run, and the report gives the free ÷ pinned ratio.

Each process pins itself, first thing, with ``os.sched_setaffinity(0, cpus)``: the server process
before it imports or starts anything, so its threads and children inherit the mask; the client
processes (and the holder of waiting connections, and wrk) to the other CPUs.
"""

from __future__ import annotations

import os
from typing import NamedTuple

MODES = ("free", "pinned", "both")


class Placement(NamedTuple):
    name: str  # "free" or "pinned"
    server: tuple[int, ...] | None  # None: not pinned
    load: tuple[int, ...] | None

    def describe(self) -> str:
        if self.server is None or self.load is None:
            return "server free on every CPU"
        return f"server pinned to CPU {_cpus(self.server)}, load on CPU {_cpus(self.load)}"


FREE = Placement("free", None, None)


def placements(mode: str) -> list[Placement]:
    """The placements ``--pin MODE`` asks for; ValueError (a one-line reason) where pinning is impossible."""
    if mode not in MODES:
        raise ValueError(f"--pin must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "free":
        return [FREE]
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("--pin needs os.sched_setaffinity (Linux)")
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise ValueError(f"--pin needs at least 2 CPUs (one for the server, one for the load); "
                         f"this process may use {len(allowed)}")
    pinned = Placement("pinned", (allowed[0],), tuple(allowed[1:]))
    return [pinned] if mode == "pinned" else [pinned, FREE]


def pin(cpus: tuple[int, ...] | list[int] | None) -> None:
    """Restrict this process (and what it starts from now on) to ``cpus``; None: leave it free."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def _cpus(cpus: tuple[int, ...]) -> str:
    return ",".join(map(str, cpus))
