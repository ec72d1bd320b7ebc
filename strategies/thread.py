"""The ``thread`` dispatcher: a thread per request, reused for the next one while it lingers."""

from __future__ import annotations

import collections
import math
import threading
from typing import TYPE_CHECKING, Any, final

import attrs

from sockwork.deadlines import deadline_after, join_all, remaining
from sockwork.hookspecs import hookimpl
from sockwork.interfaces import DispatcherHost
from sockwork.slots import Slots
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
    """Daemon threads do not keep the interpreter alive at exit."""
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
    """

    def __init__(self, options: ThreadOptions | None = None) -> None:
        self.options = options or ThreadOptions()
        self.concurrency = self.options.max_threads
        self._slots = Slots(self.options.max_threads)
        self._daemon = self.options.daemon
        self._block_on_close = self.options.block_on_close
        self._linger = self.options.idle_linger
        # Idle threads, each parked on a lock of its own: submit() pops one (deque.pop is atomic, so
        # one submit and one thread's own timeout never both take it), hands it the request, releases it.
        self._idle: collections.deque[_Parked] = collections.deque()
        self._stopping = False
        # Every thread started and maybe not yet joined; dead ones are pruned
        # when the list doubles, so appending stays O(1) on average.
        self._threads: list[threading.Thread] = []
        self._prune_at = 64

    def start(self, host: DispatcherHost) -> None:
        self._serve = host.serve
        self._slots.wake_with(host.wake)

    def submit(self, request: Any, client_address: Any) -> None:
        self._slots.take()
        try:
            parked = self._idle.pop()  # the most recently idle thread: its caches are warm
        except IndexError:
            pass
        else:
            parked.item = (request, client_address)
            parked.lock.release()
            return
        thread = threading.Thread(target=self._run, args=(request, client_address), daemon=self._daemon)
        try:
            thread.start()
        except BaseException:
            self._slots.give_back()
            raise
        threads = self._threads
        threads.append(thread)
        if len(threads) >= self._prune_at:
            self._threads = threads = [t for t in threads if t.is_alive()]
            self._prune_at = 2 * len(threads) + 64

    def _run(self, request: Any, client_address: Any) -> None:
        item: tuple[Any, Any] | None = (request, client_address)
        while item is not None:
            try:
                self._serve(*item)
            finally:
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
        return self._slots.full()

    @property
    def threads(self) -> list[threading.Thread]:
        """The threads still alive: running a request, or idle for ``idle_linger``."""
        return [t for t in self._threads if t.is_alive()]

    def drain(self, timeout: float | None) -> bool:
        self._stopping = True
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
        pass  # threads cannot be stopped from outside; the Server logs any still running


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
