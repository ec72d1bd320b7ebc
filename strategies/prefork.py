"""The ``prefork`` dispatcher: worker processes that accept by themselves.

N workers are forked when the server starts; each runs a complete accept
loop on the shared listening (or datagram) socket with an inner dispatcher
(``inline``, ``thread`` or ``pool``). The parent only supervises: a worker
that dies is logged and replaced, a worker may be recycled after
``max_requests``, and stopping the server sends each worker SIGTERM, upon
which it stops accepting and drains its own requests.

This is how a Python server uses several cores despite the GIL.

Rule 1: the parent never accepts; the kernel hands each connection (or
datagram) to one worker.
Rule 2: a worker that dies right after it started is replaced after a pause
that grows, so a broken handler cannot turn into a fork loop.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import signal
import struct
import time
from typing import Any, final

import attrs

from sockwork._deadline import deadline_after, remaining
from sockwork._validators import off_is_none, optional_positive_int, positive_int
from sockwork.hookspecs import hookimpl
from sockwork.interfaces import DispatcherHost
from sockwork.limits import ServerStats
from sockwork.registry import DispatcherEntry, validate_options

from .fork import flush_stdio
from .inline import InlineDispatcher, InlineOptions
from .pool import PoolDispatcher, PoolOptions
from .thread import ThreadDispatcher, ThreadOptions

__all__ = ["PreforkDispatcher", "PreforkOptions"]

logger = logging.getLogger("sockwork")

_INNER = {
    "inline": (InlineDispatcher, InlineOptions),
    "thread": (ThreadDispatcher, ThreadOptions),
    "pool": (PoolDispatcher, PoolOptions),
}
_QUICK_DEATH = 1.0  # seconds: a worker dying sooner than this is a crash loop
_MAX_RESPAWN_PAUSE = 5.0


def _check_inner(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in _INNER:
        raise ValueError(f"'{attribute.name}' must be one of {', '.join(_INNER)}, got {value!r}")


def _check_inner_options(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    inner = getattr(instance, "inner", None)
    if inner not in _INNER:
        return  # reported for 'inner' itself
    _, problems = validate_options(_INNER[inner][1], value)
    if problems:
        shown = "; ".join(f"{field}: {problem}" if field else problem for field, problem in problems)
        raise ValueError(f"'{attribute.name}' are not valid for the {inner} dispatcher: {shown}")


@final
@attrs.frozen(kw_only=True)
class PreforkOptions:
    """Options of the ``prefork`` dispatcher."""

    workers: int = attrs.field(factory=lambda: os.cpu_count() or 1, validator=positive_int)
    """Worker processes (default: one per CPU)."""
    inner: str = attrs.field(default="pool", validator=_check_inner)
    """How each worker serves the requests it accepts: inline, thread or pool
    (the default: no thread start per request)."""
    inner_options: dict[str, Any] = attrs.field(factory=dict, validator=_check_inner_options)
    """Options of the inner dispatcher, e.g. ``{ workers = 8 }`` for pool."""
    max_requests: int | None = attrs.field(default=None, converter=off_is_none, validator=optional_positive_int)
    """Replace a worker once it has served this many requests (guards against
    slow leaks in handlers; requests it accepted in the same round are served
    too, so it may be a few more); none: never."""


@final
class PreforkDispatcher:
    """Supervises worker processes that accept and serve by themselves."""

    accepts_itself = True

    def __init__(self, options: PreforkOptions | None = None) -> None:
        self.options = options or PreforkOptions()
        _, options_cls = _INNER[self.options.inner]
        self._inner_options = validate_options(options_cls, self.options.inner_options)[0]
        # How many run at once depends on how the kernel spreads connections over
        # the workers (between one inner dispatcher's limit and all of theirs):
        # no fixed number to promise.
        self.concurrency = None
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._respawn_pause = 0.0
        self._retired = ServerStats()  # what workers that have exited served

    @property
    def worker_pids(self) -> frozenset[int]:
        return frozenset(self._workers)

    @property
    def stats_elsewhere(self) -> ServerStats:
        """The workers' counters, as last reported (every 0.2 s and when they exit)."""
        total = self._retired
        for worker in list(self._workers.values()):
            total += worker.last
        return total

    def start(self, host: DispatcherHost) -> None:
        self._host = host
        for _ in range(self.options.workers):
            self._spawn()

    def _spawn(self) -> None:
        reports_r, reports_w = os.pipe()
        flush_stdio()
        pid = os.fork()
        if pid == 0:
            os.close(reports_r)
            self._work(reports_w)  # never returns
        os.close(reports_w)
        os.set_blocking(reports_r, False)
        worker = self._workers[pid] = _Worker(os.pidfd_open(pid), reports_r)
        self._host.add_reader(worker.pidfd, functools.partial(self._on_exit, pid))
        self._host.add_reader(reports_r, worker.read_reports)

    def _work(self, reports: int) -> None:
        status = 1
        try:
            for worker in self._workers.values():  # the siblings are the parent's to watch
                os.close(worker.pidfd)
                os.close(worker.reports)
            self._workers.clear()
            cls, _ = _INNER[self.options.inner]
            report = functools.partial(_send_report, reports)
            status = int(self._host.run_worker(cls(self._inner_options), self.options.max_requests, report))
        except BaseException:
            logger.exception("prefork worker %d failed", os.getpid())
        finally:
            flush_stdio()
            os._exit(status)

    def _on_exit(self, pid: int) -> None:
        """In the parent's loop: a worker exited; replace it unless we are stopping."""
        _, status = os.waitpid(pid, 0)
        started = self._forget(pid)
        code = os.waitstatus_to_exitcode(status)
        if self._stopping:
            return
        if code == 0:
            logger.info("prefork worker %d retired after max_requests; starting a new one", pid)
            self._respawn_pause = 0.0
        else:
            how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            logger.error("prefork worker %d %s; starting a new one", pid, how)
            if time.monotonic() - started < _QUICK_DEATH:  # a crash loop: slow it down
                self._respawn_pause = min(max(self._respawn_pause * 2, 0.1), _MAX_RESPAWN_PAUSE)
                time.sleep(self._respawn_pause)  # the parent's loop has nothing else to do
            else:
                self._respawn_pause = 0.0
        self._spawn()

    def _forget(self, pid: int) -> float:
        """Stop watching an exited worker, keeping its final counters; return when it started."""
        worker = self._workers.pop(pid)
        worker.read_reports()  # its final report, written before it exited
        self._retired += worker.last
        for fd in (worker.pidfd, worker.reports):
            self._host.remove_reader(fd)
            os.close(fd)
        return worker.started

    def submit(self, request: Any, client_address: Any) -> None:
        raise RuntimeError("the prefork dispatcher's workers accept by themselves")

    def saturated(self) -> bool:
        return False  # never asked: the parent does not accept

    def drain(self, timeout: float | None) -> bool:
        if not self._stopping:
            self._stopping = True
            for pid in self._workers:
                try:
                    os.kill(pid, signal.SIGTERM)  # stop accepting, drain, exit
                except ProcessLookupError:
                    pass  # exited already; reaped below
        deadline = deadline_after(timeout)
        while self._workers:
            left = remaining(deadline)
            if left == 0:
                return False
            poller = select.poll()
            for worker in self._workers.values():
                poller.register(worker.pidfd, select.POLLIN)
            for fd, _ in poller.poll(None if left is None else left * 1000):
                pid = next(p for p, w in self._workers.items() if w.pidfd == fd)
                os.waitpid(pid, 0)
                self._forget(pid)
        return True

    def close(self) -> None:
        if self._workers:
            logger.warning("killing %d prefork worker(s) still draining", len(self._workers))
        for pid in list(self._workers):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            self._forget(pid)


_FIELDS = [field.name for field in attrs.fields(ServerStats)]
_REPORT = struct.Struct(f"{len(_FIELDS)}q")  # the ServerStats fields, in order


class _Worker:
    __slots__ = ("_partial", "last", "pidfd", "reports", "started")

    def __init__(self, pidfd: int, reports: int) -> None:
        self.pidfd = pidfd
        self.reports = reports  # a pipe the worker writes its counters to
        self.started = time.monotonic()
        self.last = ServerStats()
        self._partial = b""

    def read_reports(self) -> None:
        data = self._partial
        while True:
            try:
                chunk = os.read(self.reports, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        whole = len(data) - len(data) % _REPORT.size
        if whole:
            self.last = ServerStats(**dict(zip(_FIELDS, _REPORT.unpack(data[whole - _REPORT.size:whole]))))
        self._partial = data[whole:]


def _send_report(fd: int, stats: ServerStats) -> None:
    try:
        os.write(fd, _REPORT.pack(*attrs.astuple(stats)))  # 56 bytes: one atomic pipe write
    except OSError:
        pass  # the parent is gone or not listening: nothing to report to


@hookimpl(trylast=True)
def sockwork_add_dispatchers() -> list[DispatcherEntry]:
    reason = None if hasattr(os, "fork") and hasattr(os, "pidfd_open") else "needs fork() and pidfd_open() (Linux)"
    return [
        DispatcherEntry(
            "prefork", PreforkDispatcher, PreforkOptions,
            description="worker processes (one per CPU) that accept by themselves, each with an inner dispatcher",
            unavailable_reason=reason,
        )
    ]
