"""The ``fork`` dispatcher: a child process per request.

Rule 1: every child is reaped by its parent, as soon as it exits (the accept
loop watches a pidfd per child), so none is ever left a zombie.
Rule 2: the parent owns its children's lifetime: children ignore SIGINT and
SIGTERM (a Ctrl-C or a supervisor's SIGTERM to the process group lets them
finish their request); ``close()`` kills those still running after the drain.
A child keeps none of the parent's signal plumbing (its wake-up fd above all):
it is forked by :func:`sockwork.forking.fork`, which says exactly what it resets.
Rule 3: once forked, a request belongs to its child; nothing after fork()
may raise in the parent (a failure to watch the child falls back to polling).
Rule 4: with ``request_timeout``, a child still serving a stream request
KILL_GRACE seconds past its deadline is killed by the parent and counted
``timed_out``. The child's own watchdog shut its connection down at the
deadline, which ends a handler blocked on its client; only a handler that
never touches its connection again (spinning on the CPU, asleep, waiting on
something else) is killed. Only a child not yet reaped is signalled (through
its pidfd where there is one), so a reused process id is never hit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import select
import signal
import time
from typing import TYPE_CHECKING, Any, Final, final

import attrs

from sockwork.deadlines import deadline_after, remaining
from sockwork.errors import FailedElsewhere
from sockwork.forking import flush_stdio, fork
from sockwork.hookspecs import hookimpl
from sockwork.interfaces import ProcessDispatcherHost
from sockwork.limits import Outcome
from sockwork.validators import boolean, positive_int

if TYPE_CHECKING:
    from sockwork.registry import DispatcherEntry

__all__ = ["CHILD_EXIT", "ForkDispatcher", "ForkOptions"]

logger = logging.getLogger("sockwork")

_UNAVAILABLE = None if hasattr(os, "fork") else "os.fork() is missing on this platform"
_HAVE_PIDFD = hasattr(os, "pidfd_open")
PIPE_RECORD = 4000  # a failure report's most bytes: one write under PIPE_BUF never interleaves
_POLL_INTERVAL = 0.01  # where there are no pidfds, how often drain() looks for exits
CHILD_EXIT: Final[dict[Outcome, int]] = {
    Outcome.COMPLETED: 0,
    Outcome.FAILED: 81,
    Outcome.TIMED_OUT: 82,
    Outcome.DISCONNECTED: 83,
    Outcome.REFUSED: 84,
}
"""The exit status a child serving one request ends with, for each Outcome; the parent maps it back.

Statuses of their own, not the Outcome's values: a handler that ends its child
with ``os._exit(2)`` or ``sys.exit(1)`` is a crash (logged with its status,
counted failed), never taken for ``TIMED_OUT`` or ``FAILED``. 81-84 are clear of
the statuses programs commonly use (1, 2, sysexits' 64-78, 126-128+N)."""
_OUTCOME_OF_EXIT: Final = {status: outcome for outcome, status in CHILD_EXIT.items()}
KILL_GRACE = 1.0
"""Seconds past ``request_timeout`` before a child still serving is killed: time for
its own watchdog to end a request blocked on I/O cleanly (the child then exits by itself)."""


@final
@attrs.frozen(kw_only=True)
class ForkOptions:
    """Options of the ``fork`` dispatcher."""

    max_children: int = attrs.field(default=40, validator=positive_int)
    """Most child processes at once; at the limit the server stops accepting
    until one exits. 40 is socketserver's ``ForkingMixIn.max_children``."""
    block_on_close: bool = attrs.field(default=True, validator=boolean)
    """Whether closing the server waits for running children (up to the drain
    timeout, then kills them). False: close returns at once and leaves them
    running (socketserver's ``block_on_close = False``)."""


@final
class ForkDispatcher:
    """Serves each request in a forked child (what ``ForkingMixIn`` did).

    Isolates requests from each other completely, at the cost of a fork per
    request. The child closes the listening socket and serves one request.
    A child that exits with a non-zero status or by a signal is logged.
    With ``request_timeout``, a child still running ``KILL_GRACE`` seconds past
    it is killed, logged at WARNING and counted ``timed_out`` (see Rule 4).
    """

    keeps_connections_elsewhere = True  # a child serves a keep-alive connection to its end

    def __init__(self, options: ForkOptions | None = None) -> None:
        self.options = options or ForkOptions()
        self.concurrency = self.options.max_children
        self._limit = self.options.max_children
        self._children: dict[int, tuple[int | None, Any]] = {}  # pid -> (pidfd, client address)
        self._unwatched = 0  # children without a pidfd: reaped by polling
        self._failures_r = self._failures_w = -1  # the pipe children report failures on (start())
        self._failures: dict[int, FailedElsewhere] = {}
        self._kill_after: float | None = None  # request_timeout + KILL_GRACE (start()); None: never kill
        self._kill_at: dict[int, float] = {}  # pid -> when (monotonic) to kill it if it still runs
        self._killed: set[int] = set()  # killed past their deadline, not yet reaped
        self._timer_armed = False  # one loop timer at a time watches every deadline

    def start(self, host: ProcessDispatcherHost) -> None:
        self._host = host
        # Children tell the parent why their request failed, one line each (atomic: < PIPE_BUF).
        self._failures_r, self._failures_w = os.pipe()
        os.set_blocking(self._failures_r, False)
        os.set_blocking(self._failures_w, False)
        timeout = host.limits.request_timeout
        self._kill_after = None if timeout is None else timeout + KILL_GRACE

    def submit(self, request: Any, client_address: Any) -> None:
        # request_timeout covers stream requests only (a datagram is a (payload, socket) tuple).
        kill_after = None if isinstance(request, tuple) else self._kill_after
        pid = fork()  # flushes stdio; the child starts with its signal plumbing reset
        if pid == 0:
            self._serve_in_child(request, client_address)
        # From here on the request is the child's: nothing may raise and lose it.
        self._host.release(request)
        self._children[pid] = (self._watch(pid), client_address)
        if kill_after is not None:
            self._kill_at[pid] = time.monotonic() + kill_after
            if not self._timer_armed:
                self._arm(kill_after)

    def _arm(self, delay: float) -> None:
        self._timer_armed = True
        self._host.call_later(delay, self._kill_overdue)

    def _kill_overdue(self) -> None:
        """Loop timer: kill the children past their deadline, then wait for the next deadline.

        Deadlines are checked by one timer at a time over at most ``max_children``
        children, so a server under load keeps no timer per request it served.
        """
        self._timer_armed = False
        next_due = self._kill_due()
        if next_due is not None:
            self._arm(next_due)

    def _kill_due(self) -> float | None:
        """Kill the children past their deadline; return the seconds until the next deadline, if any."""
        now = time.monotonic()
        for pid, when in list(self._kill_at.items()):
            if when <= now:
                del self._kill_at[pid]
                self._kill(pid)
        return max(0.0, min(self._kill_at.values()) - now) if self._kill_at else None

    def _kill(self, pid: int) -> None:
        """SIGKILL child ``pid``, still serving past its deadline; its reaping frees the slot."""
        if pid not in self._children or self._reap(pid):
            return  # it exited by itself just now: counted with its own status
        # Not reaped (checked just now), so the pid is still this child's: a zombie keeps it.
        # The pidfd, where there is one, names the process itself whatever becomes of the pid.
        pidfd, client_address = self._children[pid]
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return  # gone meanwhile: reaped with its own status
        except OSError as exc:  # EPERM: the handler changed its user id, say
            logger.error("cannot kill child %d serving %s past its request_timeout of %ss: %s",
                         pid, client_address, self._host.limits.request_timeout, exc)
            return
        self._killed.add(pid)
        logger.warning("killed child %d serving %s: its request ran longer than %ss (request_timeout) "
                       "and did not end when its connection was shut down",
                       pid, client_address, self._host.limits.request_timeout)

    def _watch(self, pid: int) -> int | None:
        """A pidfd in the loop's selector, so the child is reaped the moment it exits."""
        if _HAVE_PIDFD:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError as exc:  # out of descriptors, say: fall back to polling
                logger.warning("cannot watch child %d (%s); reaping it by polling", pid, exc)
            else:
                try:
                    self._host.add_reader(pidfd, functools.partial(self._on_exit, pid))
                    return pidfd
                except (OSError, ValueError) as exc:
                    os.close(pidfd)
                    logger.warning("cannot watch child %d (%s); reaping it by polling", pid, exc)
        self._unwatched += 1
        return None

    def _serve_in_child(self, request: Any, client_address: Any) -> None:
        status = CHILD_EXIT[Outcome.FAILED]  # unless serving returns
        try:
            self._host.after_fork()
            for pidfd, _ in self._children.values():  # the siblings are not ours to watch
                if pidfd is not None:
                    os.close(pidfd)
            self._children.clear()
            self._kill_at.clear()
            status = CHILD_EXIT[self._host.serve(request, client_address)]
            error = self._host.take_error()
            if error is not None:
                _tell_parent(self._failures_w, error)
        finally:
            flush_stdio()  # only the child's own output: the parent flushed before fork()
            os._exit(status)

    def saturated(self) -> bool:
        if self._unwatched:
            self.reap()
        return len(self._children) >= self._limit

    @property
    def children(self) -> frozenset[int]:
        """Process ids of the children still running (or not yet reaped)."""
        return frozenset(self._children)

    def _on_exit(self, pid: int) -> None:
        self._reap(pid)  # the loop calls this when the child's pidfd is readable

    def _reap(self, pid: int) -> bool:
        """Collect child ``pid`` if it has exited; True if it is gone."""
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # somebody else's waitpid(-1) collected it
            done, status = pid, None
        if not done:
            return False
        pidfd = self._children[pid][0]
        client_address = self._forget(pid)
        if pidfd is None:
            self._unwatched -= 1
        self._read_failures()  # written before the child exited
        killed = pid in self._killed
        self._killed.discard(pid)
        outcome = _outcome(pid, client_address, status, killed=killed)
        self._host.finished(outcome, self._failures.pop(pid, None), client_address)
        return True

    def _read_failures(self) -> None:
        data = b""
        while True:
            try:
                chunk = os.read(self._failures_r, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            data += chunk
        for line in data.decode(errors="replace").splitlines():
            try:
                pid, type_name, message = json.loads(line)
            except ValueError:
                continue  # cut at PIPE_RECORD: the request still counts as failed
            self._failures[int(pid)] = FailedElsewhere(str(type_name), str(message), int(pid))

    def reap(self) -> None:
        """Collect every child that has exited, without waiting."""
        for pid in list(self._children):
            self._reap(pid)

    def drain(self, timeout: float | None) -> bool:
        if not self.options.block_on_close:
            self.reap()
            return True  # by request: running children finish on their own
        deadline = deadline_after(timeout)
        while True:
            self.reap()
            if not self._children:
                return True
            left = remaining(deadline)
            if left == 0:
                return False
            # The loop (and its timers) no longer runs: a child past its deadline is killed here.
            next_kill = self._kill_due()
            if next_kill is not None:
                if not self._children:  # one was just reaped at its kill
                    continue
                left = next_kill if left is None else min(left, next_kill)
            pidfds = [fd for fd, _ in self._children.values() if fd is not None]
            if pidfds and not self._unwatched:
                poller = select.poll()  # unlike select(), no limit on descriptor numbers
                for fd in pidfds:
                    poller.register(fd, select.POLLIN)
                poller.poll(None if left is None else left * 1000)
            else:
                time.sleep(_POLL_INTERVAL if left is None else min(_POLL_INTERVAL, left))

    def close(self) -> None:
        if self._children and self.options.block_on_close:
            logger.warning("killing %d child process(es) still running after the drain", len(self._children))
            for pid in self._children:
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile; reaped below
                    os.kill(pid, signal.SIGKILL)
            for pid in self._children:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                self._failures.pop(pid, None)
                self._host.finished(Outcome.TIMED_OUT if pid in self._killed else Outcome.FAILED)
        for pid in list(self._children):  # with block_on_close=False: left running, unwatched
            self._forget(pid)
        self._killed.clear()
        self._unwatched = 0
        for fd in (self._failures_r, self._failures_w):
            if fd >= 0:
                os.close(fd)
        self._failures_r = self._failures_w = -1

    def abort(self) -> None:
        """Kill every child at once and reap it (safe in a signal handler: no lock, nothing raises)."""
        pids = list(self._children)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):  # reaped meanwhile by the drain
                os.waitpid(pid, 0)  # SIGKILL: at once

    def _forget(self, pid: int) -> Any:
        """Stop watching a child (reaped, or let go); return the client it served."""
        pidfd, client_address = self._children.pop(pid)
        self._kill_at.pop(pid, None)
        if pidfd is not None:
            self._host.remove_reader(pidfd)
            os.close(pidfd)
        return client_address


def _tell_parent(fd: int, error: BaseException) -> None:
    """In a child: one JSON line ``[pid, type, message]`` on the failures pipe (dropped if it is full)."""
    cls = type(error)
    type_name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    line = json.dumps([os.getpid(), type_name, str(error)[:1000]]) + "\n"  # no raw newline inside
    with contextlib.suppress(OSError):  # the parent stopped reading: it still counts the request as failed
        os.write(fd, line.encode()[:PIPE_RECORD])


def _outcome(pid: int, client_address: Any, status: int | None, *, killed: bool = False) -> Outcome:
    """The child's exit status (:data:`CHILD_EXIT`) says its request's Outcome; anything else is a crash, logged.

    ``killed``: the parent sent SIGKILL at the request's deadline (logged then); a
    death by exactly that signal is ``TIMED_OUT``.
    """
    if status is None:
        logger.warning("child %d serving %s was reaped by someone else; counted as failed", pid, client_address)
        return Outcome.FAILED
    code = os.waitstatus_to_exitcode(status)
    if killed and code == -signal.SIGKILL:
        return Outcome.TIMED_OUT
    outcome = _OUTCOME_OF_EXIT.get(code)
    if outcome is not None:
        return outcome  # a failure was logged by the child itself
    how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    logger.error("child %d serving %s %s", pid, client_address, how)
    return Outcome.FAILED


@hookimpl(trylast=True)
def sockwork_add_dispatchers() -> list[DispatcherEntry]:
    from sockwork.registry import DispatcherEntry  # the registry is loaded only when one is built

    return [
        DispatcherEntry(
            "fork", ForkDispatcher, ForkOptions,
            description="a child process per request, up to max_children at once",
            unavailable_reason=_UNAVAILABLE,
        )
    ]
