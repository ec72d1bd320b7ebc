"""The three roles a Server is assembled from, as documented Protocols.

A *request* is what a Transport hands out: for a stream transport the
connected socket, for a datagram transport the tuple ``(payload, socket)``
(the socket to answer on), exactly as the standard library's socketserver
passes them, so classic handler classes work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["Dispatcher", "DispatcherHost", "HandlerFactory", "Transport"]

Request = Any
"""A connected socket (stream) or ``(payload, socket)`` (datagram)."""

Address = Any
"""A socket address as the socket module reports it: ``(host, port)``, a path, ..."""


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
    """

    kind: Literal["stream", "datagram"]
    family: int
    # Optional: ``accept_batch``, the most requests the loop takes per wake-up
    # (default 16); a transport whose accept() may block sets it to 1.
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


class DispatcherHost(Protocol):
    """What a Dispatcher may ask of the Server that started it.

    ``serve`` runs the handler on one request, reports its errors, closes the
    request, counts it, and returns its :class:`~sockwork.Outcome`
    (``COMPLETED`` is 0, so use its value as a child's exit status). It never
    raises an ``Exception``. ``release`` is for dispatchers that serve a
    request in another process: it drops the local handle without ending the
    request, which still counts as active until the dispatcher reports it
    with ``finished(outcome)``.
    ``after_fork`` must be called first thing in a forked child. ``wake`` asks
    the accept loop to look at :meth:`Dispatcher.saturated` again; call it when
    capacity frees up after ``saturated()`` returned True. ``add_reader`` and
    ``remove_reader`` watch a file descriptor from the accept loop's selector;
    the callback runs in the thread that runs the loop.
    """

    def serve(self, request: Request, client_address: Address) -> Any: ...

    def release(self, request: Request) -> None: ...

    def finished(self, outcome: Any) -> None: ...

    def after_fork(self) -> None: ...

    def wake(self) -> None: ...

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...

    def run_worker(self, dispatcher: Any, max_requests: int | None = None) -> Any: ...


@runtime_checkable
class Dispatcher(Protocol):
    """Decides where and when a handler runs (what socketserver's mix-ins did).

    ``start(host)`` is called once before the first ``submit``. ``submit``
    runs ``host.serve(request, client_address)`` exactly once, now or later;
    it is called only from the accept loop's thread and only while
    ``saturated()`` is False. ``saturated()`` must be cheap: the loop asks it
    before every accept and stops accepting while it is True (backpressure).

    ``drain(timeout)`` stops taking work and waits up to ``timeout`` seconds
    (None: forever) for running work; it returns True when nothing is left
    running and may be called again. ``close()`` releases everything the
    dispatcher owns; whatever still runs after ``drain`` is ended as well as the
    strategy allows (child processes are killed; threads cannot be).

    ``concurrency`` is how many requests may run at once: 1 for a serial
    strategy, None for no fixed limit. The conformance suite holds every
    dispatcher to it.
    """

    concurrency: int | None

    def start(self, host: DispatcherHost) -> None: ...

    def submit(self, request: Request, client_address: Address) -> None: ...

    def saturated(self) -> bool: ...

    def drain(self, timeout: float | None) -> bool: ...

    def close(self) -> None: ...


class HandlerFactory(Protocol):
    """Serves one request; classic ``BaseRequestHandler`` classes qualify.

    Called as ``factory(request, client_address, server)``; the return value
    is ignored. An exception is logged and reported to the
    ``sockwork_request_failed`` hook; the server keeps serving.
    """

    def __call__(self, request: Request, client_address: Address, server: Any) -> object: ...
