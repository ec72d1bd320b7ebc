"""The lifecycle of a Server: start, serve, shut down, drain, force, tear down; signals.

    created ──serve_forever()──► serving ──shutdown()──► stopped (may serve again)
       │                            │                       │
       │               first SIGTERM: lame duck (lame_duck s: serving, health says draining)
       │                            │                       │
       └──────────────close()──► refuse new connections ──► stop listening ──► drain (drain_timeout)
                                                                           ──► force ──► torn down

Rule 1: close() never tears down a loop still running: a loop held by an
inline handler tears itself down when it leaves.
Rule 2: the listener is closed before draining, so no client waits in a
backlog nobody will accept.
Rule 3: at the drain deadline the connections still served here are shut
down (a handler blocked on its client ends); what runs elsewhere is ended by
``dispatcher.close()``; what still runs after that is logged, never hidden.
Rule 4: closing the listener resets nothing the kernel completed: before it
closes, the transport stops new handshakes (``stop_new_connections``) and the
ones under way complete and are accepted (``handshakes_pending``), for at most
HANDSHAKE_GRACE; the backlog is taken last.
Rule 5: ``phase`` is what health checks report: ``serving``, ``lame duck``
(still serving, balancers asked to stop sending), ``draining`` (the listener
is closing or closed), ``stopped``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, final

from ._loop import Loop
from ._parts import LifecycleHooks
from ._requests import Requests
from ._side_listener import SideListener
from .deadlines import deadline_after, remaining
from .interfaces import Dispatcher, ServerHost, Transport, capability

__all__ = ["Lifecycle"]

logger = logging.getLogger("sockwork")

LOOP_EXIT_GRACE = 0.25
"""However short the drain timeout, how long close() lets the loop notice the stop."""

HANDSHAKE_GRACE = 1.0
"""When the listener closes, how long handshakes already under way get to complete and be accepted."""

FORCE_GRACE = 1.0
"""After the drain deadline, how long handlers get to notice their
connections were shut down before the Server gives up on them."""


@final
class Lifecycle:
    """Which phase a server is in, and the moves between phases (thread-safe).

    ``begin_serving``/``end_serving`` bracket ``serve_forever`` and
    ``handle_request``; ``shutdown``, ``close``, ``force_stop`` and ``abort``
    are the ways out; ``handle_signals`` maps SIGINT/SIGTERM onto them.
    """

    def __init__(
        self, server: Any, transport: Transport, dispatcher: Dispatcher, loop: Loop, requests: Requests,
        hooks: LifecycleHooks, drain_timeout: float | None, lame_duck: float = 0.0,
        side_listeners: Iterable[SideListener] = (),
    ) -> None:
        self.server = server  # what the lifecycle hooks receive
        self.transport = transport
        self.dispatcher = dispatcher
        self.loop = loop
        self.requests = requests
        self.hooks = hooks
        self.drain_timeout = drain_timeout
        self.lame_duck = lame_duck
        self.phase = "serving"
        self.handed_over = False  # an upgrade: the listener lives on in the new master
        self.side_listeners = tuple(side_listeners)  # answered by this loop, closed at teardown
        for listener in self.side_listeners:
            listener.attach(loop)
        self.started = False
        self.closed = False
        self._lock = threading.Lock()
        self._serving_thread: int | None = None
        self._not_serving = threading.Event()
        self._not_serving.set()
        self.serving = threading.Event()
        self._teardown_by_loop = False

    # ---- Serving ---------------------------------------------------------------------

    def begin_serving(self, host: ServerHost) -> None:
        with self._lock:
            if self.closed:
                raise RuntimeError("the server is closed")
            if self._serving_thread is not None:
                raise RuntimeError("the server is already serving in another thread")
            self._serving_thread = threading.get_ident()
            self._not_serving.clear()
            first = not self.started
            self.started = True
        if first:
            try:
                self.dispatcher.start(host)
            except BaseException:
                with self._lock:  # not serving after all: close() must not wait for a loop
                    self.started = False
                    self._serving_thread = None
                    self._not_serving.set()
                raise
            self._call_hook(self.hooks.started)
        self.serving.set()

    def end_serving(self) -> None:
        with self._lock:
            self.loop.request_stop(False)
            self._serving_thread = None
            self.serving.clear()
            self._not_serving.set()
            teardown = self._teardown_by_loop
        if teardown:
            self._teardown()

    @property
    def in_serving_thread(self) -> bool:
        return self._serving_thread == threading.get_ident()

    def shutdown(self) -> None:
        self.loop.request_stop()
        if not self.in_serving_thread:
            self._not_serving.wait()

    # ---- Closing ---------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            if self.in_serving_thread:
                raise RuntimeError("close() called from the serving thread; call shutdown() instead")
            self.closed = True
        deadline = deadline_after(self.drain_timeout)
        self.loop.request_stop()
        try:
            if not self._stop_and_drain(deadline):
                self.force_stop()
            self.dispatcher.close()
        finally:
            with self._lock:
                # A loop still held by an inline handler owns its selector until it
                # leaves; closing it under the loop would hang or crash it.
                loop_left = self._serving_thread is None
                self._teardown_by_loop = not loop_left
            if loop_left:
                self._teardown()

    def _stop_and_drain(self, deadline: float | None) -> bool:
        """Wait for the loop to stop, stop listening, drain; True if all finished in time."""
        # Leaving the loop takes microseconds unless an inline handler holds it,
        # so even a zero drain timeout waits a moment for that.
        left = remaining(deadline)
        if not self._not_serving.wait(None if left is None else max(left, LOOP_EXIT_GRACE)):
            return False  # an inline handler holds the loop; force_stop deals with it
        if self.phase in ("serving", "lame duck"):
            self.phase = "draining"
        if self.started and not self.loop.stopped_listening:
            if not self.handed_over:  # (handed over, the socket stays open: nothing to reset)
                self._refuse_new_connections(deadline)
            self.loop.take_backlog()  # closing the listener would reset them; the drain serves them
        self.loop.stop_listening()
        if self.handed_over:
            self.transport.after_fork()  # only this process's copy: the new master serves the socket (and its file)
        elif self.transport.kind == "stream":
            # (A datagram socket is also the reply channel of running requests.)
            self.transport.close()
        if self.started:
            self.loop.drain_waiting(deadline)  # what waiting clients sent is served; idle ones close
        return not self.started or self.dispatcher.drain(remaining(deadline))

    def hand_over(self) -> None:
        """An upgrade's new master serves the listener: stop as on a signal, without touching the socket.

        Our side listeners close at once (the new master answers on the same ports); the drain then
        closes only this process's copy of the listener, so nothing the kernel queued is reset.
        """
        self.handed_over = True
        for listener in self.side_listeners:
            listener.close()
        self._stop_serving("SIGUSR2")

    def _refuse_new_connections(self, deadline: float | None) -> None:
        """Stop new handshakes; accept those under way as they complete (Rule 4).

        The loop has stopped: the backlog is taken here (with a supervisor, its
        workers, still serving, take it).
        """
        stop_new = capability(self.transport, "stop_new_connections")
        if stop_new is None or not stop_new():
            return
        pending = capability(self.transport, "handshakes_pending")
        until = time.monotonic() + HANDSHAKE_GRACE
        if deadline is not None:
            until = min(until, deadline)
        while pending is not None:
            self.loop.take_backlog()
            if not pending() or time.monotonic() >= until:
                break
            time.sleep(0.005)

    def force_stop(self) -> None:
        """After the drain deadline: shut down the connections still served in this process.

        What runs elsewhere (forked children, workers) is ended by ``dispatcher.close()``.
        """
        running = self.requests.counters.active
        connections = self.requests.force()
        logger.warning("the %s drain deadline has passed with %d request(s) still running; %s",
                       format_seconds(self.drain_timeout), running,
                       f"shut down their {connections} connection(s)" if connections else "ending them")
        if self.in_serving_thread:
            return  # a signal handler in the loop's own thread: the held handler ends once this returns
        if connections and self._stop_and_drain(deadline_after(FORCE_GRACE)):
            return
        if self.requests.in_flight:
            logger.error("%d request(s) did not finish after the drain deadline; abandoning them",
                         len(self.requests.in_flight))

    def abort(self) -> None:
        """End at once: kill the dispatcher's child processes without waiting (safe in a signal handler)."""
        kill = capability(self.dispatcher, "abort")
        if kill is not None:
            kill()

    def _teardown(self) -> None:
        self.phase = "stopped"
        self.requests.stop()
        self.transport.close()
        for listener in self.side_listeners:
            listener.close()
        self.loop.close()
        if self.started:
            self._call_hook(self.hooks.stopped)

    def _call_hook(self, hook: Callable[..., Any] | None) -> None:
        if hook is None:
            return
        try:
            hook(server=self.server)
        except Exception:
            logger.exception("%s hook raised", getattr(hook, "name", "lifecycle"))

    # ---- Signals -------------------------------------------------------------------

    @contextlib.contextmanager
    def handle_signals(self, signals: tuple[int, ...]) -> Iterator[None]:
        """See :meth:`sockwork.Server.handle_signals`."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("handle_signals() must be used in the main thread (Python runs signal handlers there)")
        stopping = False

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal stopping
            if stopping:
                os.write(2, b"sockwork: second signal, exiting without waiting for running requests\n")
                try:
                    self.abort()  # child processes: killed, never orphaned
                finally:
                    os._exit(1)
            stopping = True
            name = signal.Signals(signum).name
            if self.lame_duck > 0 and self.phase == "serving":
                self.phase = "lame duck"
                logger.info("stopping on %s: lame duck for %s (serving; health checks say draining), then "
                            "draining (%s)", name, format_seconds(self.lame_duck), _up_to(self.drain_timeout))
                self.loop.call_later(self.lame_duck, lambda: self._stop_serving(name))
                self.loop.wake()  # the loop's next wait ends with the lame duck
                return
            self._stop_serving(name)

        def on_deadline(signum: int, frame: Any) -> None:
            self._force_if_loop_held()

        handled = (*signals, signal.SIGALRM)
        previous = {signum: signal.signal(signum, on_signal if signum != signal.SIGALRM else on_deadline)
                    for signum in handled}
        # A signal may be delivered to any thread; Python runs its handler in the
        # main thread only. Writing to the loop's wake-up socket makes the loop
        # notice at once instead of at the next request.
        previous_fd = signal.set_wakeup_fd(self.loop.wakeup_fd, warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.set_wakeup_fd(previous_fd)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop_serving(self, signal_name: str) -> None:
        """The graceful stop a signal asks for, after any lame duck: leave the loop, then drain."""
        waiting = self.loop.waiting.waiting if self.loop.waiting is not None else 0
        running = self._running_now() - waiting
        logger.info("stopping on %s: %s%s", signal_name,
                    f"draining {running} request(s) still running ({_up_to(self.drain_timeout)})"
                    if running else "no request is running",
                    f"; {waiting} connection(s) waiting in the loop" if waiting else "")
        self.shutdown()  # from the serving thread: returns at once, the loop ends next
        if self.drain_timeout is not None:
            # An inline handler holds the loop: hold it to the deadline too. A timer
            # signal rather than a thread: a process about to fork stays single-threaded.
            signal.setitimer(signal.ITIMER_REAL, max(self.drain_timeout, 0.001))

    def _running_now(self) -> int:
        """Requests running here and in a supervisor's workers, read without a lock: this runs in a
        signal handler, which may have interrupted the very thread that holds the counters' lock."""
        elsewhere = capability(self.dispatcher, "stats_elsewhere")
        return self.requests.counters.active + (elsewhere.active if elsewhere is not None else 0)

    def _force_if_loop_held(self) -> None:
        if self._serving_thread is not None:
            self.force_stop()


def _up_to(seconds: float | None) -> str:
    return "no deadline" if seconds is None else f"up to {format_seconds(seconds)}"


def format_seconds(seconds: float | None) -> str:
    """``10 s``, ``2.5 s`` or ``no deadline``: one way to show a deadline, whatever its source."""
    if seconds is None:
        return "no deadline"
    return f"{seconds:g} s"
