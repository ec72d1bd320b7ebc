"""The conformance kit catches dispatchers that break the backpressure contract."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import pytest

from sockwork import DispatcherEntry, Registry, conformance, hookimpl, make_plugin_manager

pytestmark = pytest.mark.timeout(60)


class TwoWorkers:
    """Two worker threads; ``says_saturated`` and ``wakes`` decide whether it keeps the contract."""

    concurrency = 2

    def __init__(self, *, says_saturated: bool, wakes: bool) -> None:
        self._says_saturated, self._wakes = says_saturated, wakes
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._busy = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, host: Any) -> None:
        self._host = host
        self._threads = [threading.Thread(target=self._work) for _ in range(2)]
        for thread in self._threads:
            thread.start()

    def submit(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._busy += 1
        self._queue.put((request, client_address))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            self._host.serve(*item)
            with self._lock:
                self._busy -= 1
                freed = self._busy == 1
            if freed and self._wakes:
                self._host.wake()

    def saturated(self) -> bool:
        return self._says_saturated and self._busy >= 2

    def drain(self, timeout: float | None) -> bool:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    def close(self) -> None:
        pass


def registry_with(name: str, **behaviour: bool) -> Registry:
    class Plugin:
        @hookimpl
        def sockwork_add_dispatchers(self) -> list[DispatcherEntry]:
            return [DispatcherEntry(name, lambda options: TwoWorkers(**behaviour))]

    pm = make_plugin_manager(entry_points=False)
    pm.register(Plugin())
    return Registry(pm)


def run_kit(registry: Registry, name: str, tmp: Path) -> None:
    from sockwork.pytest_plugin import loopback_of
    from sockwork.registry import TransportEntry
    from sockwork.testing import Clients

    entry = registry.get("transport", "tcp")
    assert isinstance(entry, TransportEntry)
    loopback = loopback_of(entry, tmp)
    conformance.test_saturation_stops_accepting_and_freed_capacity_wakes_the_loop(
        sockwork_transport_name="tcp", sockwork_dispatcher_name=name, sockwork_registry=registry,
        sockwork_loopback=loopback, sockwork_client=Clients(loopback.wrap))


def test_the_kit_passes_an_honest_dispatcher(short_tmp: Path) -> None:
    """A dispatcher that says saturated() at its limit and wakes the loop passes."""
    run_kit(registry_with("honest", says_saturated=True, wakes=True), "honest", short_tmp)


def test_the_kit_catches_a_dispatcher_that_is_never_saturated(short_tmp: Path) -> None:
    """saturated() always False with every worker blocked: unbounded work, caught and named."""
    with pytest.raises(AssertionError,
                       match=r"saturated\(\) never returned True with \d+ requests accepted and 2 allowed to run"):
        run_kit(registry_with("unbounded", says_saturated=False, wakes=True), "unbounded", short_tmp)


def test_the_kit_catches_a_dispatcher_that_never_wakes_the_loop(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """saturated() True but no host.wake() when a worker frees up: the waiting clients are never served."""
    monkeypatch.setattr(conformance, "SERVE_WITHIN", 1.0)
    with pytest.raises(AssertionError, match="the dispatcher must wake the loop"):
        run_kit(registry_with("sleepy", says_saturated=True, wakes=False), "sleepy", short_tmp)
