"""The ``pool`` dispatcher: a fixed set of worker threads fed by a bounded queue."""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import TYPE_CHECKING, Any, final

import attrs

from sockwork.deadlines import join_all
from sockwork.hookspecs import hookimpl
from sockwork.interfaces import DispatcherHost
from sockwork.slots import Slots
from sockwork.validators import positive_int

if TYPE_CHECKING:
    from sockwork.registry import DispatcherEntry

__all__ = ["PoolDispatcher", "PoolOptions"]

logger = logging.getLogger("sockwork")


def _default_workers() -> int:
    return min(32, 4 * (os.cpu_count() or 1))


@final
@attrs.frozen(kw_only=True)
class PoolOptions:
    """Options of the ``pool`` dispatcher."""

    workers: int = attrs.field(factory=_default_workers, validator=positive_int)
    """Worker threads, started with the server: the most requests served at
    once. Default: 4 per CPU, at most 32."""
    queue_size: int = attrs.field(default=64, validator=positive_int)
    """Accepted requests that may wait for a free worker. When the queue is
    full the server stops accepting (new clients wait in the kernel's
    backlog) until a worker frees up; nothing is dropped."""


@final
class PoolDispatcher:
    """Hands requests to long-lived worker threads: no thread start per request.

    ``drain`` lets the workers finish everything already queued, then joins them.
    """

    def __init__(self, options: PoolOptions | None = None) -> None:
        self.options = options or PoolOptions()
        self.concurrency = self.options.workers
        self._slots = Slots(self.options.workers + self.options.queue_size)  # queued + running
        self._queue: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._stopping = False

    def start(self, host: DispatcherHost) -> None:
        self._serve = host.serve
        self._slots.wake_with(host.wake)
        for number in range(self.options.workers):
            worker = threading.Thread(target=self._work, name=f"sockwork-pool-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def submit(self, request: Any, client_address: Any) -> None:
        self._slots.take()
        self._queue.put((request, client_address))

    def saturated(self) -> bool:
        return self._slots.full()

    def _work(self) -> None:
        get, serve, give_back = self._queue.get, self._serve, self._slots.give_back
        while (item := get()) is not None:
            try:
                serve(*item)
            except BaseException as exc:  # SystemExit from a handler, say: not the worker's end
                logger.error("pool worker: handler raised %r; the worker carries on", exc)
            finally:
                give_back()

    def drain(self, timeout: float | None) -> bool:
        if not self._stopping:
            self._stopping = True
            for _ in self._workers:
                self._queue.put(None)  # after everything queued: queued work is served
        self._workers = join_all(self._workers, timeout)
        return not self._workers

    def close(self) -> None:
        pass  # threads cannot be stopped from outside; the Server logs any still running


@hookimpl(trylast=True)
def sockwork_add_dispatchers() -> list[DispatcherEntry]:
    from sockwork.registry import DispatcherEntry  # the registry is loaded only when one is built

    return [
        DispatcherEntry(
            "pool", PoolDispatcher, PoolOptions,
            description="a fixed set of worker threads and a bounded queue",
        )
    ]
