"""The ``prefork`` supervisor: worker processes that accept by themselves.

The parent spawns N workers when the server starts; each runs a complete
server loop on the shared listening (or datagram) socket with an inner
dispatcher chosen by name from the registry (``pool`` by default; any
registered dispatcher that is not itself a supervisor, a third party's
included). The parent only supervises, in the manner of gunicorn's arbiter:

- spawn: every worker is forked from the parent's loop thread; the worker
  becomes the leader of its own process group, so that ending it also ends
  the processes it forked (an inner ``fork`` dispatcher's children);
- reap: a pidfd per worker in the parent's selector; the exit is logged with
  its true reason (``WorkerExit``: stopped, recycled, orphaned; or a crash);
- replace: a worker that dies is replaced, after a growing pause when it
  died young (a crash loop must not become a fork loop);
- recycle: a worker that finished ``max_requests`` requests exits and is
  replaced;
- drain: SIGTERM to each worker, which stops accepting and drains its own
  requests; after the deadline, the survivors' process groups are killed;
- resize (``resize(delta)``, SIGTTIN/SIGTTOU under ``sockwork serve``): more
  workers are spawned, or the newest ones retire (drain and exit, not
  replaced); the listener stays open throughout, so no client is refused;
- reload (``replace_workers(new)``, SIGHUP): a new generation of workers with
  the new options, inner dispatcher and the server's new handler; the old
  generation retires once every new worker has reported that it serves (or
  after READY_WAIT).

Workers report to the parent through a pipe, one JSON line per report (a
``sockwork.observe.Snapshot``: the counters and, with metrics on, the gauges
and histograms; at most every 0.2 s and once at the end). The parent keeps
them per worker *slot* (0..N-1; a replacement takes the slot of the worker it
replaces): a slot's figures are its current worker's last report plus what its
earlier workers reported last, so nothing a recycled or crashed worker counted
is lost, and the metrics endpoint shows one series per slot. A worker that
crashed has the requests it reported as running counted as failed, so
``active`` returns to 0. Workers check ``os.getppid()`` every report interval
and drain and stop when the parent is gone.

This is how a Python server uses several cores despite the GIL.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, final

import attrs

from sockwork.assembly import inner_dispatcher_factory
from sockwork.deadlines import deadline_after, remaining
from sockwork.forking import flush_stdio, fork
from sockwork.hookspecs import hookimpl
from sockwork.interfaces import Dispatcher, SupervisorHost, capability
from sockwork.limits import ServerStats, WorkerExit
from sockwork.observe import Snapshot, WorkerReading, snapshot
from sockwork.registry import DispatcherEntry, Registry, make_plugin_manager
from sockwork.validators import off_is_none, optional_positive_int, positive_int

if TYPE_CHECKING:
    from sockwork.registry import DispatcherEntry

__all__ = ["PreforkDispatcher", "PreforkOptions", "run_worker"]

logger = logging.getLogger("sockwork")

_QUICK_DEATH = 1.0  # seconds: a worker dying sooner than this is a crash loop
_MAX_RESPAWN_PAUSE = 5.0
_RESIGNAL = 0.5  # seconds: how often SIGTERM is repeated to workers told to stop that have not exited
READY_WAIT = 5.0  # seconds: a reload retires the old workers by then even if a new one has not reported
REPORT_EVERY = 0.2


def _check_inner(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{attribute.name}' must be a dispatcher name such as 'pool', got {value!r}")


def _check_inner_options(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"'{attribute.name}' must be a table of the inner dispatcher's options, got {value!r}")


@final
@attrs.frozen(kw_only=True)
class PreforkOptions:
    """Options of the ``prefork`` supervisor."""

    workers: int = attrs.field(factory=lambda: os.cpu_count() or 1, validator=positive_int)
    """Worker processes (default: one per CPU)."""
    inner: str = attrs.field(default="pool", validator=_check_inner)
    """The dispatcher each worker serves its requests with: any registered
    dispatcher that does not supervise processes itself (default: pool)."""
    inner_options: dict[str, Any] = attrs.field(factory=dict, validator=_check_inner_options)
    """Options of the inner dispatcher, e.g. ``{ workers = 8 }`` for pool;
    validated by that dispatcher's own options class."""
    max_requests: int | None = attrs.field(default=None, converter=off_is_none, validator=optional_positive_int)
    """Replace a worker once it has finished this many requests (guards against
    slow leaks in handlers; checked after every round of the worker's loop, one
    accept per round, so an inner dispatcher with a queue may finish a few more
    than this); none: never."""


@final
class PreforkDispatcher:
    """Supervises worker processes that accept and serve by themselves (a Supervisor).

    ``make_inner()`` builds the dispatcher a worker serves with; assembly
    passes it (built from ``options.inner`` through the registry). Built
    without it, the inner dispatcher comes from the built-in ones.
    """

    accepts_itself: Literal[True] = True

    def __init__(
        self, options: PreforkOptions | None = None, make_inner: Callable[[], Dispatcher] | None = None
    ) -> None:
        self.options = options or PreforkOptions()
        self._make_inner = make_inner if make_inner is not None else _builtin_inner(self.options)
        # How many run at once depends on how the kernel spreads connections over
        # the workers: no fixed number to promise.
        self.concurrency = None
        self._workers: dict[int, _Worker] = {}
        self._retiring: set[int] = set()  # told to drain and exit (resize, reload): not replaced
        self._unready: set[int] = set()  # a reload's new workers that have not reported yet
        self._to_retire: list[int] = []  # a reload's old workers, retired once the new ones serve
        self._stopping = False
        self._respawn_pause = 0.0
        self._slots: dict[int, _Slot] = {}  # what the workers of each slot reported, the exited ones' included

    @functools.cached_property
    def runs_async(self) -> bool:
        """Whether the workers serve async handlers: the inner dispatcher's answer."""
        return self._inner_says("runs_async")

    @functools.cached_property
    def keeps_connections_elsewhere(self) -> bool:
        """Whether a kept-alive connection stays in another process than the worker's loop (an inner
        dispatcher such as ``fork`` or procpool serves it to its end there): the inner dispatcher's answer."""
        return self._inner_says("keeps_connections_elsewhere")

    def _inner_says(self, name: str) -> bool:
        """A capability of the inner dispatcher, asked of one built for the purpose (dispatchers start
        nothing until ``start``)."""
        probe = self._make_inner()
        try:
            return bool(capability(probe, name))
        finally:
            probe.close()

    @property
    def worker_pids(self) -> frozenset[int]:
        return frozenset(self._workers)

    @property
    def make_inner(self) -> Callable[[], Dispatcher]:
        """What builds the dispatcher each worker serves with (a reload takes a new one's)."""
        return self._make_inner

    def _serving(self) -> list[int]:
        """Workers not told to retire, oldest first."""
        return [pid for pid in self._workers if pid not in self._retiring]

    @property
    def stats_elsewhere(self) -> ServerStats:
        """The workers' counters, as last reported (every 0.2 s and when they exit)."""
        total = ServerStats()
        for slot in list(self._slots.values()):
            total += slot.retired.stats
        for worker in list(self._workers.values()):
            total += worker.last.stats
        return total

    @property
    def worker_readings(self) -> list[WorkerReading]:
        """Per worker slot: its current pid, and its figures with those of the workers it replaced."""
        current = {worker.slot: (pid, worker) for pid, worker in list(self._workers.items())}
        readings = []
        for number, slot in sorted(self._slots.items()):
            pid, worker = current.get(number, (None, None))
            figures = slot.retired if worker is None else slot.retired + worker.last
            readings.append(WorkerReading(number, pid, figures, dict(slot.exits)))
        return readings

    def start(self, host: SupervisorHost) -> None:
        self._host = host
        for _ in range(self.options.workers):
            self._spawn()
        # Said once, where an operator looks first: state kept in a handler's memory is per worker.
        logger.info("prefork: %d worker processes serve (pids %s); each has its own memory, so what a handler "
                    "keeps in memory (a dict, a cache, a counter) is seen by one worker only",
                    len(self._workers), ", ".join(str(pid) for pid in sorted(self._workers)))

    # ---- Spawn ------------------------------------------------------------------------

    def _spawn(self) -> int:
        reports_r, reports_w = os.pipe()
        parent = os.getpid()
        try:
            pid = fork()  # flushes stdio; the child starts with the parent's signal plumbing dropped
        except BaseException:
            os.close(reports_r)
            os.close(reports_w)
            raise
        if pid == 0:
            os.close(reports_r)
            self._work(reports_w, parent)  # never returns
        os.close(reports_w)
        os.set_blocking(reports_r, False)
        with contextlib.suppress(OSError):  # the child has exec'd or exited already
            os.setpgid(pid, pid)  # also done in the child: whichever runs first
        taken = {worker.slot for worker in self._workers.values()}
        number = next(n for n in itertools.count() if n not in taken)  # the lowest free: a replacement's own
        self._slots.setdefault(number, _Slot())
        worker = self._workers[pid] = _Worker(os.pidfd_open(pid), reports_r, number)
        self._host.add_reader(worker.pidfd, functools.partial(self._on_exit, pid))
        self._host.add_reader(reports_r, functools.partial(self._on_report, pid))
        return pid

    def _work(self, reports: int, parent: int) -> None:
        """In the worker: serve until told to stop, then exit with the reason as status."""
        status = 1
        try:
            os.setpgid(0, 0)  # its own process group: killing the group ends what it forked
            for worker in self._workers.values():  # the siblings are the parent's to watch
                os.close(worker.pidfd)
                os.close(worker.reports)
            self._workers.clear()
            report = functools.partial(_send_report, reports)
            status = int(run_worker(self._host, self._make_inner(), self.options.max_requests, report, REPORT_EVERY,
                                    parent=parent))
        except SystemExit as exc:  # a handler's sys.exit(N) ends its worker with status N...
            status = exc.code if isinstance(exc.code, int) else 1
            if status in (WorkerExit.RECYCLED, WorkerExit.ORPHANED):
                status = 1  # ...but never one that would report a false reason
        except BaseException:
            logger.exception("prefork worker %d failed", os.getpid())
        finally:
            flush_stdio()
            os._exit(status)

    def _on_report(self, pid: int) -> None:
        worker = self._workers.get(pid)
        if worker is None:
            return
        worker.read_reports()
        if pid in self._unready:  # a reload's new worker serves
            self._unready.discard(pid)
            if not self._unready:
                self._retire_old()

    # ---- Resize and reload (in the parent's loop) -------------------------------------

    def resize(self, delta: int) -> str:
        """``delta`` workers more (spawned now) or fewer (the newest retire); at least one stays. In words."""
        if self._stopping:
            return "not resized: the server is stopping"
        before = self.options.workers
        after = max(1, before + delta)
        if after == before:
            return f"not resized: {before} worker(s) (at least one stays)"
        self.options = attrs.evolve(self.options, workers=after)
        serving = self._serving()
        for _ in range(after - len(serving)):
            self._spawn()
        for pid in reversed(serving[after:] if len(serving) > after else []):
            self._retire(pid)
        return f"resized from {before} to {after} worker(s)"

    def replace_workers(self, new: PreforkDispatcher) -> str:
        """A reload: workers with ``new``'s options and inner dispatcher (``new`` is closed, never
        started); the old ones retire once all of these serve. In words."""
        old = self._serving()
        self.options, self._make_inner = new.options, new.make_inner
        self.__dict__.pop("runs_async", None)  # asked again of the new inner dispatcher
        new.close()
        self._to_retire.extend(old)
        self._unready = {self._spawn() for _ in range(self.options.workers)}
        self._host.call_later(READY_WAIT, self._retire_old)  # at the latest
        return (f"started {self.options.workers} new prefork worker(s) with it (the handler's code imported "
                f"afresh); {len(old)} old one(s) drain once the new ones serve")

    def _retire_old(self) -> None:
        old, self._to_retire = self._to_retire, []
        for pid in old:
            if pid in self._workers:
                self._retire(pid)

    def _retire(self, pid: int) -> None:
        if pid in self._retiring or self._stopping:
            return
        if not self._retiring:
            self._host.call_later(_RESIGNAL, self._resignal)
        self._retiring.add(pid)
        _signal(pid, signal.SIGTERM)  # stop accepting, drain, exit

    def _resignal(self) -> None:
        """A worker still starting up ignores SIGTERM until its own handler is in place: say it again."""
        alive = [pid for pid in self._retiring if pid in self._workers]
        if alive and not self._stopping:
            for pid in alive:
                _signal(pid, signal.SIGTERM)
            self._host.call_later(_RESIGNAL, self._resignal)

    # ---- Reap and replace -------------------------------------------------------------

    def _on_exit(self, pid: int) -> None:
        """In the parent's loop: a worker exited; say why, and replace it unless we are stopping."""
        if pid not in self._workers:
            return  # reaped and forgotten already (abort)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped by abort() meanwhile
            self._forget(pid, crashed=True)
            return
        code = os.waitstatus_to_exitcode(status)
        started = self._forget(pid, crashed=code not in (WorkerExit.STOPPED, WorkerExit.RECYCLED, WorkerExit.ORPHANED),
                               reason=_EXIT_REASONS.get(code))
        if self._stopping:
            return
        if pid in self._retiring:
            self._retiring.discard(pid)
            if code == WorkerExit.STOPPED:
                logger.info("prefork worker %d retired: drained and stopped", pid)
            else:
                logger.error("prefork worker %d, retiring, ended with status %s", pid, code)
            return
        if len(self._serving()) >= self.options.workers:
            return  # fewer wanted meanwhile (a resize)
        if code == WorkerExit.RECYCLED:
            logger.info("prefork worker %d retired after max_requests=%s; starting a new one",
                        pid, self.options.max_requests)
            self._respawn_pause = 0.0
        else:
            if code == WorkerExit.STOPPED:
                how = "stopped on its own (exit status 0, no SIGTERM from this supervisor)"
            elif code == WorkerExit.ORPHANED:
                how = "stopped: it lost sight of its parent"
            elif code < 0:
                how = f"was killed by signal {signal.Signals(-code).name}"
            else:
                how = f"exited with status {code}"
            logger.error("prefork worker %d %s; starting a new one", pid, how)
            if time.monotonic() - started < _QUICK_DEATH:  # a crash loop: slow it down
                self._respawn_pause = min(max(self._respawn_pause * 2, 0.1), _MAX_RESPAWN_PAUSE)
                # A timer in the loop, not a sleep: signals and a stop are heard meanwhile.
                self._host.call_later(self._respawn_pause, self._respawn)
                return
            self._respawn_pause = 0.0
        self._spawn()

    def _respawn(self) -> None:
        if not self._stopping and len(self._serving()) < self.options.workers:
            self._spawn()

    def _forget(self, pid: int, crashed: bool, reason: str | None = None) -> float:
        """Stop watching an exited worker, keeping its final figures in its slot; return when it started.

        A worker that crashed could not finish the requests it reported as
        running: they count as failed, so ``active`` returns to 0.
        """
        worker = self._workers.pop(pid)
        self._unready.discard(pid)
        worker.read_reports()  # its final report, written before it exited
        last = worker.last.stats
        if last.active:
            if crashed:
                logger.error("prefork worker %d ended with %d request(s) running; counted as failed",
                             pid, last.active)
            last = attrs.evolve(last, active=0, failed=last.failed + last.active)
        slot = self._slots[worker.slot]
        slot.retired += Snapshot(last, {}, worker.last.histograms)  # (gauges are a live worker's: none kept)
        reason = reason or ("crashed" if crashed else "stopped")
        slot.exits[reason] = slot.exits.get(reason, 0) + 1
        for fd in (worker.pidfd, worker.reports):
            self._host.remove_reader(fd)
            os.close(fd)
        return worker.started

    def submit(self, request: Any, client_address: Any) -> None:
        raise RuntimeError("the prefork supervisor's workers accept by themselves; submit() is never called")

    def saturated(self) -> bool:
        return False  # never asked: the parent does not accept

    # ---- Drain and stop ---------------------------------------------------------------

    def drain(self, timeout: float | None) -> bool:
        if not self._stopping:
            self._stopping = True
            for pid in self._workers:
                _signal(pid, signal.SIGTERM)  # stop accepting, drain, exit
        deadline = deadline_after(timeout)
        signalled = time.monotonic()
        while self._workers:
            left = remaining(deadline)
            if left == 0:
                return False
            poller = select.poll()
            for worker in self._workers.values():
                poller.register(worker.pidfd, select.POLLIN)
                poller.register(worker.reports, select.POLLIN)  # read while they drain: a full pipe would block them
            reports = {worker.reports: worker for worker in self._workers.values()}
            polled = poller.poll(_RESIGNAL * 1000 if left is None else min(left, _RESIGNAL) * 1000)
            for fd, _ in polled:
                if fd in reports:
                    reports[fd].read_reports()
            ready = [(fd, event) for fd, event in polled if fd not in reports]
            if time.monotonic() - signalled >= _RESIGNAL:
                signalled = time.monotonic()
                # A worker still starting up ignores SIGTERM until its own handler is in
                # place (see sockwork.forking): say it again until it is heard.
                for pid in self._workers:
                    _signal(pid, signal.SIGTERM)
            for fd, _ in ready:
                pid = next(p for p, w in self._workers.items() if w.pidfd == fd)
                try:
                    _, status = os.waitpid(pid, 0)
                except ChildProcessError:  # reaped by abort() on a second signal
                    status = 0
                code = os.waitstatus_to_exitcode(status)
                self._forget(pid, crashed=code != WorkerExit.STOPPED, reason=_EXIT_REASONS.get(code))
        return True

    def close(self) -> None:
        self._stopping = True
        if self._workers:
            logger.warning("killing %d prefork worker(s) still draining", len(self._workers))
        self.abort()
        for pid in list(self._workers):
            self._forget(pid, crashed=True)

    def abort(self) -> None:
        """Kill every worker's process group at once and reap the workers (safe in a signal handler)."""
        self._stopping = True  # nothing is replaced from here on
        pids = list(self._workers)
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                _signal(pid, signal.SIGKILL)  # not (yet) a group leader: the worker alone
        for pid in pids:
            with contextlib.suppress(ChildProcessError):  # reaped meanwhile by the drain
                os.waitpid(pid, 0)  # SIGKILL: at once


def run_worker(
    host: SupervisorHost, dispatcher: Dispatcher, max_requests: int | None = None,
    report: Callable[[Snapshot], None] | None = None, report_every: float = 0.2, *,
    parent: int | None = None,
) -> WorkerExit:
    """In a supervisor's worker (forked with :func:`sockwork.forking.fork`): serve with ``dispatcher``.

    Serves until SIGTERM (then stops accepting and drains, as ``close()``
    does), until ``max_requests`` requests have finished, or until the
    parent process is gone (``parent``: its pid, read before the fork, so that a
    parent that died before this call is noticed too). ``report`` gets a
    :class:`sockwork.observe.Snapshot` (the counters; with metrics on, also the
    gauges and histograms) at most every ``report_every`` seconds and once at
    the end. Returns why it ended.
    """
    if parent is None:
        parent = os.getppid()
    reason = WorkerExit.STOPPED
    next_check = 0.0

    def check() -> None:  # after every round of the worker's loop
        nonlocal reason, next_check
        if max_requests is not None and worker.stats.finished >= max_requests:
            reason = WorkerExit.RECYCLED
            worker.shutdown()  # from the serving thread: stop accepting, drain, exit
            return
        now = time.monotonic()
        if now < next_check:
            return
        next_check = now + report_every
        if report is not None:
            report(snapshot(worker, gauges=worker.observer is not None))
        if os.getppid() != parent:
            reason = WorkerExit.ORPHANED
            logger.warning("prefork worker %d: the parent process %d is gone; draining and stopping",
                           os.getpid(), parent)
            worker.shutdown()

    # With max_requests, one accept per round, so that the check after each round is on time.
    worker = host.worker_server(dispatcher, check, accept_batch=1 if max_requests is not None else None)
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.shutdown())
    signal.set_wakeup_fd(worker.wakeup_fd, warn_on_full_buffer=False)
    try:
        worker.serve_forever(report_every)
    finally:
        signal.set_wakeup_fd(-1)
        worker.close()
        if report is not None:
            report(snapshot(worker, gauges=False))
    return reason


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited already; reaped by the caller
        os.kill(pid, signum)


def _builtin_inner(options: PreforkOptions) -> Callable[[], Dispatcher]:
    """Without assembly: the inner dispatcher from the built-in ones (no entry points scanned)."""
    registry = Registry(make_plugin_manager(entry_points=False))
    return inner_dispatcher_factory(registry, registry.get("dispatcher", "prefork"), options)


_EXIT_REASONS: dict[int, str] = {
    WorkerExit.STOPPED: "stopped", WorkerExit.RECYCLED: "recycled", WorkerExit.ORPHANED: "orphaned",
}


class _Slot:
    """What the exited workers of one slot reported last (counters and histograms), and how they ended."""

    __slots__ = ("exits", "retired")

    def __init__(self) -> None:
        self.retired = Snapshot(ServerStats())
        self.exits: dict[str, int] = {}


class _Worker:
    __slots__ = ("_partial", "last", "pidfd", "reports", "slot", "started")

    def __init__(self, pidfd: int, reports: int, slot: int) -> None:
        self.pidfd = pidfd
        self.reports = reports  # a pipe the worker writes its reports to, a JSON line each
        self.slot = slot
        self.started = time.monotonic()
        self.last = Snapshot(ServerStats())
        self._partial = b""

    def read_reports(self) -> None:
        """Take what the pipe holds; keep the last whole report."""
        data = self._partial
        while True:
            try:
                chunk = os.read(self.reports, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        whole, _, self._partial = data.rpartition(b"\n")
        if whole:
            self.last = Snapshot.from_dict(json.loads(whole.rpartition(b"\n")[2]))


def _send_report(fd: int, report: Snapshot) -> None:
    # One line, written whole: the parent keeps the last complete one. A blocking write: the parent
    # reads reports in its loop and while it drains, so a full pipe only slows the worker for a moment.
    with contextlib.suppress(OSError):  # the parent is gone or not listening: nothing to report to
        os.write(fd, json.dumps(report.to_dict(), separators=(",", ":")).encode() + b"\n")


@hookimpl(trylast=True)
def sockwork_add_dispatchers() -> list[DispatcherEntry]:
    reason = None if hasattr(os, "fork") and hasattr(os, "pidfd_open") else "needs fork() and pidfd_open() (Linux)"
    return [
        DispatcherEntry(
            "prefork", PreforkDispatcher, PreforkOptions,
            description="a supervisor of worker processes (one per CPU) that accept by themselves, "
                        "each serving with an inner dispatcher",
            unavailable_reason=reason, supervisor=True,
        )
    ]
