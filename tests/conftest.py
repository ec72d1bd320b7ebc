"""Fixtures fed by the registry: registering a component enrolls it in the suites."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest.mark.structures import ParameterSet

from sockwork import Registry, Server
from sockwork.testing import ResourceSnapshot

REGISTRY = Registry()


def registered(kind: str) -> list[ParameterSet]:
    return [
        pytest.param(
            entry.name,
            id=entry.name,
            marks=pytest.mark.skipif(entry.unavailable_reason is not None, reason=entry.unavailable_reason or ""),
        )
        for entry in REGISTRY.entries(kind)  # type: ignore[arg-type]
    ]


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test leaves no thread, descriptor or child process behind."""
    before = ResourceSnapshot.take()
    yield
    leaks = before.leaks()
    assert not leaks, f"left behind: {leaks}"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: Unix socket paths are limited to ~107 bytes."""
    directory = tempfile.mkdtemp(prefix="sw-")
    yield Path(directory)
    shutil.rmtree(directory)


@pytest.fixture(params=registered("transport"))
def transport_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=registered("dispatcher"))
def dispatcher_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["parts", "socketserver"])
def assembly(request: pytest.FixtureRequest) -> str:
    """How the server is built: from parts, or through the legacy socketserver classes."""
    return request.param


# The legacy class for each (transport, dispatcher) pair that socketserver has.
LEGACY_CLASSES = {
    (transport, dispatcher): f"{prefix}{base}"
    for transport, base in [("tcp", "TCPServer"), ("udp", "UDPServer"),
                            ("unix", "UnixStreamServer"), ("unix-dgram", "UnixDatagramServer")]
    for dispatcher, prefix in [("inline", ""), ("thread", "Threading"), ("fork", "Forking")]
}


class LegacyHarness:
    """Drives a sockwork.socketserver server through its classic API, shaped
    like a Server so that the same conformance tests run against it."""

    def __init__(self, classic: Any) -> None:
        self.classic = classic
        core = classic._sockwork()  # the parts the classic server was assembled from
        self.transport, self.dispatcher = core.transport, core.dispatcher

    @property
    def address(self) -> Any:
        return self.classic.server_address

    def serve_forever(self) -> None:
        self.classic.serve_forever(poll_interval=0.5)

    def shutdown(self) -> None:
        self.classic.shutdown()

    def handle_request(self, timeout: float | None = None) -> bool:
        timed_out: list[bool] = []
        self.classic.timeout = timeout
        self.classic.handle_timeout = lambda: timed_out.append(True)
        self.classic.handle_request()
        return not timed_out

    def close(self) -> None:
        self.classic.server_close()


@pytest.fixture
def make_server(
    transport_name: str, dispatcher_name: str, assembly: str, short_tmp: Path
) -> Iterator[Callable[..., Any]]:
    """Build a server on the parametrized transport (loopback) and dispatcher."""
    created: list[Any] = []

    def make(handler: Any, **kwargs: Any) -> Any:
        entry = REGISTRY.get("transport", transport_name)
        if entry.loopback_options is None:
            pytest.skip(f"transport {transport_name!r} has no loopback_options to test it with")
        if assembly == "socketserver":
            server = make_legacy(lambda: entry.loopback_options(short_tmp), handler, **kwargs)
        else:
            kwargs.setdefault("registry", REGISTRY)
            options = entry.loopback_options(short_tmp)
            server = Server(transport=options, dispatcher=dispatcher_name, handler=handler, **kwargs)
        created.append(server)
        return server

    def make_legacy(
        make_options: Callable[[], Any], handler: Any, registry: Registry | None = None, **kwargs: Any
    ) -> LegacyHarness:
        from sockwork import socketserver

        name = LEGACY_CLASSES.get((transport_name, dispatcher_name))
        if name is None:
            pytest.skip(f"socketserver has no class for {transport_name} x {dispatcher_name}")
        if kwargs:
            pytest.skip(f"socketserver classes take no {', '.join(kwargs)} (they wait as socketserver does)")
        options = make_options()
        address = getattr(options, "address", None) or options.path
        classic = getattr(socketserver, name)(address, handler)
        classic.sockwork_registry = registry
        classic.max_packet_size = 65535  # socketserver's 8192 would truncate the large-datagram test
        return LegacyHarness(classic)

    yield make
    for server in created:
        server.close()
