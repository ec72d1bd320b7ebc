"""Counting work in progress against a limit, with the wake-up the loop needs (public, for dispatchers).

A dispatcher's ``saturated()`` returns ``slots.full()``; giving back the slot that
makes room calls ``host.wake()``, so the loop, which stopped accepting, looks again::

    def start(self, host):  self._slots.wake_with(host.wake)
    def submit(self, request, address):  self._slots.take(); ...
    def saturated(self):  return self._slots.full()
    # and when a request is done:  self._slots.give_back()
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

__all__ = ["Slots"]


class Slots:
    """``limit`` slots of work; giving one back at the limit wakes the accept loop.

    ``full()`` is what a dispatcher's ``saturated()`` returns. The wake-up is
    sent exactly when the count drops from the limit, so the loop, which saw
    ``full()`` and stopped accepting, hears about the free slot.
    """

    __slots__ = ("_lock", "_wake", "limit", "taken")

    def __init__(self, limit: int | None) -> None:
        self.limit: float = math.inf if limit is None else limit
        self.taken = 0
        self._lock = threading.Lock()
        self._wake: Callable[[], None] = lambda: None

    def wake_with(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def take(self) -> None:
        with self._lock:
            self.taken += 1

    def give_back(self) -> None:
        with self._lock:
            self.taken -= 1
            if self.taken == self.limit - 1:
                self._wake()

    def full(self) -> bool:
        return self.taken >= self.limit
