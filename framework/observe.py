"""Measuring a server while it serves: the observer the core calls, and one reading of everything.

    turn path (workers, loop) ──► Observer: begin_turn / end_turn / stage_done / observe_connection
                                  (None when metrics are off: one ``is None`` check per turn)
    a scrape (the loop's thread) ──► read(server): counters, gauges and histograms, per worker for prefork
    a prefork worker (every 0.2 s) ──► snapshot(worker) ──► its report pipe ──► the supervisor keeps it per worker

Rule 1: an observation takes no lock. Each thread writes cells of its own
(registered once per thread); a reading sums them, and folds the cells of
threads that have ended into one retired set, so nothing observed is lost and
memory stays bounded by the threads alive.
Rule 2: gauges are read in one place, :func:`snapshot`, when someone asks,
never kept up to date per request.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, final

import attrs

from .interfaces import capability
from .limits import ServerStats

if TYPE_CHECKING:
    from ._server import Server

__all__ = [
    "BYTES_BUCKETS",
    "DURATION_BUCKETS",
    "Histogram",
    "Observer",
    "Reading",
    "Snapshot",
    "TurnMetrics",
    "WorkerReading",
    "read",
    "snapshot",
]

DURATION_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
"""Upper bounds (seconds) of the duration histograms: turns, queueing delay, stages. 100 µs to a minute."""

BYTES_BUCKETS: tuple[float, ...] = tuple(float(4 ** n * 64) for n in range(12))
"""Upper bounds (bytes) of the per-connection traffic histograms: 64 B to 256 MiB, by fours."""

HISTOGRAMS: Mapping[str, tuple[float, ...]] = {
    "turn": DURATION_BUCKETS, "queue_wait": DURATION_BUCKETS,
    "received_bytes": BYTES_BUCKETS, "sent_bytes": BYTES_BUCKETS,
}
"""The fixed histograms and their bounds; stage histograms (``stage:NAME``) use DURATION_BUCKETS."""


class Observer(Protocol):
    """What the core calls while it serves, when metrics are on (``server.observer``; None when off).

    ``begin_turn(ready_since)`` as a worker starts a handler's turn: returns
    the start (``time.perf_counter()``); ``ready_since`` is when the loop found
    the connection readable (its queueing delay is the difference), None when
    unknown. ``end_turn(began)`` when the turn is over. ``stage_done(name,
    began)`` when a connection stage (``proxy``, ``tls``) finished, with the
    time it began; returns now, the next stage's start.
    ``observe_connection(bytes_in, bytes_out)`` once per connection, at its
    end (None: the kernel could not tell). Every method may be called from any
    thread and must not block.
    """

    def begin_turn(self, ready_since: float | None) -> float: ...

    def end_turn(self, began: float) -> None: ...

    def stage_done(self, name: str, began: float) -> float: ...

    def observe_connection(self, bytes_in: int | None, bytes_out: int | None) -> None: ...


@final
@attrs.frozen
class Histogram:
    """One histogram's figures: ``counts[i]`` observations ``<= bounds[i]`` (and above the bound before it),
    the last one above every bound; ``total`` is the sum of the observed values."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """Counts as Prometheus' ``le`` buckets have them (each includes the ones below; the last is +Inf)."""
        out, running = [], 0
        for count in self.counts:
            running += count
            out.append(running)
        return out

    def __add__(self, other: Histogram) -> Histogram:
        return Histogram(self.bounds, tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
                         self.total + other.total)

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, (0,) * (len(bounds) + 1))


_FIXED = {"turn": ("turn", "turn_sum"), "queue_wait": ("wait", "wait_sum"),
          "received_bytes": ("rx", "rx_sum"), "sent_bytes": ("tx", "tx_sum")}
"""Each fixed histogram's cells: (bucket counts, sum) attribute names (attributes, not a dict: one less look-up
per observation)."""


@final
class _Cells:
    """One thread's observations (written by that thread only)."""

    __slots__ = ("ended", "rx", "rx_sum", "stages", "started", "thread", "turn", "turn_sum", "tx", "tx_sum", "wait",
                 "wait_sum")

    def __init__(self, thread: threading.Thread | None) -> None:
        self.thread = thread
        self.started = self.ended = 0  # turns begun and ended by this thread
        self.turn = [0] * (len(DURATION_BUCKETS) + 1)
        self.wait = [0] * (len(DURATION_BUCKETS) + 1)
        self.rx = [0] * (len(BYTES_BUCKETS) + 1)
        self.tx = [0] * (len(BYTES_BUCKETS) + 1)
        self.turn_sum = self.wait_sum = self.rx_sum = self.tx_sum = 0.0
        self.stages: dict[str, list[Any]] = {}  # stage name -> [bucket counts, sum]

    def figures(self) -> dict[str, tuple[list[int], float]]:
        """Every histogram of this thread, by name: (counts, sum), copied."""
        out = {name: (list(getattr(self, counts)), float(getattr(self, total)))
               for name, (counts, total) in _FIXED.items()}
        for stage, (counts, total) in list(self.stages.items()):
            out["stage:" + stage] = (list(counts), float(total))
        return out


@final
class TurnMetrics:
    """The built-in :class:`Observer`: per-thread histogram buckets, summed when read (no lock per observation).

    An observation is a thread-local look-up, a ``bisect`` and two writes
    to the thread's own cells; the only lock is taken once per thread (its
    first observation) and by readers. Measured: ``begin_turn`` and
    ``end_turn`` together cost about 0.8 µs of CPU (prometheus_client's
    ``Histogram.observe``, which takes a lock per call, about 1 µs each).
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._cells: list[_Cells] = []
        self._retired: dict[str, tuple[list[int], float]] = {}  # what threads that have ended observed
        self._retired_turns = 0  # turns those threads began and did not end (a thread that died mid-turn)
        self._prune_at = 64

    def _mine(self) -> _Cells:
        cells = _Cells(threading.current_thread())
        self._local.cells = cells
        with self._lock:
            self._cells.append(cells)
            if len(self._cells) >= self._prune_at:
                self._fold_ended()
                self._prune_at = 2 * len(self._cells) + 64
        return cells

    # ---- Observations (any thread, no lock) ------------------------------------------

    def begin_turn(self, ready_since: float | None) -> float:
        now = time.perf_counter()
        try:
            cells = self._local.cells
        except AttributeError:
            cells = self._mine()
        cells.started += 1
        if ready_since is not None:
            waited = now - ready_since
            cells.wait[bisect.bisect_left(DURATION_BUCKETS, waited)] += 1
            cells.wait_sum += waited
        return now

    def end_turn(self, began: float) -> None:
        took = time.perf_counter() - began
        try:
            cells = self._local.cells
        except AttributeError:
            cells = self._mine()
        cells.ended += 1
        cells.turn[bisect.bisect_left(DURATION_BUCKETS, took)] += 1
        cells.turn_sum += took

    def stage_done(self, name: str, began: float) -> float:
        now = time.perf_counter()
        try:
            cells = self._local.cells
        except AttributeError:
            cells = self._mine()
        stage = cells.stages.get(name)
        if stage is None:
            stage = cells.stages[name] = [[0] * (len(DURATION_BUCKETS) + 1), 0.0]
        stage[0][bisect.bisect_left(DURATION_BUCKETS, now - began)] += 1
        stage[1] += now - began
        return now

    def observe_connection(self, bytes_in: int | None, bytes_out: int | None) -> None:
        try:
            cells = self._local.cells
        except AttributeError:
            cells = self._mine()
        if bytes_in is not None:
            cells.rx[bisect.bisect_left(BYTES_BUCKETS, bytes_in)] += 1
            cells.rx_sum += bytes_in
        if bytes_out is not None:
            cells.tx[bisect.bisect_left(BYTES_BUCKETS, bytes_out)] += 1
            cells.tx_sum += bytes_out

    # ---- Reading (any thread) ----------------------------------------------------------

    def _fold_ended(self) -> None:
        """Under the lock: add the cells of threads that have ended to the retired set (they write no more)."""
        alive = []
        for cells in self._cells:
            if cells.thread is not None and cells.thread.is_alive():
                alive.append(cells)
                continue
            self._retired_turns += cells.started - cells.ended
            for name, (counts, total) in cells.figures().items():
                kept = self._retired.get(name)
                self._retired[name] = (counts, total) if kept is None else (
                    [a + b for a, b in zip(kept[0], counts, strict=True)], kept[1] + total)
        self._cells = alive

    def histograms(self) -> dict[str, Histogram]:
        """Every histogram, the threads' cells summed (the four fixed ones always, stages once seen)."""
        with self._lock:
            self._fold_ended()
            figures = [dict(self._retired), *(cells.figures() for cells in self._cells)]
        out = {name: Histogram.empty(bounds) for name, bounds in HISTOGRAMS.items()}
        for one in figures:
            for name, (counts, total) in one.items():
                out[name] = (out[name] if name in out else Histogram.empty(DURATION_BUCKETS)) + Histogram(
                    out[name].bounds if name in out else DURATION_BUCKETS, tuple(counts), total)
        return out

    @property
    def busy(self) -> int:
        """Turns begun and not yet ended, in every thread (a thread that died mid-turn aside)."""
        with self._lock:
            alive = list(self._cells)
        return max(0, sum(cells.started - cells.ended for cells in alive))


# ---- Helpers for the core (only called with metrics on) ------------------------------------

_TCP_INFO = getattr(socket, "TCP_INFO", None)
_LAST_DATA_RECV = struct.Struct("I")  # tcp_info.tcpi_last_data_recv: ms since the last data arrived (Linux)
_LAST_DATA_RECV_AT = 52


def arrived(sock: socket.socket) -> float | None:
    """When the bytes a worker is about to read arrived (``time.perf_counter()`` scale), as far as the kernel
    tells (TCP on Linux, to the millisecond); None elsewhere. A worker that took a readable connection from
    the turn poller itself (leader/followers) measures its queueing delay with it."""
    if _TCP_INFO is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _LAST_DATA_RECV_AT + _LAST_DATA_RECV.size)
    except OSError:
        return None
    if len(info) < _LAST_DATA_RECV_AT + _LAST_DATA_RECV.size:
        return None
    (ms,) = _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_AT)
    return time.perf_counter() - float(ms) / 1000


def readable(fds: list[int]) -> int:
    """How many of ``fds`` have bytes to read now (a scrape's look at connections armed in the turn poller)."""
    if not fds:
        return 0
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return sum(1 for _, event in poller.poll(0) if event & select.POLLIN)


# ---- Readings ---------------------------------------------------------------------------

GAUGES = ("connections_idle", "connections_ready", "connections_in_stage", "waiting_limit",
          "workers_busy", "workers", "descriptors_open", "descriptors_limit")
"""The gauges of a snapshot (a gauge that does not apply is left out)."""


@final
@attrs.frozen
class Snapshot:
    """One process's figures at one moment: counters, gauges (see GAUGES) and histograms (by name)."""

    stats: ServerStats
    gauges: Mapping[str, float] = attrs.field(factory=dict)
    histograms: Mapping[str, Histogram] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for a prefork worker's report pipe); :meth:`from_dict` reads it back."""
        return {
            "stats": attrs.asdict(self.stats),
            "gauges": dict(self.gauges),
            "histograms": {name: [list(h.counts), h.total] for name, h in self.histograms.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        return cls(
            ServerStats(**data["stats"]), dict(data.get("gauges", {})),
            {name: Histogram(HISTOGRAMS.get(name, DURATION_BUCKETS), tuple(counts), float(total))
             for name, (counts, total) in data.get("histograms", {}).items()},
        )

    def __add__(self, other: Snapshot) -> Snapshot:
        """Counters and histograms added up; the gauges are ``other``'s (the later process's)."""
        histograms = dict(self.histograms)
        for name, histogram in other.histograms.items():
            histograms[name] = histograms[name] + histogram if name in histograms else histogram
        return Snapshot(self.stats + other.stats, dict(other.gauges), histograms)


@final
@attrs.frozen
class WorkerReading:
    """A supervisor's worker slot: its number, the pid serving in it now (None while it is replaced), its
    figures since the server started (its earlier processes' included) and how its processes ended."""

    worker: int
    pid: int | None
    snapshot: Snapshot
    exits: Mapping[str, int] = attrs.field(factory=dict)


@final
@attrs.frozen
class Reading:
    """What a server reports: its own figures, or (a supervisor) one :class:`WorkerReading` per worker."""

    own: Snapshot | None
    workers: tuple[WorkerReading, ...] = ()


def snapshot(server: Server, gauges: bool = True) -> Snapshot:
    """This process's figures (the ONE place gauges are read). Call it from the server's loop thread.

    ``gauges=False``: counters and histograms only (cheap: nothing is counted up).
    """
    observer = server.observer
    histograms = observer.histograms() if isinstance(observer, TurnMetrics) else {}
    stats = server.requests.stats(capability(server.transport, "oversized"), None)
    if not gauges:
        return Snapshot(stats, {}, histograms)
    values: dict[str, float] = {}
    waiting = server.loop.waiting
    busy = observer.busy if isinstance(observer, TurnMetrics) else None
    if waiting is not None:
        idle, ready, in_stage = waiting.census()
        held_by_workers = waiting.busy  # handed to the dispatcher: queued there, or in a turn
        queued_in_dispatcher = max(0, held_by_workers - busy) if busy is not None else 0
        values["connections_idle"] = idle
        values["connections_ready"] = ready + queued_in_dispatcher
        values["connections_in_stage"] = in_stage
        if server.loop.max_waiting != float("inf"):
            values["waiting_limit"] = server.loop.max_waiting
    if busy is not None:
        values["workers_busy"] = busy
    concurrency = getattr(server.dispatcher, "concurrency", None)
    if isinstance(concurrency, int):
        values["workers"] = concurrency
    values.update(_descriptors())
    return Snapshot(stats, values, histograms)


def read(server: Server) -> Reading:
    """Everything a scrape shows: :func:`snapshot` of this process, or a supervisor's workers' last reports."""
    workers: Iterable[WorkerReading] | None = capability(server.dispatcher, "worker_readings")
    if workers is not None:
        return Reading(None, tuple(workers))
    return Reading(snapshot(server))


def _descriptors() -> dict[str, float]:
    values: dict[str, float] = {}
    with contextlib.suppress(OSError):  # no /proc: not Linux
        values["descriptors_open"] = len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    try:
        import resource  # POSIX only

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            values["descriptors_limit"] = soft
    except (ImportError, OSError, ValueError):
        pass
    return values
