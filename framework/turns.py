"""Leader/followers for dispatchers that serve turns themselves (public, for dispatchers).

A dispatcher that declares ``takes_turns = True`` gets ``host.turns``: the
poller where the server's connections wait between keep-alive turns (None
when none wait in the loop: datagrams, classic handlers only). Its threads
then wait on that poller themselves and serve the turn of the connection
they got, in their own thread: no hand-off from the loop, no lock, no
wake-up per request. :class:`TurnWorkers` is that waiting, shared by
``pool`` (a fixed set of threads) and ``thread`` (threads started as
needed)::

    def start(self, host):
        self._workers = TurnWorkers(host.turns, host.take_turn)
        for _ in range(n): threading.Thread(target=self._workers.run, args=(self._serve_one,)).start()
    def submit(self, request, address):  self._workers.post((request, address))  # work the loop hands over
    def drain(self, timeout):  self._workers.stop(); ...join the threads...

Rule 1: every event the poller gives a thread is one thing to do: a turn
(``take_turn(fd)``), one posted item, or the stop.
Rule 2: posted items are served in order, and all of them before the
threads stop, so nothing handed over is lost.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from typing import Any, final

from .interfaces import TurnSource

__all__ = ["TurnWorkers"]


@final
class TurnWorkers:
    """The waiting side of leader/followers: threads that ``run`` serve turns, posted work, then stop.

    ``post(item)`` hands one item to one waiting thread (an ``eventfd`` the
    poller watches, in semaphore mode, wakes exactly one); ``stop()`` makes
    every thread serve what is still posted and return; ``polling`` is the
    number of threads waiting on the poller now (a dispatcher that starts
    threads as needed reads it). The last thread to return after ``stop()``
    closes the wake-up descriptors (or ``stop()`` itself, if none runs).
    """

    def __init__(self, turns: TurnSource, take_turn: Callable[[int], None]) -> None:
        self._turns = turns
        self._take_turn = take_turn
        self._posted: collections.deque[Any] = collections.deque()
        self._signal = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            turns.watch(self._signal)
            turns.watch(self._stop)  # level-triggered, never read: once stopped, every poll says so
        except BaseException:
            self.close()
            raise
        self._waiting: set[int] = set()  # idents of the threads in poll() now (set.add/discard: atomic)
        self._running = 0  # threads in run(): changed under _lock, twice per thread, never per request
        self._lock = threading.Lock()
        self.stopping = False

    @property
    def polling(self) -> int:
        return len(self._waiting)

    def post(self, item: Any) -> None:
        """Hand ``item`` to one waiting thread (any thread; items are served in order).

        Raises RuntimeError once ``stop()`` was called: the threads may be gone.
        """
        if self.stopping:
            raise RuntimeError("the dispatcher's threads are stopping: they take no more work")
        self._posted.append(item)
        os.eventfd_write(self._signal, 1)

    def stop(self) -> None:
        """Every thread serves what is posted, then returns from ``run`` (again: nothing more)."""
        with self._lock:
            if self.stopping:
                return
            self.stopping = True
            if not self._running:
                self.close()
                return
        os.eventfd_write(self._stop, 1)

    def run(self, serve: Callable[[Any], object], *, idle: float = -1.0,
            on_taken: Callable[[], object] | None = None) -> None:
        """Serve turns (``take_turn``) and posted items (``serve(item)``) until ``stop()``.

        ``idle``: return after waiting that many seconds for nothing, unless no
        other thread is waiting (the last one stays, so turns never go
        unwatched); -1 waits for ever. ``on_taken``: called after each event,
        before serving it (a dispatcher that starts threads as needed makes
        sure another one waits meanwhile).
        """
        with self._lock:
            if self.stopping:
                return
            self._running += 1
        try:
            self._serve_until_stopped(serve, idle, on_taken)
        finally:
            if self._leave():
                self.close()

    def _leave(self) -> bool:
        """A thread leaves run(); True if it is the last one after stop()."""
        with self._lock:
            self._running -= 1
            return self.stopping and not self._running

    def _serve_until_stopped(self, serve: Callable[[Any], object], idle: float,
                             on_taken: Callable[[], object] | None) -> None:
        poll, take_turn, signal, stop = self._turns.poll, self._take_turn, self._signal, self._stop
        waiting, me = self._waiting, threading.get_ident()
        while True:
            waiting.add(me)
            try:
                events = poll(idle, 1)
            except (OSError, ValueError):  # the server closed its poller: it is gone, and so is this thread
                return
            finally:
                waiting.discard(me)
            if not events:
                if waiting:
                    return  # idle for `idle` seconds, and another thread waits
                continue
            if on_taken is not None:
                on_taken()
            fd = events[0][0]
            if fd == signal:
                try:
                    os.eventfd_read(signal)  # one unit: one posted item is this thread's
                except BlockingIOError:
                    continue  # another thread took it
                try:
                    item = self._posted.popleft()
                except IndexError:
                    continue  # served already by a thread that stopped
                serve(item)
            elif fd == stop:
                self._serve_posted(serve)
                return
            else:
                take_turn(fd)

    def _serve_posted(self, serve: Callable[[Any], object]) -> None:
        while True:
            try:
                item = self._posted.popleft()
            except IndexError:
                return
            serve(item)

    def close(self) -> None:
        """Stop watching and close the wake-up descriptors (once every thread returned; again: nothing)."""
        for fd in (self._signal, self._stop):
            if fd >= 0:
                self._turns.remove(fd)
                os.close(fd)
        self._signal = self._stop = -1
