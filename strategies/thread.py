"""The ``thread`` dispatcher: a new thread per request."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, final

import attrs

from sockwork.deadlines import join_all
from sockwork.hookspecs import hookimpl
from sockwork.interfaces import DispatcherHost
from sockwork.slots import Slots
from sockwork.validators import boolean, off_is_none, optional_positive_int

if TYPE_CHECKING:
    from sockwork.registry import DispatcherEntry

__all__ = ["ThreadDispatcher", "ThreadOptions"]


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


@final
class ThreadDispatcher:
    """Starts a thread for every request (what ``ThreadingMixIn`` did).

    Good for handlers that block for long (slow clients, long-lived
    connections); each running request costs a thread and its stack.
    ``drain`` joins every thread it started.
    """

    def __init__(self, options: ThreadOptions | None = None) -> None:
        self.options = options or ThreadOptions()
        self.concurrency = self.options.max_threads
        self._slots = Slots(self.options.max_threads)
        self._daemon = self.options.daemon
        self._block_on_close = self.options.block_on_close
        # Every thread started and maybe not yet joined; dead ones are pruned
        # when the list doubles, so appending stays O(1) on average.
        self._threads: list[threading.Thread] = []
        self._prune_at = 64

    def start(self, host: DispatcherHost) -> None:
        self._serve = host.serve
        self._slots.wake_with(host.wake)

    def submit(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._run, args=(request, client_address), daemon=self._daemon)
        self._slots.take()
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
        try:
            self._serve(request, client_address)
        finally:
            self._slots.give_back()

    def saturated(self) -> bool:
        return self._slots.full()

    @property
    def threads(self) -> list[threading.Thread]:
        """The threads still running requests."""
        return [t for t in self._threads if t.is_alive()]

    def drain(self, timeout: float | None) -> bool:
        if not self._block_on_close:
            return True  # by request: running threads finish on their own
        self._threads = join_all(self._threads, timeout)
        return not self._threads

    def close(self) -> None:
        pass  # threads cannot be stopped from outside; the Server logs any still running


@hookimpl(trylast=True)
def sockwork_add_dispatchers() -> list[DispatcherEntry]:
    from sockwork.registry import DispatcherEntry  # the registry is loaded only when one is built

    return [
        DispatcherEntry(
            "thread", ThreadDispatcher, ThreadOptions,
            description="a new thread per request, up to max_threads at once",
        )
    ]
