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


@pytest.fixture
def make_server(transport_name: str, dispatcher_name: str, short_tmp: Path) -> Iterator[Callable[..., Server]]:
    """Build a Server on the parametrized transport (loopback) and dispatcher."""
    created: list[Server] = []

    def make(handler: Any, **kwargs: Any) -> Server:
        entry = REGISTRY.get("transport", transport_name)
        if entry.loopback_options is None:
            pytest.skip(f"transport {transport_name!r} has no loopback_options to test it with")
        kwargs.setdefault("registry", REGISTRY)
        server = Server(
            transport=entry.loopback_options(short_tmp), dispatcher=dispatcher_name, handler=handler, **kwargs
        )
        created.append(server)
        return server

    yield make
    for server in created:
        server.close()
