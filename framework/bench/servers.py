"""The server side: one server per process, run until SIGTERM, its address printed first.

``python -m sockwork.bench --serve IMPLEMENTATION WORKLOAD PATH`` runs one. sockwork's rows serve the
workload's ``handler``; the standard library's and the legacy module's the same protocol as a classic
handler class; the event-loop peers as an asyncio coroutine (or datagram protocol).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from . import tls
from .bare import BARE, serve_bare
from .placement import pin
from .workloads import PEERS, WORKLOADS

# What a server gives the runner: its bound address, shutdown(), serve_forever(), close().
Served = tuple[Any, Callable[[], None], Callable[[], None], Callable[[], None]]


class EchoHandler:
    """The echo protocol as a classic handler class (the stdlib and legacy rows)."""

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        if isinstance(request, tuple):
            data, sock = request
            sock.sendto(data, client_address)
            return
        with contextlib.suppress(ConnectionError):  # a client that goes away (RST at close) is no failure
            while chunk := request.recv(65536):
                request.sendall(chunk)


class LinesHandler:
    """The lines protocol as a classic handler class: each line answered ``"<n>: <line>"``, as ``lines`` does."""

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        count = 0
        with request.makefile("rb") as rfile, contextlib.suppress(ConnectionError):
            while line := rfile.readline(65536):
                count += 1
                request.sendall(b"%d: %s" % (count, line))


CLASSIC_HANDLERS = {"echo": EchoHandler, "lines": LinesHandler}


def serve(implementation: str, workload: str, path: str, cpus: list[int] | None = None) -> int:
    """Run one server until SIGTERM, pinned to ``cpus`` if given; print its address first.

    A server that cannot be built for the workload (sockwork's assembly refuses the pair, say) prints
    ``{"refused": "the reason"}`` instead and returns 2: the driver reports it and runs the others.
    """
    pin(cpus)  # first: every thread and child started from here on inherits the mask
    spec = WORKLOADS[workload]
    if implementation in PEERS:
        _serve_event_loop(implementation, spec, path)
        return 0
    if implementation in BARE:
        serve_bare(implementation, spec, path)
        return 0
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # for sigwait below, in every thread
    try:
        served = _build(implementation, spec, path)
    except ValueError as exc:  # sockwork's ConfigError is one
        print(json.dumps({"refused": str(exc).splitlines()[0]}), flush=True)
        return 2
    _run(*served)
    return 0


def _build(implementation: str, spec: dict[str, Any], path: str) -> Served:
    if spec["kind"] == "http":
        server = _http_server(implementation, spec["protocol"], path)
        return server.server_address, server.shutdown, server.serve_forever, server.server_close
    if implementation in ("stdlib", "legacy"):
        return _classic_server(implementation, spec, path)
    return _sockwork_server(implementation, spec, path)


def _run(bound: Any, stop: Callable[[], None], run: Callable[[], None], close: Callable[[], None]) -> None:
    def stop_on_sigterm() -> None:
        signal.sigwait({signal.SIGTERM})
        stop()

    threading.Thread(target=stop_on_sigterm, daemon=True).start()
    print(json.dumps(bound), flush=True)
    try:
        run()
    finally:
        close()


def _classic_server(implementation: str, spec: dict[str, Any], path: str) -> Served:
    """The standard library's Threading*Server, or the legacy module's, with the classic handler."""
    if implementation == "stdlib":
        import socketserver as module
    else:
        from sockwork import socketserver as module  # type: ignore[no-redef]  # same API, either module
    cls = {"tcp": module.ThreadingTCPServer, "udp": module.ThreadingUDPServer,
           "unix": module.ThreadingUnixStreamServer}[spec["kind"]]
    address: Any = path if spec["kind"] == "unix" else ("127.0.0.1", 0)
    handler: Any = CLASSIC_HANDLERS[spec["protocol"]]
    if spec.get("tls"):
        handler = tls.TLSEchoHandler.for_directory(os.path.dirname(path))
    server: Any = cls(address, handler)
    return server.server_address, server.shutdown, server.serve_forever, server.server_close


def _sockwork_server(dispatcher: str, spec: dict[str, Any], path: str) -> Served:
    """A sockwork Server with ``dispatcher``, serving the workload's handler under its limits."""
    from sockwork import Limits, Server

    url = {"tcp": "tcp://127.0.0.1:0", "udp": "udp://127.0.0.1:0", "unix": f"unix://{path}"}[spec["kind"]]
    options = None
    if spec.get("tls"):
        url, options = "tls://127.0.0.1:0", tls.files(os.path.dirname(path))
    limits = Limits(idle_timeout=None) if spec["limits"] == "off" else Limits()
    # "pool+metrics": the dispatcher with the metrics endpoint on (what measuring costs, docs/production.md).
    dispatcher, _, extra = dispatcher.partition("+")
    server = Server(transport=url, transport_options=options, dispatcher=dispatcher, handler=spec["handler"],
                    limits=limits, metrics="tcp://127.0.0.1:0" if extra == "metrics" else None)
    return server.address, server.shutdown, server.serve_forever, server.close


def _serve_event_loop(implementation: str, spec: dict[str, Any], path: str) -> None:
    """The workload's protocol on asyncio streams (or a datagram endpoint), on asyncio's loop or uvloop's."""
    import asyncio

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        closing, bound = await _start_event_loop_server(spec, path)
        print(json.dumps(bound), flush=True)
        await stop.wait()
        closing.close()

    if PEERS[implementation] == "uvloop":
        importlib.import_module("uvloop").run(serve())
    else:
        asyncio.run(serve())


async def _start_event_loop_server(spec: dict[str, Any], path: str) -> tuple[Any, Any]:
    """Start the workload's asyncio server; return what to close and the bound address."""
    import asyncio

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):  # OSError: ssl.SSLError, a client gone mid-session
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count = 0
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                count += 1
                writer.write(b"%d: %s" % (count, line))
                await writer.drain()
        writer.close()

    class Datagrams(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(data, addr)

    loop = asyncio.get_running_loop()
    handle = {"echo": echo, "lines": lines}[spec["protocol"]]
    context = tls.server_context(os.path.dirname(path)) if spec.get("tls") else None
    if spec["kind"] == "udp":
        endpoint, _ = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        return endpoint, endpoint.get_extra_info("sockname")
    if spec["kind"] == "unix":
        return await asyncio.start_unix_server(handle, path), path
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()


def _http_server(implementation: str, protocol: str, directory: str) -> Any:
    """http.server's ThreadingHTTPServer serving ``directory``, on the chosen socketserver."""
    if "http.server" in sys.modules:
        raise RuntimeError("http.server was imported before the socketserver under it was chosen")
    if implementation == "legacy":
        from sockwork import socketserver as ours

        sys.modules["socketserver"] = ours
    elif implementation != "stdlib":
        raise ValueError(f"http.server runs on 'stdlib' or 'legacy', not {implementation!r}")
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = protocol

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=directory, **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one stderr line per request would measure the terminal

    class HTTPServer(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):  # wrk resets its connections when it stops
                super().handle_error(request, client_address)

    return HTTPServer(("127.0.0.1", 0), Handler)
