"""The ``procpool`` dispatcher: a fixed pool of worker processes.

The server's loop accepts as usual; ``submit`` hands the request to an idle
worker by passing its socket over a Unix socketpair (``SCM_RIGHTS``), with
the client address and, for datagrams, the payload. The worker serves it
with ``host.serve`` and answers with its Outcome, which the parent reports
with ``host.finished``; the parent watches each worker's
channel in the accept loop's selector (``host.add_reader``), so a worker is
idle again — or, if it died, logged and replaced — as soon as it says so.

Rule 1: the parent owns the workers' lifetime. Workers ignore SIGINT and
SIGTERM; ``drain`` waits for the busy ones, then closes their channels
(they exit on end-of-file); ``close`` kills whatever is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import socket
from typing import Any, final

import attrs

from sockwork import DispatcherEntry, FailedElsewhere, Outcome, ProcessDispatcherHost, hookimpl
from sockwork.deadlines import deadline_after, remaining
from sockwork.forking import flush_stdio, fork
from sockwork.validators import positive_int

__all__ = ["ProcPoolDispatcher", "ProcPoolOptions"]

logger = logging.getLogger("sockwork.procpool")

_MAX_MESSAGE = 1 << 17  # a datagram's payload plus its address


@final
@attrs.frozen(kw_only=True)
class ProcPoolOptions:
    """Options of the ``procpool`` dispatcher."""

    workers: int = attrs.field(default=2, validator=positive_int)
    """Worker processes, started with the server: the most requests served at once."""


@final
class _Worker:
    __slots__ = ("busy", "channel", "pid")

    def __init__(self, pid: int, channel: socket.socket) -> None:
        self.pid = pid
        self.channel = channel
        self.busy = False


@final
class ProcPoolDispatcher:
    """Serves requests in a fixed set of worker processes (see the module docstring)."""

    # A worker serves a keep-alive connection to its end: it never comes back to the server's loop.
    keeps_connections_elsewhere = True

    def __init__(self, options: ProcPoolOptions | None = None) -> None:
        self.options = options or ProcPoolOptions()
        self.concurrency = self.options.workers
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._stopping = False

    # ---- parent side ------------------------------------------------------------

    def start(self, host: ProcessDispatcherHost) -> None:  # serve, finished, readers; after_fork in workers
        self._host = host
        for _ in range(self.options.workers):
            self._spawn()

    def _spawn(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = fork()  # flushes stdio; the child starts without the parent's signal plumbing
        if pid == 0:
            parent_end.close()
            self._work(child_end)  # never returns
        child_end.close()
        worker = _Worker(pid, parent_end)
        self._workers.append(worker)
        self._idle.append(worker)
        self._host.add_reader(parent_end.fileno(), lambda: self._on_message(worker))

    def submit(self, request: Any, client_address: Any) -> None:
        worker = self._idle.pop()
        if isinstance(request, tuple):  # datagram: (payload, socket to answer on)
            payload, sock = request
            message = pickle.dumps(("datagram", client_address, payload))
        else:
            sock, message = request, pickle.dumps(("stream", client_address, None))
        try:
            socket.send_fds(worker.channel, [message], [sock.fileno()])
        except OSError:
            self._idle.append(worker)
            raise  # the Server closes the request, logs it and pauses accepting
        worker.busy = True
        self._host.release(request)  # the worker has its own copy now; it reports the outcome

    def saturated(self) -> bool:
        return not self._idle

    def _on_message(self, worker: _Worker) -> None:
        """Runs in the accept loop when a worker says something (or dies)."""
        if self._read_outcome(worker):
            self._idle.append(worker)
            return
        self._lost(worker)
        if not self._stopping:
            self._spawn()

    def _read_outcome(self, worker: _Worker) -> bool:
        """The worker's report on its request (its Outcome, and what failed); False if it died."""
        report = worker.channel.recv(_MAX_MESSAGE)
        if not report:
            return False
        worker.busy = False
        outcome, client_address, failure = pickle.loads(report)
        # A handler's failure happened in the worker: the hook hears of it here, in the server's process.
        error = None if failure is None else FailedElsewhere(failure[0], failure[1], worker.pid)
        self._host.finished(Outcome(outcome), error, client_address)
        return True

    def _lost(self, worker: _Worker) -> None:
        if worker.busy:
            self._host.finished(Outcome.FAILED)
        self._forget(worker)
        _, status = os.waitpid(worker.pid, 0)
        logger.error("procpool worker %d died (%s); replacing it", worker.pid, _describe(status))

    def _forget(self, worker: _Worker) -> None:
        self._host.remove_reader(worker.channel.fileno())
        worker.channel.close()
        self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)

    def drain(self, timeout: float | None) -> bool:
        self._stopping = True
        deadline = deadline_after(timeout)
        while busy := [w for w in self._workers if w not in self._idle]:
            left = remaining(deadline)
            if left == 0:
                return False
            readable, _, _ = select.select([w.channel for w in busy], [], [], left)
            for worker in busy:
                if worker.channel in readable:
                    if self._read_outcome(worker):
                        self._idle.append(worker)
                    else:
                        self._lost(worker)
        for worker in list(self._workers):  # all idle: end of file tells them to exit
            self._forget(worker)
            os.waitpid(worker.pid, 0)
        return True

    def close(self) -> None:
        if self._workers:
            logger.warning("killing %d procpool worker(s) still busy after the drain", len(self._workers))
        for worker in list(self._workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            self._forget(worker)
            os.waitpid(worker.pid, 0)
            if worker.busy:
                self._host.finished(Outcome.FAILED)

    # ---- worker side --------------------------------------------------------------

    def _work(self, channel: socket.socket) -> None:
        status = 1
        try:
            self._host.after_fork()
            for other in self._workers:  # siblings' channels are the parent's business
                other.channel.close()
            while True:
                message, fds, _, _ = socket.recv_fds(channel, _MAX_MESSAGE, 1)
                if not message:
                    break  # the parent closed our channel: time to go
                kind, client_address, payload = pickle.loads(message)
                sock = socket.socket(fileno=fds[0])
                if kind == "datagram":
                    try:
                        outcome = self._host.serve((payload, sock), client_address)
                    finally:
                        sock.close()  # our copy of the server's datagram socket
                else:
                    outcome = self._host.serve(sock, client_address)  # shuts down and closes it
                error = self._host.take_error()  # the worker does not call the hook itself
                failure = None if error is None else (type(error).__qualname__, str(error)[:1000])
                channel.send(pickle.dumps((int(outcome), client_address, failure)))
            status = 0
        finally:
            flush_stdio()
            os._exit(status)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


@hookimpl
def sockwork_add_dispatchers() -> list[DispatcherEntry]:
    reason = None if hasattr(os, "fork") and hasattr(socket, "send_fds") else "needs fork() and SCM_RIGHTS"
    return [
        DispatcherEntry(
            "procpool", ProcPoolDispatcher, ProcPoolOptions,
            description="a fixed pool of worker processes; sockets passed over Unix sockets",
            unavailable_reason=reason,
        )
    ]
