"""Counting work in progress against a limit, with the wake-up the loop needs (public, for dispatchers).

A dispatcher's ``saturated()`` returns ``slots.full()``; giving back the slot that
makes room calls ``host.wake()``, so the loop, which stopped accepting, looks again::

    def start(self, host):  self._slots.wake_with(host.wake)
    def submit(self, request, address):  self._slots.take(); ...
    def saturated(self):  return self._slots.full()
    # and when a request is done:  self._slots.give_back()
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable

__all__ = ["Slots"]


class Slots:
    """``limit`` slots of work; giving one back at the limit wakes the accept loop.

    ``full()`` is what a dispatcher's ``saturated()`` returns. The wake-up is
    sent when a slot comes back after ``full()`` said True, so the loop, which
    stopped accepting, hears about the free slot.

    No lock: ``take()`` and ``full()`` are called from the loop's thread only
    (``submit``, ``saturated``), and are the only ones to change the count;
    ``give_back()`` (any thread) appends to a deque, which the next ``take()``
    or ``full()`` folds into the count. At the limit, ``full()`` raises its
    flag and folds again, so a slot given back after that fold sees the flag
    and wakes the loop: a wake-up is never lost, and none is sent while there
    is room.
    """

    __slots__ = ("_given_back", "_taken", "_wake", "_watching", "limit")

    def __init__(self, limit: int | None) -> None:
        self.limit: float = math.inf if limit is None else limit
        self._taken = 0
        self._given_back: collections.deque[None] = collections.deque()
        self._watching = False  # full() said True: the next give_back() wakes the loop
        self._wake: Callable[[], None] = lambda: None

    @property
    def taken(self) -> int:
        """Slots in use now (read from any thread: never less than the true count)."""
        return self._taken - len(self._given_back)

    def wake_with(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def take(self) -> None:
        """Take a slot (the loop's thread)."""
        self._fold()
        self._taken += 1

    def give_back(self) -> None:
        """Give a slot back (any thread)."""
        self._given_back.append(None)
        if self._watching:
            self._watching = False
            self._wake()

    def full(self) -> bool:
        """Whether every slot is taken (the loop's thread)."""
        self._fold()
        if self._taken < self.limit:
            return False  # (no flag raised: give_back() wakes no one while there is room)
        self._watching = True  # first: a slot given back from here on wakes the loop
        self._fold()  # then: one given back before the flag went up is counted here
        if self._taken < self.limit:
            self._watching = False
            return False
        return True

    def _fold(self) -> None:
        given_back = self._given_back
        while given_back:
            given_back.popleft()
            self._taken -= 1
