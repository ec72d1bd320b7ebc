"""Waiting with one deadline across several steps (public: a dispatcher's ``drain(timeout)`` needs it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

__all__ = ["deadline_after", "join_all", "remaining"]


def deadline_after(timeout: float | None) -> float | None:
    """The monotonic time ``timeout`` seconds from now; None (never) for None."""
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative); None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def join_all(threads: Iterable[threading.Thread], timeout: float | None) -> list[threading.Thread]:
    """Join every thread within one shared ``timeout``; return those still alive."""
    deadline = deadline_after(timeout)
    threads = list(threads)
    for thread in threads:
        thread.join(remaining(deadline))
    return [t for t in threads if t.is_alive()]
