"""The three roles a Server is assembled from, as documented Protocols.

A *request* is what a Transport hands out: for a stream transport the
connected socket, for a datagram transport the tuple ``(payload, socket)``
(the socket to answer on), exactly as the standard library's socketserver
passes them, so classic handler classes work unchanged.

Every member the Server uses on a part is declared here. Members marked
*optional* may be left out; :func:`capability` reads them, with the default
stated in :data:`OPTIONAL_CAPABILITIES` — the only place a default lives.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._server import Server
    from .limits import Limits, Outcome, ServerStats
    from .observe import Observer

__all__ = [
    "ACCEPT_CAPACITY_ERRNOS",
    "ACCEPT_FATAL_ERRNOS",
    "OPTIONAL_CAPABILITIES",
    "Dispatcher",
    "DispatcherHost",
    "HandlerFactory",
    "LoopHost",
    "ProcessDispatcherHost",
    "ServerHost",
    "Supervisor",
    "SupervisorHost",
    "Transport",
    "capability",
]

Request = Any
"""A connected socket (stream) or ``(payload, socket)`` (datagram)."""

Address = Any
"""A socket address as the socket module reports it: ``(host, port)``, a path, ..."""

ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""accept() errors that mean "out of resources right now": the loop backs off and retries."""

ACCEPT_FATAL_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK, errno.EINVAL})
"""accept() errors that mean the listener itself is gone or unusable: retrying cannot help."""


@runtime_checkable
class Transport(Protocol):
    """Where requests come from: owns the listening (or datagram) socket.

    Lifecycle: ``open()`` binds and activates; it either succeeds or leaves no
    socket open and raises :class:`~sockwork.errors.BindError`. ``close()`` is
    idempotent and removes whatever ``open()`` created (a Unix socket file).

    ``accept()`` never blocks: it returns ``(request, client_address)``, or
    None when nothing is pending or the attempt was aborted by the peer
    (ECONNABORTED and kin). "Out of resources" errors (EMFILE, ENFILE,
    ENOBUFS, ENOMEM) propagate as OSError; the Server backs off on them.
    Errors that cannot heal (EBADF, ENOTSOCK, EINVAL: the listener is gone)
    end ``serve_forever`` with that error.

    Optional capabilities (see :data:`OPTIONAL_CAPABILITIES`): ``name``,
    ``accept_batch``, ``oversized``, ``stages``, ``reload``, ``stop_new_connections``,
    ``handshakes_pending``.
    """

    kind: Literal["stream", "datagram"]
    """What requests look like: connected sockets, or ``(payload, socket)``."""
    family: int
    """The socket family of the listening socket (``socket.AF_INET`` ...)."""

    @property
    def address(self) -> Address:
        """The bound address; for port 0 the port the OS picked."""

    def open(self) -> None: ...

    def fileno(self) -> int: ...

    def accept(self) -> tuple[Request, Address] | None: ...

    def close_request(self, request: Request) -> None:
        """End a request after its handler returned (stream: shut down and close)."""

    def release_request(self, request: Request) -> None:
        """Drop this process's handle on a request served elsewhere (after fork)."""

    def after_fork(self) -> None:
        """In a forked child: close what the child must not hold (the listener)."""

    def close(self) -> None: ...


class TurnSource(Protocol):
    """Where connections wait between turns (``host.turns``), for a dispatcher that ``takes_turns``.

    Its workers call ``poll(timeout, 1)`` (epoll's: a list of ``(fd, events)``; -1 waits for ever)
    and give each ``fd`` to ``host.take_turn(fd)``, which serves that connection's turn in the
    calling thread and re-arms it (leader/followers: no hand-off, no lock). ``watch(fd)`` adds a
    descriptor of the dispatcher's own (level-triggered, such as an eventfd that wakes its workers
    for ``submit``ted work or to stop); ``remove(fd)`` drops it. Any fd ``poll`` returns that the
    dispatcher did not watch itself is a turn.
    """

    poll: Callable[[float, int], list[tuple[int, int]]]

    def watch(self, fd: int) -> None: ...

    def remove(self, fd: int) -> None: ...


class LoopHost(Protocol):
    """The server's loop, as every host role offers it.

    ``wake()`` asks the loop to look at :meth:`Dispatcher.saturated` again; call
    it when capacity frees up after ``saturated()`` returned True.
    ``add_reader(fd, callback)`` and ``remove_reader(fd)`` watch a file
    descriptor from the loop's selector; the callback runs in the loop's
    thread. ``call_later(delay, callback)`` runs ``callback()`` in the loop's
    thread after ``delay`` seconds (call it from the loop's thread: ``start``,
    ``submit`` or a callback). ``limits`` is the server's
    :class:`~sockwork.Limits`.
    """

    def wake(self) -> None: ...

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> None: ...

    @property
    def limits(self) -> Limits:
        """The server's :class:`~sockwork.Limits` (a dispatcher may enforce ``request_timeout`` itself)."""


class DispatcherHost(LoopHost, Protocol):
    """What a Dispatcher may ask of the Server that started it: the loop, and serving requests.

    ``serve(request, client_address)`` runs the handler on one request,
    reports its errors, closes the request, counts it, and returns its
    :class:`~sockwork.Outcome`. It never raises an ``Exception``.

    ``release(request)`` is for dispatchers that serve a request in another
    process: it drops the local handle without ending the request, which
    still counts as active until the dispatcher reports it with
    ``finished(outcome, error, client_address)``; ``error`` (optional)
    describes a failure that happened elsewhere, for the
    ``sockwork_request_failed`` hook.
    """

    def serve(self, request: Request, client_address: Address) -> Outcome: ...

    def release(self, request: Request) -> None: ...

    def finished(self, outcome: Outcome, error: BaseException | None = None, client_address: Address = None) -> None:
        ...

    @property
    def handler(self) -> HandlerFactory:
        """The server's handler: a dispatcher that ``runs_async`` awaits it its own way
        (:class:`sockwork.aio.AsyncHandler`) instead of calling ``serve``."""

    @property
    def turns(self) -> TurnSource | None:
        """For a dispatcher that ``takes_turns``: the poller where connections wait between turns, or None."""

    def take_turn(self, fd: int) -> None:
        """Serve the turn of the connection whose ``fd`` ``turns.poll`` gave this thread, and re-arm it."""

    def admit(self, request: Request) -> bool:
        """For a dispatcher that took the listener (``take_listener``): count a connection it accepted;
        False if it was closed at once (over a ``max_connections`` cap with ``over_limit = "close"``)."""

    def at_capacity(self) -> bool:
        """For a dispatcher that took the listener: at the ``max_connections`` cap, stop accepting."""

    @property
    def on_error(self) -> Callable[[Request, Address, Exception], object] | None:
        """The server's ``on_error`` (None if it has none), for a dispatcher that runs handlers without
        ``serve`` (``runs_async``): called inside its ``except`` block instead of logging the exception."""

    @property
    def log_access(self) -> Callable[[Request, Address, Outcome, float], None] | None:
        """Writes one access-log line ``(request, client_address, outcome, seconds)`` and gives the request's
        bytes to the metrics, when the server's ``access_log`` or ``metrics`` is on (None when both are off),
        for a dispatcher that runs handlers without ``serve``; call it before the request's socket closes
        (the kernel's byte counts are read from it)."""

    @property
    def observer(self) -> Observer | None:
        """The server's :class:`sockwork.observe.Observer` (None while metrics are off), for a dispatcher that
        runs handlers without ``serve``: ``began = observer.begin_turn(None)`` as a handler starts,
        ``observer.end_turn(began)`` when it ends."""


class ProcessDispatcherHost(DispatcherHost, Protocol):
    """A :class:`DispatcherHost` for a dispatcher that forks a child per request (``fork``).

    ``after_fork()`` must be called first thing in a forked child that serves
    one request; from then on a handler's failure is not reported to the
    ``sockwork_request_failed`` hook in the child: ``take_error()`` (after
    ``serve``) returns it, for the dispatcher to send to the parent, which
    reports it with ``finished(outcome, error, client_address)`` — e.g. as a
    :class:`~sockwork.errors.FailedElsewhere`.
    """

    def after_fork(self) -> None: ...

    def take_error(self) -> BaseException | None: ...


class SupervisorHost(LoopHost, Protocol):
    """What a :class:`Supervisor` asks of the Server that started it: the loop, to watch its
    workers, and in each worker process a server of its own.

    ``worker_server(dispatcher, service_actions=None, accept_batch=None)``,
    first thing in a worker process forked with :func:`sockwork.forking.fork`:
    drops the parent's loop and returns a new, complete Server on the inherited
    listener, serving with ``dispatcher`` (not yet serving; ``close()`` closes
    only this process's copy of the listener). ``service_actions`` runs after
    each round of its loop; ``accept_batch`` caps accepts per round (1: a
    check after each accept). In a worker only the ``sockwork_request_failed``
    hook is called; started, stopped and the counters hook are the
    supervising server's. :func:`sockwork.strategies.prefork.run_worker` is a
    complete worker body built on it.
    """

    def worker_server(
        self, dispatcher: Dispatcher, service_actions: Callable[[], object] | None = None,
        accept_batch: int | None = None,
    ) -> Server: ...


class ServerHost(ProcessDispatcherHost, SupervisorHost, Protocol):
    """Every host role: what the Server passes to ``start(host)``. A dispatcher annotates
    the role it uses (:class:`DispatcherHost`, :class:`ProcessDispatcherHost`,
    :class:`SupervisorHost`), and a test may hand it an object of that role alone."""


@runtime_checkable
class Dispatcher(Protocol):
    """Decides where and when a handler runs (what socketserver's mix-ins did).

    ``start(host)`` is called once before the first ``submit``. ``submit``
    runs ``host.serve(request, client_address)`` exactly once, now or later;
    it is called only from the loop's thread and only while ``saturated()``
    is False. ``saturated()`` must be cheap: the loop asks it before every
    accept and stops accepting while it is True (backpressure); a dispatcher
    that returns True must call ``host.wake()`` when capacity frees up.

    ``drain(timeout)`` stops taking work and waits up to ``timeout`` seconds
    (None: forever) for running work; it returns True when nothing is left
    running and may be called again. ``close()`` releases everything the
    dispatcher owns; whatever still runs after ``drain`` is ended as well as the
    strategy allows (child processes are killed; threads cannot be).

    ``concurrency`` is how many requests may run at once: 1 for a serial
    strategy, None for no fixed limit. The conformance suite holds every
    dispatcher to it.

    Optional capabilities (see :data:`OPTIONAL_CAPABILITIES`):
    ``accepts_itself`` and ``stats_elsewhere`` (supervisors), ``abort()``
    (dispatchers with child processes), ``keeps_connections_elsewhere``, ``runs_async`` (event loops: the
    handler is async, awaited by the dispatcher, which reports each request
    with ``host.release`` and ``host.finished`` instead of ``host.serve``).
    """

    concurrency: int | None

    def start(self, host: ServerHost) -> None: ...

    def submit(self, request: Request, client_address: Address) -> None: ...

    def saturated(self) -> bool: ...

    def drain(self, timeout: float | None) -> bool: ...

    def close(self) -> None: ...


@runtime_checkable
class Supervisor(Dispatcher, Protocol):
    """A dispatcher whose worker processes accept by themselves (``prefork``).

    The loop of the server that starts it never accepts: it only watches the
    workers (through ``host.add_reader``); its ``start`` gets a
    :class:`SupervisorHost`, and each worker serves with
    ``host.worker_server(inner_dispatcher, ...)``. ``submit`` is never called
    and ``saturated()`` is never asked. ``stats_elsewhere`` is what the
    workers reported; ``server.stats`` adds it to the parent's own counters.
    """

    accepts_itself: Literal[True]

    @property
    def stats_elsewhere(self) -> ServerStats: ...

    @property
    def worker_pids(self) -> frozenset[int]: ...


class HandlerFactory(Protocol):
    """Serves one request; classic ``BaseRequestHandler`` classes qualify.

    Called as ``factory(request, client_address, server)``; the return value
    is ignored. An exception is logged and reported to the
    ``sockwork_request_failed`` hook; the server keeps serving.

    Optional capability ``sockwork_kind``: ``"stream"`` or ``"datagram"`` for
    a handler that serves only that kind of request (set by
    :func:`~sockwork.stream_handler` and :func:`~sockwork.datagram_handler`);
    assembling it with a transport of the other kind fails. Optional capability
    ``sockwork_async``: True for an async handler (:mod:`sockwork.aio`), which
    only a dispatcher that ``runs_async`` serves. The others
    (``sockwork_speaks_first``, ``sockwork_takes_connection``,
    ``sockwork_framing``, ``sockwork_answer``) are in :data:`OPTIONAL_CAPABILITIES`.
    """

    def __call__(self, request: Request, client_address: Address, server: Any) -> object: ...


OPTIONAL_CAPABILITIES: dict[str, tuple[object, str]] = {
    # Transport
    "name": (None, "Transport: the URL scheme of the bound address (server.url); "
                   "default: the name the transport was registered under"),
    "accept_batch": (16, "Transport: most requests the loop accepts per wake-up; "
                         "1 for a transport whose accept() may block"),
    "oversized": (0, "Transport: datagrams dropped for being too large (a live counter, in server.stats)"),
    "stages": ((), "Transport: ConnectionStage objects the loop runs, in order, on each accepted stream "
                   "connection before dispatch (a PROXY header, a TLS handshake)"),
    "reload": (None, "Transport: a method that loads again what the transport read from files (tls: certificate, "
                     "key, client CAs) for new connections, dropping none; SIGHUP under sockwork serve calls it"),
    "adopt": (None, "Transport: a method adopt(fd): open() then takes over fd, a bound (stream: listening) socket "
                    "of the configured address inherited from the master an upgrade in place (SIGUSR2) replaces, "
                    "instead of binding"),
    "stop_new_connections": (None, "Transport: a method called once before the listener closes for good: the "
                                   "kernel completes no new connection from then on (tcp: a filter drops SYNs; "
                                   "unix: the socket file is removed), so the close resets none; returns False "
                                   "if it could not"),
    "handshakes_pending": (None, "Transport: a method: how many handshakes are under way on the listener, which the "
                                 "server accepts as they complete before it closes the listener"),
    # Dispatcher
    "accepts_itself": (False, "Dispatcher: True for a Supervisor, whose workers accept; "
                              "the loop then never listens"),
    "stats_elsewhere": (None, "Dispatcher: counters of requests served in other processes (a ServerStats)"),
    "takes_turns": (False, "Dispatcher: True if its workers wait on host.turns themselves (leader/followers) and "
                           "serve a waiting connection's turn with host.take_turn(fd), with no hand-off from the "
                           "loop; host.turns is None when no connection waits in the loop (then submit() as usual)"),
    "take_listener": (None, "Dispatcher: a method take_listener(transport) -> bool, called once at assembly: True "
                            "if it accepts from that transport itself, on its own event loop (asyncio); the "
                            "server's loop then never listens, and calls its stop_accepting() at shutdown, before "
                            "the listener closes. Each connection it accepts goes through host.admit(request)"),
    "worker_readings": (None, "Dispatcher: a supervisor's figures per worker slot (sockwork.observe.WorkerReading "
                              "objects, from its workers' reports), for the metrics endpoint; None: this process's"),
    "runs_async": (False, "Dispatcher: True if it serves async handlers (sockwork_async) on an event loop instead "
                          "of blocking ones (asyncio); a supervisor answers for its inner dispatcher"),
    "keeps_connections_elsewhere": (False, "Dispatcher: True if it serves each request in another process, "
                                           "which serves a KEEP_ALIVE connection to its end (fork): such a "
                                           "connection then holds that worker between requests"),
    "resize": (None, "Dispatcher: a method resize(delta) -> str: a supervisor starts delta more workers or retires "
                     "-delta (at least one stays), closing no listener; SIGTTIN/SIGTTOU under sockwork serve call it"),
    "replace_workers": (None, "Dispatcher: a method replace_workers(new) -> str: a supervisor starts workers with "
                              "the options of new (one of its own kind, built from a reloaded config, never "
                              "started) and the server's new handler, then retires the old ones (SIGHUP)"),
    "abort": (None, "Dispatcher: a method that kills its child processes at once, without waiting or locks "
                    "(a second SIGINT/SIGTERM under Server.handle_signals calls it, then the process exits)"),
    # Handler factory
    "sockwork_kind": (None, "Handler: 'stream' or 'datagram' if it serves only that kind of request"),
    "sockwork_async": (False, "Handler: True for an async handler (sockwork.aio): only a dispatcher that "
                              "runs_async can serve it, and such a dispatcher serves nothing else"),
    "sockwork_speaks_first": ("server", "Handler: 'client' if the client speaks first: the connection then waits "
                                        "in the loop (no worker) until it has bytes to read; 'server' (the default "
                                        "for handlers that do not say: classic classes) dispatches it at accept"),
    "sockwork_takes_connection": (False, "Handler: True if it wants the loop's sockwork.Connection record (kept "
                                         "across KEEP_ALIVE turns) instead of the bare socket (stream_handler's)"),
    "sockwork_framing": (None, "Handler: a message handler's Framing; the loop then reads and splits messages "
                               "and calls sockwork_answer(messages, conn) -> replies (see sockwork.messages)"),
    "sockwork_answer": (None, "Handler: with sockwork_framing, the method a worker calls for one turn: "
                              "sockwork_answer(messages, conn) -> framed replies, in order"),
    # Connection stage (a transport's stages)
    "replaces_socket": (False, "ConnectionStage: True if it replaces conn.socket with an object that carries a "
                               "session (tls: an ssl.SSLSocket); assembly then refuses dispatchers that serve the "
                               "bare descriptor (runs_async: asyncio)"),
}
"""Every optional member of a part: ``name -> (default, what it means)``."""


def capability(part: object, name: str) -> Any:
    """The optional member ``name`` of ``part``, or its documented default."""
    return getattr(part, name, OPTIONAL_CAPABILITIES[name][0])
