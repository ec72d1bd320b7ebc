"""The ``thread`` dispatcher: a thread per request, reused for the next one while it lingers."""

from __future__ import annotations

import collections
import functools
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

import attrs

from sockwork.deadlines import deadline_after, join_all, remaining
from sockwork.hookspecs import hookimpl
from sockwork.interfaces import DispatcherHost
from sockwork.slots import Slots
from sockwork.turns import TurnWorkers
from sockwork.validators import boolean, off_is_none, optional_positive_int

if TYPE_CHECKING:
    from sockwork.registry import DispatcherEntry

__all__ = ["ThreadDispatcher", "ThreadOptions"]


IDLE_RECHECK = 0.05
"""While draining, how often idle threads are told again to end (one may go idle just then)."""


def _seconds_or_zero(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"'{attribute.name}' must be a number of seconds >= 0, got {value!r}")


@final
@attrs.frozen(kw_only=True)
class ThreadOptions:
    """Options of the ``thread`` dispatcher."""

    max_threads: int | None = attrs.field(default=256, converter=off_is_none, validator=optional_positive_int)
    """Most requests served at once; at the limit the server stops accepting
    until a thread finishes. None (in files: false) means no limit, as in socketserver."""
    daemon: bool = attrs.field(default=False, validator=boolean)
    """Daemon threads do not keep the interpreter alive at exit. (Where connections
    wait in the loop, the threads that wait on its poller are always daemon threads,
    as ``pool``'s workers are: one of them waits there for as long as the server runs.)"""
    block_on_close: bool = attrs.field(default=True, validator=boolean)
    """Whether closing the server waits for running threads (up to the drain
    timeout). False: close returns at once and running requests finish on
    their own (socketserver's ``block_on_close = False``)."""
    idle_linger: float = attrs.field(default=2.0, validator=_seconds_or_zero)
    """Seconds a thread that finished a request waits for another before it
    ends: keep-alive clients come back every few milliseconds, and starting a
    thread per request costs more than serving it. 0: a new thread for every
    request, as socketserver did."""


@final
class ThreadDispatcher:
    """Runs every request in a thread of its own (what ``ThreadingMixIn`` did).

    Good for handlers that block for long (slow clients, long-lived
    connections); each running request costs a thread and its stack. A thread
    that finished lingers ``idle_linger`` seconds for the next request (the
    way ``concurrent.futures`` reuses idle workers), so keep-alive turns do
    not start a thread each. ``drain`` ends the idle ones and joins every
    thread it started.

    Where connections wait in the server's loop (``host.turns``), threads are
    leaders/followers instead (``sockwork.turns``): a thread that finished
    waits on the turn poller itself for ``idle_linger`` seconds and serves the
    next turn it gets, with no hand-off from the loop; one thread always waits
    there, and a thread that takes a turn while none other waits starts one
    (up to ``max_threads``), so a blocking handler never holds up the rest.
    """

    takes_turns = True

    def __init__(self, options: ThreadOptions | None = None) -> None:
        self.options = options or ThreadOptions()
        self.concurrency = self.options.max_threads
        # Counted only against a limit: with none (the legacy ThreadingMixIn) a request costs no count.
        self._slots = Slots(self.options.max_threads) if self.options.max_threads is not None else None
        self._daemon = self.options.daemon
        self._block_on_close = self.options.block_on_close
        self._thread_limit: float = math.inf if self.options.max_threads is None else self.options.max_threads
        self._linger = self.options.idle_linger
        # Leader/followers (host.turns) only for threads that linger: with idle_linger = 0 every
        # request gets a thread of its own, as socketserver did (the legacy module's default).
        self.takes_turns = self._linger > 0
        # Idle threads, each parked on a lock of its own: submit() pops one (deque.pop is atomic, so
        # one submit and one thread's own timeout never both take it), hands it the request, releases it.
        self._idle: collections.deque[_Parked] = collections.deque()
        self._stopping = False
        # Every thread started and maybe not yet joined; dead ones are pruned
        # when the list doubles, so appending stays O(1) on average.
        self._threads: list[threading.Thread] = []
        self._prune_at = 64
        self._turn_workers: TurnWorkers | None = None
        self._alive = 0  # leader/followers threads alive (changed under _starting)
        self._starting = threading.Lock()  # taken to start or end a thread, never per request

    def start(self, host: DispatcherHost) -> None:
        self._serve = host.serve
        if self._slots is not None:
            self._slots.wake_with(host.wake)
        if host.turns is not None and self.takes_turns:
            self._turn_workers = TurnWorkers(host.turns, host.take_turn)
            self._another_waits()

    def submit(self, request: Any, client_address: Any) -> None:
        if self._slots is not None:
            self._slots.take()
        if self._turn_workers is not None and not self._stopping:
            self._turn_workers.post((request, client_address))
            self._another_waits()
            return
        if self._idle:  # none idle (always so with idle_linger 0, the legacy module's): raise nothing per request
            try:
                parked = self._idle.pop()  # the most recently idle thread: its caches are warm
            except IndexError:
                pass  # its own timeout took it back just now
            else:
                parked.item = (request, client_address)
                parked.lock.release()
                return
        try:
            self._start_thread(functools.partial(self._run, request, client_address))
        except BaseException:
            if self._slots is not None:
                self._slots.give_back()
            raise

    def _start_thread(self, target: Callable[[], object], *, daemon: bool | None = None) -> None:
        thread = threading.Thread(target=target, daemon=self._daemon if daemon is None else daemon)
        thread.start()
        threads = self._threads
        threads.append(thread)
        if len(threads) >= self._prune_at:
            self._threads = threads = [t for t in threads if t.is_alive()]
            self._prune_at = 2 * len(threads) + 64

    # ---- Leader/followers (connections wait in the loop) ----------------------------------

    def _another_waits(self) -> None:
        """Make sure a thread waits on the turn poller (called after a thread took an event, and on submit)."""
        workers = self._turn_workers
        if workers is None or workers.polling or workers.stopping or self._alive >= self._thread_limit:
            return
        with self._starting:
            if workers.polling or workers.stopping or self._alive >= self._thread_limit:
                return
            self._alive += 1
            try:
                self._start_thread(self._lead, daemon=True)  # one always waits: it must not hold the exit
            except BaseException:
                self._alive -= 1
                raise

    def _lead(self) -> None:
        try:
            self._turn_workers.run(self._serve_posted, idle=self._linger, on_taken=self._another_waits)  # type: ignore[union-attr]  # set before any _lead
        finally:
            with self._starting:
                self._alive -= 1

    def _serve_posted(self, item: tuple[Any, Any]) -> None:
        try:
            self._serve(*item)
        finally:
            if self._slots is not None:
                self._slots.give_back()

    def _run(self, request: Any, client_address: Any) -> None:
        item: tuple[Any, Any] | None = (request, client_address)
        while item is not None:
            try:
                self._serve(*item)
            finally:
                if self._slots is not None:
                    self._slots.give_back()
            item = self._next()

    def _next(self) -> tuple[Any, Any] | None:
        """The next request for this thread, or None when it should end."""
        if self._linger <= 0 or self._stopping:
            return None
        parked = _Parked()
        self._idle.append(parked)
        if not parked.lock.acquire(timeout=self._linger):
            try:
                self._idle.remove(parked)
                return None  # nobody took it: this thread ends
            except ValueError:
                parked.lock.acquire()  # a submit took it just now: its request is on its way
        item, parked.item = parked.item, None
        return item

    def saturated(self) -> bool:
        return self._slots is not None and self._slots.full()


    @property
    def threads(self) -> list[threading.Thread]:
        """The threads still alive: running a request, or idle for ``idle_linger``."""
        return [t for t in self._threads if t.is_alive()]

    def drain(self, timeout: float | None) -> bool:
        self._stopping = True
        if self._turn_workers is not None:
            self._turn_workers.stop()
        self._end_idle()
        if not self._block_on_close:
            return True  # by request: running threads finish on their own
        deadline = deadline_after(timeout)
        while True:
            left = remaining(deadline)
            self._threads = join_all(self._threads, IDLE_RECHECK if left is None else min(left, IDLE_RECHECK))
            if not self._threads or (left is not None and left <= IDLE_RECHECK):
                return not self._threads
            self._end_idle()  # one that went idle just as the drain began

    def _end_idle(self) -> None:
        while True:
            try:
                parked = self._idle.pop()
            except IndexError:
                return
            parked.lock.release()  # with no item: an idle thread ends now instead of lingering

    def close(self) -> None:
        pass  # threads cannot be stopped from outside; the last to stop closes the turn workers' descriptors


@final
class _Parked:
    """An idle thread's place: it waits on ``lock`` (taken) until a submit sets ``item`` and releases it."""

    __slots__ = ("item", "lock")

    def __init__(self) -> None:
        self.item: tuple[Any, Any] | None = None
        self.lock = threading.Lock()
        self.lock.acquire()


@hookimpl(trylast=True)
def sockwork_add_dispatchers() -> list[DispatcherEntry]:
    from sockwork.registry import DispatcherEntry  # the registry is loaded only when one is built

    return [
        DispatcherEntry(
            "thread", ThreadDispatcher, ThreadOptions,
            description="a new thread per request, up to max_threads at once",
        )
    ]
