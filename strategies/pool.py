"""The ``pool`` dispatcher: a fixed set of worker threads fed by a bounded queue."""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

import attrs

from sockwork.deadlines import join_all
from sockwork.hookspecs import hookimpl
from sockwork.interfaces import DispatcherHost
from sockwork.slots import Slots
from sockwork.turns import TurnWorkers
from sockwork.validators import positive_int

if TYPE_CHECKING:
    from sockwork.registry import DispatcherEntry

__all__ = ["PoolDispatcher", "PoolOptions"]

logger = logging.getLogger("sockwork")


def _default_workers() -> int:
    # Measured (docs/performance.md, issue 18): on 2 CPUs, 4 leader/follower workers cost the least per
    # keep-alive request, pinned and free (8 cost 6-33 % more, 16 up to 57 %); more only help handlers
    # that wait (a database, a file): raise `workers` for those.
    return max(4, min(32, 2 * (os.cpu_count() or 1)))


@final
@attrs.frozen(kw_only=True)
class PoolOptions:
    """Options of the ``pool`` dispatcher."""

    workers: int = attrs.field(factory=_default_workers, validator=positive_int)
    """Worker threads, started with the server: the most requests served at
    once. Default: 2 per CPU, at least 4, at most 32 (measured; raise it for
    handlers that wait on I/O: each waiting handler holds its worker)."""
    queue_size: int = attrs.field(default=64, validator=positive_int)
    """Requests the loop hands over (classic handlers, at accept) that may wait
    for a free worker. When they are all taken the server stops accepting (new
    clients wait in the kernel's backlog) until a worker frees up; nothing is
    dropped. Connections that wait for their client are bounded by
    ``limits.max_waiting`` instead (docs/production.md, section 4)."""


@final
class PoolDispatcher:
    """Hands requests to long-lived worker threads: no thread start per request.

    Where connections wait in the server's loop (``host.turns``), the workers
    are leaders/followers: each waits on that poller itself, serves the turn
    of the connection it got and re-arms it, so a keep-alive request costs no
    hand-off from the loop and no lock (docs/design.md, "The turn path").
    Work ``submit``ted by the loop (a connection whose handler speaks first,
    one with bytes already read) is posted to them (``sockwork.turns``).
    Without a turn poller (datagrams, classic handlers only) the workers take
    submitted work from a queue.

    ``drain`` lets the workers finish everything already submitted, then joins them.
    """

    takes_turns = True

    def __init__(self, options: PoolOptions | None = None) -> None:
        self.options = options or PoolOptions()
        self.concurrency = self.options.workers
        self._slots = Slots(self.options.workers + self.options.queue_size)  # submitted and not finished
        self._queue: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._turn_workers: TurnWorkers | None = None
        self._workers: list[threading.Thread] = []
        self._stopping = False

    def start(self, host: DispatcherHost) -> None:
        self._serve = host.serve
        self._slots.wake_with(host.wake)
        target: Callable[[], object] = self._work
        if host.turns is not None:
            self._turn_workers = TurnWorkers(host.turns, host.take_turn)
            target = functools.partial(self._turn_workers.run, self._serve_submitted)
        for number in range(self.options.workers):
            worker = threading.Thread(target=target, name=f"sockwork-pool-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def submit(self, request: Any, client_address: Any) -> None:
        self._slots.take()
        if self._turn_workers is not None:
            self._turn_workers.post((request, client_address))
        else:
            self._queue.put((request, client_address))

    def saturated(self) -> bool:
        return self._slots.full()

    def _work(self) -> None:
        get = self._queue.get
        while (item := get()) is not None:
            self._serve_submitted(item)

    def _serve_submitted(self, item: tuple[Any, Any]) -> None:
        try:
            self._serve(*item)
        except BaseException as exc:  # SystemExit from a handler, say: not the worker's end
            logger.error("pool worker: handler raised %r; the worker carries on", exc)
        finally:
            self._slots.give_back()

    def drain(self, timeout: float | None) -> bool:
        if not self._stopping:
            self._stopping = True  # after everything submitted: submitted work is served
            if self._turn_workers is not None:
                self._turn_workers.stop()
            else:
                for _ in self._workers:
                    self._queue.put(None)
        self._workers = join_all(self._workers, timeout)
        return not self._workers

    def close(self) -> None:
        pass  # threads cannot be stopped from outside (the Server logs any still running); the last closes up


@hookimpl(trylast=True)
def sockwork_add_dispatchers() -> list[DispatcherEntry]:
    from sockwork.registry import DispatcherEntry  # the registry is loaded only when one is built

    return [
        DispatcherEntry(
            "pool", PoolDispatcher, PoolOptions,
            description="a fixed set of worker threads and a bounded queue",
        )
    ]
