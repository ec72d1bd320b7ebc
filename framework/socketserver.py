"""The standard library's socketserver, built on sockwork: change one import line.

    from sockwork import socketserver        # was: import socketserver

Every class of the standard module is here with the same behaviour and the
same extension surface: subclass, override ``server_bind``, ``get_request``,
``verify_request``, ``process_request``, ``finish_request``,
``handle_error``, ``service_actions`` ..., set ``timeout``,
``allow_reuse_address``, ``daemon_threads``, ``max_children`` ... as before.

Underneath, a sockwork :class:`~sockwork.Server` runs the loop: your
server's own methods are its Transport (``get_request``, ``verify_request``,
``shutdown_request``) and its Dispatcher (``process_request``, which by
default hands the request to the dispatcher the mix-in selects: ``inline``,
``thread`` or ``fork``). What is better than the standard module:

- ``shutdown()`` returns as soon as the loop notices, not after up to
  ``poll_interval`` seconds; ``service_actions`` still runs every
  ``poll_interval`` when you override it;
- an idle loop does not wake up every ``poll_interval`` unless you override
  ``service_actions``;
- forked children are reaped the moment they exit, never left as zombies
  until the next request, and never by ``waitpid(-1)`` (which would steal
  other code's children);
- running out of descriptors (EMFILE) pauses accepting instead of spinning;
- TCP servers' connections have TCP_NODELAY, so a reply written in pieces
  does not wait for the client's delayed ACK (40 ms per keep-alive response
  of ``http.server``); ``sockwork_nodelay = False`` gives Nagle's back;
- the listen backlog (``request_queue_size``) is 1024, not 5.

This module neither imports nor subclasses the standard ``socketserver``.
It uses absolute imports only, so that compatibility tests can execute it
under the name ``socketserver`` itself.
"""

import importlib
import io
import os
import socket
import sys
import threading
import time
import traceback
import typing as _typing

from sockwork.interfaces import ACCEPT_CAPACITY_ERRNOS as _ACCEPT_CAPACITY_ERRNOS


def _load_core():
    """Import the core this module serves with: at the first server's construction, not at import.

    ``import sockwork.socketserver`` then costs about what the standard module
    does; a server built while descriptors are plentiful has everything it
    needs loaded before it serves (no import at serve time).
    """
    strategies = ("inline", "thread", "fork") if hasattr(os, "fork") else ("inline", "thread")
    for name in strategies:
        importlib.import_module(f"sockwork.strategies.{name}")
    importlib.import_module("sockwork.transports._socket")  # accepter(), for the fast path
    return importlib.import_module("sockwork._server")

__version__ = "0.4"

__all__ = [
    "BaseRequestHandler",
    "BaseServer",
    "DatagramRequestHandler",
    "StreamRequestHandler",
    "TCPServer",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "UDPServer",
]
if hasattr(os, "fork"):
    __all__.extend(["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer"])
if hasattr(socket, "AF_UNIX"):
    __all__.extend([
        "ThreadingUnixDatagramServer",
        "ThreadingUnixStreamServer",
        "UnixDatagramServer",
        "UnixStreamServer",
    ])
    if hasattr(os, "fork"):
        __all__.extend(["ForkingUnixDatagramServer", "ForkingUnixStreamServer"])

# ---- How the core sees a classic server ---------------------------------------

class _ClassicTransport:
    """The Transport of a classic server: its own overridable methods.

    Where a class overrides none of them, the same steps run without the
    method layers (the fast path): same system calls, fewer Python calls.
    """

    accept_batch = 1  # the classic listening socket blocks: one accept per readiness
    kind: _typing.Literal["stream", "datagram"]
    # The datagram fast path reads without blocking (the socket itself stays blocking, as handlers
    # expect): the datagrams already waiting are taken in one round of the loop, up to this many.
    # With 8 datagrams outstanding a round serves several: one selector wait and one round of the
    # loop's bookkeeping fewer per datagram (callgrind: 158k -> 146k instructions per datagram).
    datagram_batch = 16
    _listener = None  # the listening socket _accept_on was made for (the fast path)

    def __init__(self, server):
        self._server = server
        datagram = getattr(server, "socket_type", socket.SOCK_STREAM) == socket.SOCK_DGRAM
        self.kind = "datagram" if datagram else "stream"
        self.family = getattr(server, "address_family", socket.AF_INET)
        unix = self.family == getattr(socket, "AF_UNIX", None)
        self.name = ("unix-dgram" if datagram else "unix") if unix else ("udp" if datagram else "tcp")
        cls = type(server)
        if cls.verify_request is BaseServer.verify_request:
            if cls.get_request is UDPServer.get_request:
                self.accept = self._receive_datagram  # type: ignore[method-assign]  # the fast path, per instance
                if _DONTWAIT and cls.service_actions in _DEFAULT_SERVICE_ACTIONS:
                    self.accept_batch = self.datagram_batch  # an overridden service_actions runs per request
            elif cls.get_request is TCPServer.get_request:
                self.accept = self._accept_connection  # type: ignore[method-assign]  # the fast path, per instance
        if cls.close_request is UDPServer.close_request and cls.shutdown_request is UDPServer.shutdown_request:
            self.close_request = self.release_request = _nothing  # type: ignore[method-assign]  # the fast path, per instance
        elif cls.close_request is TCPServer.close_request and cls.shutdown_request is TCPServer.shutdown_request:
            self.close_request = _shutdown_and_close  # type: ignore[method-assign]  # the fast path, per instance
            self.release_request = socket.socket.close  # type: ignore[method-assign]  # the fast path, per instance

    def _accept_connection(self):
        listener = self._server.socket
        if listener is not self._listener:  # the first time, or a program replaced server.socket
            self._listener = listener
            self._accept_on = _accepter()(listener)
        try:
            return self._accept_on()
        except OSError as exc:
            if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                raise
            return None

    def _receive_datagram(self):
        server = self._server
        try:
            data, client_address = server.socket.recvfrom(server.max_packet_size, _DONTWAIT)
        except OSError as exc:  # BlockingIOError included: nothing (more) waiting
            if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                raise
            return None
        return (data, server.socket), client_address

    @property
    def address(self):
        return self._server.server_address

    def open(self):
        pass  # the classic constructor has bound and activated already

    def fileno(self):
        return self._server.fileno()

    def accept(self):
        server = self._server
        try:
            request, client_address = server.get_request()
        except OSError as exc:
            if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                raise  # let the loop back off instead of spinning, unlike socketserver
            return None  # socketserver ignores failed get_request() too
        if server.verify_request(request, client_address):
            return request, client_address
        server.shutdown_request(request)
        return None

    def close_request(self, request):
        self._server.shutdown_request(request)

    def release_request(self, request):
        self._server.close_request(request)  # the forking parent's copy only

    def after_fork(self):
        pass  # classic children keep the listening socket: handlers may use server.socket

    def close(self):
        sock = getattr(self._server, "socket", None)
        if sock is not None:
            sock.close()


class _ClassicDispatch:
    """The Dispatcher of a classic server: its ``process_request``.

    Not overridden, ``process_request`` is skipped: requests go straight to
    the dispatcher the mix-in selected. ``ThreadingMixIn.process_request``
    and ``ForkingMixIn.process_request`` are ``hand_off`` to that dispatcher,
    so an override that calls them (or ``super()``) takes the same path; a
    request an override serves by itself is counted as served.
    """

    def __init__(self, server, inner):
        self._server = server
        self._inner = inner
        self._handed_off = False
        self.settle = _nothing  # the core server's settle(request), set once the core is built
        self.concurrency = inner.concurrency
        self.saturated = inner.saturated
        self.drain = inner.drain
        self.close = inner.close

    def start(self, host):
        self._host = host
        body = getattr(type(self._server), "process_request_thread", None)
        if body is not None and body is not ThreadingMixIn.process_request_thread:
            host = _ThreadBody(host, self._server, self.settle)  # an override of the thread's body runs
        self._inner.start(host)
        if type(self._server).process_request in _DEFAULT_PROCESS_REQUEST:
            # Nothing to honour: straight to the mix-in's dispatcher (bound after its
            # start(), which may replace its submit, as inline's does).
            self.submit = self._inner.submit  # type: ignore[method-assign]  # the fast path, per instance

    def submit(self, request, client_address):
        self._handed_off = False
        self._server.process_request(request, client_address)
        if not self._handed_off:
            self.settle(request)

    def hand_off(self, request, client_address):
        self._handed_off = True
        self._inner.submit(request, client_address)


def _accepter():
    """sockwork.transports' accept without socket.accept()'s enum conversions (loaded by _load_core)."""
    return sys.modules["sockwork.transports._socket"].accepter


_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)  # 0 where it is missing: a plain recvfrom, one per round


def _nothing(request):
    pass


def _shutdown_and_close(request):
    """TCPServer.shutdown_request, for classes that override neither it nor close_request."""
    try:  # noqa: SIM105 -- per request: cheaper than contextlib.suppress
        request.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # some platforms may raise ENOTCONN here
    request.close()


class _ThreadBody:
    """A DispatcherHost whose ``serve`` is the server's own ``process_request_thread``."""

    def __init__(self, host, server, settle):
        self._host = host
        self._server = server
        self._settle = settle

    def __getattr__(self, name):
        return getattr(self._host, name)

    def serve(self, request, client_address):
        try:
            self._server.process_request_thread(request, client_address)
        finally:
            # Counted already if the override called super(); if it served the
            # request all by itself, count it now.
            self._settle(request)


# ---- Servers ------------------------------------------------------------------------

class BaseServer:
    """Base class for server classes.

    Methods for the caller: __init__(server_address, RequestHandlerClass),
    serve_forever(poll_interval=0.5), shutdown(), handle_request(),
    server_close(), fileno().

    Methods that may be overridden: server_bind(), server_activate(),
    get_request(), handle_timeout(), verify_request(), process_request(),
    finish_request(), shutdown_request(), close_request(), service_actions(),
    handle_error(), server_close().

    Class variables that may be overridden by derived classes or instances:
    timeout, and ``sockwork_registry`` (a :class:`sockwork.Registry` whose
    plugins' lifecycle hooks this server calls; default: none, and no
    installed plugin is loaded). Set it before the server first serves.
    """

    timeout: float | None = None
    sockwork_registry = None
    socket: socket.socket  # set by TCPServer and UDPServer (for mypy: handle_request() uses it)

    def __init__(self, server_address, RequestHandlerClass):
        """Constructor.  May be extended, do not override."""
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self._sockwork_lock = threading.Lock()
        self._sockwork_core = None
        self._sockwork_dispatcher = None
        _load_core()  # now, not when serving begins (see _load_core)

    # -- the core server behind this one, assembled on first use, once the
    #    class and instance attributes that select its parts are final

    def _sockwork(self):
        core = self._sockwork_core
        if core is None:
            with self._sockwork_lock:
                core = self._sockwork_core
                if core is None:
                    core = self._sockwork_core = self._sockwork_assemble()
        return core

    def _sockwork_assemble(self):
        # The built-in parts, imported with this module: serving touches no entry
        # point and imports nothing (a process short of descriptors still serves).
        inner = self._sockwork_make_dispatcher()
        self._sockwork_dispatcher = inner
        self._sockwork_dispatch = _ClassicDispatch(self, inner)
        service_actions = type(self).service_actions
        overridden = service_actions not in _DEFAULT_SERVICE_ACTIONS
        plain_finish = type(self).finish_request is BaseServer.finish_request
        transport = _ClassicTransport(self)
        registry = self.sockwork_registry
        from sockwork._parts import NO_HOOKS, LifecycleHooks, Parts  # start-up cost (see _load_core)
        from sockwork.limits import Limits, Outcome  # start-up cost (see _load_core)

        parts = Parts(
            transport=transport,
            dispatcher=self._sockwork_dispatch,
            # finish_request(r, a) is RequestHandlerClass(r, a, self): called as such when not overridden
            handler=self.RequestHandlerClass if plain_finish else self._sockwork_finish_request,
            transport_name=transport.name,
            hooks=NO_HOOKS if registry is None else LifecycleHooks(registry.plugin_manager),
            registry=registry,
        )
        core = _load_core().Server(
            parts=parts,
            drain_timeout=None,  # socketserver waits for every thread or child it waits for
            limits=Limits.none(),  # no cap, no timeouts: handlers see what they always saw
            on_error=self._sockwork_handle_error,
            service_actions=self.service_actions if overridden else None,
            handler_server=self,
        )
        # Counts a request an override served (and closed) itself; one counted already is left alone.
        self._sockwork_dispatch.settle = lambda request: core.requests.settle(request, Outcome.COMPLETED)
        return core

    def _sockwork_make_dispatcher(self):
        from sockwork.strategies.inline import InlineDispatcher  # loaded by _load_core already

        return InlineDispatcher()

    def _sockwork_finish_request(self, request, client_address, server):
        self.finish_request(request, client_address)

    def _sockwork_handle_error(self, request, client_address, exc):
        self.handle_error(request, client_address)

    # -- the classic API

    def server_activate(self):
        """Called by constructor to activate the server.  May be overridden."""
        pass

    def serve_forever(self, poll_interval=0.5):
        """Handle one request at a time until shutdown.

        Returns as soon as shutdown() is called. ``poll_interval`` is how
        often an overridden service_actions() runs when the server is idle.
        """
        self._sockwork().serve_forever(poll_interval)

    def shutdown(self):
        """Stops the serve_forever loop and waits until it has stopped.

        Must be called while serve_forever() is running in another thread,
        or it does nothing but make the next serve_forever() return at once.
        """
        self._sockwork().shutdown()

    def service_actions(self):
        """Called by the serve_forever() loop.

        May be overridden by a subclass / Mixin to implement any code that
        needs to be run during the loop.
        """
        pass

    def handle_request(self):
        """Handle one request, possibly blocking.

        Respects self.timeout (and the socket's timeout): calls
        handle_timeout() when no request came in time.
        """
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._sockwork().handle_request(timeout):
            return None
        if deadline is not None and time.monotonic() >= deadline:
            return self.handle_timeout()
        return None

    def _handle_request_noblock(self):
        """Handle one request, without blocking (call it when select() said so)."""
        self._sockwork().handle_request(0)

    def handle_timeout(self):
        """Called if no new request arrives within self.timeout."""
        pass

    def verify_request(self, request, client_address):
        """Verify the request.  May be overridden.

        Return True if we should proceed with this request.
        """
        return True

    def process_request(self, request, client_address):
        """Call finish_request.

        Overridden by ForkingMixIn and ThreadingMixIn.  May be overridden.
        Called explicitly (``TCPServer.process_request(self, ...)``) from an
        override in a mix-in's server, it serves the request right here, in
        the calling thread, as in socketserver.
        """
        self.finish_request(request, client_address)
        self.shutdown_request(request)

    def server_close(self):
        """Called to clean-up the server: stops accepting and waits for
        running requests as socketserver does.  May be overridden."""
        core = self._sockwork_core
        if core is not None:
            core.close()

    def finish_request(self, request, client_address):
        """Finish one request by instantiating RequestHandlerClass."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request):
        """Called to shutdown and close an individual request."""
        self.close_request(request)

    def close_request(self, request):
        """Called to clean up an individual request."""
        pass

    def handle_error(self, request, client_address):
        """Handle an error gracefully.  May be overridden.

        The default is to print a traceback and continue.
        """
        print('-'*40, file=sys.stderr)
        print('Exception occurred during processing of request from',
              client_address, file=sys.stderr)
        traceback.print_exc()
        print('-'*40, file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.server_close()


class TCPServer(BaseServer):
    """Base class for various socket-based server classes.

    Defaults to synchronous IP stream (i.e., TCP).

    Class variables that may be overridden: address_family, socket_type,
    request_queue_size, allow_reuse_address, allow_reuse_port, and
    ``sockwork_nodelay`` (TCP_NODELAY on TCP connections; set it to False
    for the standard module's behaviour).
    """

    address_family = socket.AF_INET
    socket_type = socket.SOCK_STREAM
    # socketserver's 5 overflows at a handful of concurrent connects: the
    # kernel then drops connection attempts (seconds of latency) or falls back
    # to SYN cookies, which can lose a client's first bytes. Set it as before.
    request_queue_size = 1024
    allow_reuse_address = False
    allow_reuse_port = False
    # With Nagle's algorithm on, a reply written in two pieces (http.server's
    # headers, then its body) waits for the client's delayed ACK: 40 ms per
    # keep-alive response on Linux. Set on the listening socket, from which
    # Linux (FreeBSD and macOS too) copies it to every accepted connection:
    # whatever accepts (an overridden get_request too), whatever handler serves.
    sockwork_nodelay = True

    def __init__(self, server_address, RequestHandlerClass, bind_and_activate=True):
        """Constructor.  May be extended, do not override."""
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family, self.socket_type)
        if (self.sockwork_nodelay and self.socket.type == socket.SOCK_STREAM
                and self.socket.family in (socket.AF_INET, socket.AF_INET6)):
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                self.socket.close()
                raise
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except:
                self.server_close()
                raise

    def server_bind(self):
        """Called by constructor to bind the socket.  May be overridden."""
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def server_activate(self):
        """Called by constructor to activate the server.  May be overridden."""
        self.socket.listen(self.request_queue_size)

    def server_close(self):
        """Called to clean-up the server.  May be overridden."""
        BaseServer.server_close(self)
        self.socket.close()

    def fileno(self):
        """Return socket file number.  Interface required by selector."""
        return self.socket.fileno()

    def get_request(self):
        """Get the request and client address from the socket.  May be overridden."""
        return self.socket.accept()

    def shutdown_request(self, request):
        """Called to shutdown and close an individual request."""
        try:  # noqa: SIM105 -- per request: cheaper than contextlib.suppress
            # explicitly shutdown.  socket.close() merely releases
            # the socket and waits for GC to perform the actual close.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # some platforms may raise ENOTCONN here
        self.close_request(request)

    def close_request(self, request):
        """Called to clean up an individual request."""
        request.close()


class UDPServer(TCPServer):
    """UDP server class."""

    allow_reuse_address = False
    allow_reuse_port = False
    socket_type = socket.SOCK_DGRAM
    max_packet_size = 8192

    def get_request(self):
        data, client_addr = self.socket.recvfrom(self.max_packet_size)
        return (data, self.socket), client_addr

    def server_activate(self):
        # No need to call listen() for UDP.
        pass

    def shutdown_request(self, request):
        # No need to shutdown anything.
        self.close_request(request)

    def close_request(self, request):
        # No need to close anything.
        pass


if _typing.TYPE_CHECKING:
    _MixIn = BaseServer  # for mypy, a mix-in is what it is mixed into
else:
    _MixIn = object


if hasattr(os, "fork"):
    class ForkingMixIn(_MixIn):
        """Mix-in class to handle each request in a new process.

        Selects sockwork's ``fork`` dispatcher: children are reaped as soon
        as they exit, and at most ``max_children`` run at once (at the limit
        the server stops accepting until one exits).
        """

        timeout: float | None = 300
        max_children = 40
        # If true, server_close() waits until all child processes complete.
        block_on_close = True
        def _sockwork_make_dispatcher(self):
            from sockwork.strategies.fork import ForkDispatcher, ForkOptions  # loaded by _load_core already

            return ForkDispatcher(ForkOptions(max_children=self.max_children,
                                                block_on_close=bool(self.block_on_close)))

        @property
        def active_children(self):
            """Process ids of the children still running, or None before the first."""
            dispatcher = self._sockwork_dispatcher
            return None if dispatcher is None else set(dispatcher.children)

        def collect_children(self, *, blocking=False):
            """Reap children that have exited; with ``blocking``, wait for all."""
            dispatcher = self._sockwork_dispatcher
            if dispatcher is None:
                return
            if blocking:
                dispatcher.drain(None)
            else:
                dispatcher.reap()

        def handle_timeout(self):
            """Wait for zombies after self.timeout seconds of inactivity."""
            self.collect_children()

        def service_actions(self):
            """Collect the zombie child processes regularly."""
            self.collect_children()

        def process_request(self, request, client_address):
            """Fork a new subprocess to process the request.

            The child serves the request (finish_request, handle_error,
            shutdown_request) and exits; the parent closes its copy. At
            ``max_children`` the server has stopped accepting already.
            """
            self._sockwork_dispatch.hand_off(request, client_address)

        def server_close(self):
            super().server_close()  # drains the fork dispatcher as block_on_close says


class ThreadingMixIn(_MixIn):
    """Mix-in class to handle each request in a new thread.

    Selects sockwork's ``thread`` dispatcher, with no limit on threads (as
    in socketserver); ``server_close`` joins them when ``block_on_close``
    is true and the threads are not ``daemon_threads``.
    """

    # Decides how threads will act upon termination of the main process
    daemon_threads = False
    # If true, server_close() waits until all non-daemonic threads terminate.
    block_on_close = True
    def _sockwork_make_dispatcher(self):
        from sockwork.strategies.thread import ThreadDispatcher, ThreadOptions  # loaded by _load_core already

        return ThreadDispatcher(ThreadOptions(
            max_threads=None,
            daemon=bool(self.daemon_threads),
            block_on_close=bool(self.block_on_close) and not self.daemon_threads,
            idle_linger=0,  # a new thread per request, as socketserver
        ))

    @property
    def _threads(self):
        """The request threads still running (socketserver kept such a list)."""
        dispatcher = self._sockwork_dispatcher
        return [] if dispatcher is None else dispatcher.threads

    def process_request_thread(self, request, client_address):
        """Serve one request as a request thread does: finish, report errors, shut down."""
        self._sockwork().loop.serve(request, client_address)  # the waiting set's: it serves what it holds

    def process_request(self, request, client_address):
        """Start a new thread to process the request.

        The thread runs process_request_thread(); server_close() joins it
        as ``block_on_close`` and ``daemon_threads`` say.
        """
        self._sockwork_dispatch.hand_off(request, client_address)

    def server_close(self):
        super().server_close()  # joins the request threads as block_on_close says


if hasattr(os, "fork"):
    class ForkingUDPServer(ForkingMixIn, UDPServer):
        pass

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        pass

class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    pass

class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    pass

if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(TCPServer):
        address_family = socket.AF_UNIX

    class UnixDatagramServer(UDPServer):
        address_family = socket.AF_UNIX

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        pass

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        pass

    if hasattr(os, "fork"):
        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            pass

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            pass


_DEFAULT_SERVICE_ACTIONS = frozenset(
    {BaseServer.service_actions} | ({ForkingMixIn.service_actions} if hasattr(os, "fork") else set())
)
# Not overridden: the loop hands requests straight to the dispatcher the class
# selected (for a server with no mix-in, inline: BaseServer's own meaning).
_DEFAULT_PROCESS_REQUEST = frozenset(
    {BaseServer.process_request, ThreadingMixIn.process_request}
    | ({ForkingMixIn.process_request} if hasattr(os, "fork") else set())
)


# ---- Request handlers -------------------------------------------------------------

class BaseRequestHandler:
    """Base class for request handler classes.

    This class is instantiated for each request to be handled.  The
    constructor sets the instance variables request, client_address
    and server, and then calls the handle() method.  To implement a
    specific service, all you need to do is to derive a class which
    defines a handle() method.
    """

    def __init__(self, request, client_address, server):
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self):
        pass

    def handle(self):
        pass

    def finish(self):
        pass


class StreamRequestHandler(BaseRequestHandler):
    """Define self.rfile and self.wfile for stream sockets."""

    # Default buffer sizes for rfile, wfile.
    # We default rfile to buffered because otherwise it could be
    # really slow for large data (a getc() call per byte); we make
    # wfile unbuffered because (a) often after a write() we want to
    # read and we need to flush the line; (b) big writes to unbuffered
    # files are typically optimized by stdio even when big reads
    # aren't.
    rbufsize = -1
    wbufsize = 0

    # A timeout to apply to the request socket, if not None.
    timeout: float | None = None

    # Disable nagle algorithm for this socket, if True.
    # Use only when wbufsize != 0, to avoid small packets.
    disable_nagle_algorithm = False

    def setup(self):
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile = self.connection.makefile('rb', self.rbufsize)
        if self.wbufsize == 0:
            self.wfile = _SocketWriter(self.connection)
        else:
            self.wfile = self.connection.makefile('wb', self.wbufsize)

    def finish(self):
        if not self.wfile.closed:
            try:  # noqa: SIM105 -- per request: cheaper than contextlib.suppress
                self.wfile.flush()
            except OSError:
                # A final socket error may have occurred here, such as
                # the local error ECONNABORTED.
                pass
        self.wfile.close()
        self.rfile.close()


class _SocketWriter(io.BufferedIOBase):
    """Simple writable BufferedIOBase implementation for a socket.

    Does not hold data in a buffer, avoiding any need to call flush()."""

    def __init__(self, sock):
        self._sock = sock

    def writable(self):
        return True

    def write(self, b):
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self):
        return self._sock.fileno()


class DatagramRequestHandler(BaseRequestHandler):
    """Define self.rfile and self.wfile for datagram sockets."""

    def setup(self):
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = io.BytesIO()

    def finish(self):
        self.socket.sendto(self.wfile.getvalue(), self.client_address)
