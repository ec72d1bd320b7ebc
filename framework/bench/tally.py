"""Counting every client, only inside the measured window; the set-up phase; the driver's window."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

SETUP_STALL = 3.5  # > the second SYN retry (1 s, then 2 s later): a client still unanswered after it is starved
SETUP_LIMIT = 30.0


# ---- Counting: every client, only inside the window ----------------------------------

class ClientTally:
    """What one client saw inside the measured window ``[start, stop)`` (``time.perf_counter()`` seconds).

    An exchange counts when it *ends* inside the window: a reply then is a completed request (its
    latency is kept, even if the request was sent during the warm-up), a failure then is a failed one.
    An exchange still in flight at ``stop`` counts neither way -- but a client with neither a reply
    nor a failure in the whole window waited for an answer that never came: :func:`tally_clients`
    counts it as an error ("unanswered").
    """

    __slots__ = ("completed", "failed", "latencies", "start", "stop")

    def __init__(self, start: float, stop: float) -> None:
        self.start, self.stop = start, stop
        self.completed = self.failed = 0
        self.latencies: list[float] = []

    def record(self, began: float, ended: float, ok: bool) -> None:
        if not self.start <= ended < self.stop:
            return  # warm-up, or in flight at the end of the window
        if ok:
            self.completed += 1
            self.latencies.append(ended - began)
        else:
            self.failed += 1

    def report(self) -> dict[str, int]:
        return {"completed": self.completed, "failed": self.failed}


def tally_clients(clients: Sequence[dict[str, int]]) -> dict[str, Any]:
    """Requests, errors and fairness of one run, from every client's ``ClientTally.report()``.

    ``errors`` = failed exchanges + ``unanswered`` clients (no reply and no failure in the window).
    ``answered`` counts the clients with at least one reply; ``fewest`` and ``median_per_client``
    are over all clients, the unanswered included.
    """
    completed = sorted(c["completed"] for c in clients)
    failed = sum(c["failed"] for c in clients)
    unanswered = sum(1 for c in clients if c["completed"] == 0 and c["failed"] == 0)
    return {
        "requests": sum(completed), "failed": failed, "unanswered": unanswered, "errors": failed + unanswered,
        "clients": len(completed), "answered": sum(1 for n in completed if n > 0),
        "fewest": completed[0] if completed else None,
        "median_per_client": statistics.median(completed) if completed else None,
    }


def client_report(answered: int, tallies: Sequence[ClientTally]) -> dict[str, Any]:
    """What a client process prints when its window is over."""
    return {"answered_at_setup": answered, "clients": [t.report() for t in tallies],
            "latencies": [x for t in tallies for x in t.latencies]}


# ---- Setting up, and the driver's window ------------------------------------------------

class Setup:
    """Tracks the setting-up phase: which clients have had their first reply."""

    def __init__(self, clients: int) -> None:
        self.waiting = clients
        self.began = self.last = time.perf_counter()

    def answered(self) -> None:
        self.waiting -= 1
        self.last = time.perf_counter()

    def over(self, now: float) -> bool:
        return self.waiting <= 0 or now - self.last > SETUP_STALL or now - self.began > SETUP_LIMIT


def read_window(line: bytes) -> tuple[float, float]:
    """The driver's window, from wall-clock seconds to this process's ``time.perf_counter()``."""
    window = json.loads(line)
    offset = time.time() - time.perf_counter()
    return window["start"] - offset, window["stop"] - offset


def say_ready(out: Any, answered: int) -> None:
    out.write(json.dumps({"answered": answered}) + "\n")
    out.flush()


def read_line(fd: int) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            raise EOFError("the driver closed the control pipe before sending the window")
        line += chunk
    return line


