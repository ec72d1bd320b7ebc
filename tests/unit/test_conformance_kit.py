"""The conformance kit catches dispatchers that break the backpressure contract."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import pytest

from sockwork import DispatcherEntry, Registry, StageFailed, conformance, hookimpl, make_plugin_manager

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


# ---- The kit's stage tests, against plugins.md's example stage and deliberately broken ones ----------------

PLUGINS_MD = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def documented_hello() -> Any:
    """The ``Hello`` stage exactly as docs/plugins.md shows it."""
    text = PLUGINS_MD.read_text()
    start = text.index("class Hello:")
    source = text[text.rindex("```python\n", 0, start) + len("```python\n"):text.index("```", start)]
    namespace: dict[str, Any] = {}
    exec(compile(source, str(PLUGINS_MD), "exec"), namespace)
    return namespace["Hello"]


class SpinsOnWrite:
    """Broken: waits for the rest of its greeting by asking for "write", which a connected socket always is."""

    name = "spinning greeting"
    timeout = 5.0

    def advance(self, conn: Any) -> str:
        head = conn.peek(4)
        if not b"HELO".startswith(head):
            raise StageFailed(f"expected HELO, got {head!r}")
        if len(head) < 4:
            return "write"
        conn.recv(4)
        return "done"


class RaisesInsteadOfRefusing:
    """Broken: a client's mistake raised as a plain ValueError (a bug in the stage: counted failed)."""

    name = "careless greeting"
    timeout = 5.0

    def advance(self, conn: Any) -> str:
        head = conn.peek(4)
        if not b"HELO".startswith(head):
            raise ValueError(f"expected HELO, got {head!r}")
        if len(head) < 4:
            return "read"
        conn.recv(4)
        return "done"


class LetsPartialThrough:
    """Broken: done at the first byte, so a stalled client goes on to the handler."""

    name = "hasty greeting"
    timeout = 5.0

    def advance(self, conn: Any) -> str:
        conn.peek(1)
        return "done"


def stage_registry(stage: Any) -> Registry:
    """A registry with the ``helo`` transport of plugins.md: tcp with ``stage`` on it."""
    from sockwork import StageInputs, TransportEntry
    from sockwork.transports.tcp import TCPOptions, TCPTransport

    class Plugin:
        @hookimpl
        def sockwork_add_transports(self) -> list[TransportEntry]:
            return [TransportEntry(
                "helo", lambda options: TCPTransport(options, stages=[stage]), TCPOptions,
                loopback_options=lambda directory: TCPOptions(address=("127.0.0.1", 0)),
                stage_inputs=StageInputs(partial=b"HE", refused=b"NOPE"))]

    pm = make_plugin_manager(entry_points=False)
    pm.register(Plugin())
    return Registry(pm)


def run_stage_test(test: Any, stage: Any, tmp: Path) -> None:
    from sockwork.pytest_plugin import loopback_of
    from sockwork.registry import TransportEntry

    registry = stage_registry(stage)
    entry = registry.get("transport", "helo")
    assert isinstance(entry, TransportEntry)
    test(sockwork_transport_name="helo", sockwork_registry=registry, sockwork_loopback=loopback_of(entry, tmp))


def test_the_documented_stage_costs_no_cpu_while_a_client_stalls(short_tmp: Path) -> None:
    """plugins.md's Hello stage, a client stalled mid-greeting: at most 0.1 s of CPU over 1 s."""
    run_stage_test(conformance.test_a_stage_stalled_mid_input_costs_no_cpu_while_it_waits, documented_hello()(),
                   short_tmp)


def test_the_documented_stage_passes_the_refusal_and_timeout_tests(short_tmp: Path) -> None:
    """plugins.md's Hello stage refuses a wrong greeting (counted refused) and is cut at its timeout."""
    run_stage_test(conformance.test_a_stage_refuses_what_it_must_and_it_is_counted_refused, documented_hello()(),
                   short_tmp)
    run_stage_test(conformance.test_a_stage_stalled_mid_input_is_cut_at_its_timeout_and_counted_timed_out,
                   documented_hello()(), short_tmp)


def test_the_kit_catches_a_stage_that_spins_while_it_waits(short_tmp: Path) -> None:
    """A stage that asks for "write" while it waits for bytes is called without pause: caught, with the CPU used."""
    caught = r"one client stalled mid-input cost [\d.]+ s of CPU and \d+ call\(s\) of advance\(\)"
    with pytest.raises(AssertionError, match=caught):
        run_stage_test(conformance.test_a_stage_stalled_mid_input_costs_no_cpu_while_it_waits, SpinsOnWrite(),
                       short_tmp)


def test_the_kit_catches_a_stage_that_raises_instead_of_refusing(short_tmp: Path) -> None:
    """A client's mistake must be StageFailed (refused), not a stage's own exception (failed)."""
    with pytest.raises(AssertionError, match="refused input was not counted refused"):
        run_stage_test(conformance.test_a_stage_refuses_what_it_must_and_it_is_counted_refused,
                       RaisesInsteadOfRefusing(), short_tmp)


def test_the_kit_catches_a_stage_that_lets_a_partial_input_through(short_tmp: Path) -> None:
    """A stage done before its input is complete hands a stalled client to the handler: never cut, caught."""
    with pytest.raises(pytest.fail.Exception, match="was still connected"):
        run_stage_test(conformance.test_a_stage_stalled_mid_input_is_cut_at_its_timeout_and_counted_timed_out,
                       LetsPartialThrough(), short_tmp)


# ---- The kit's handler test, against handlers broken on purpose ----------------------------------------

def handler_registry(blocking: Any, async_form: Any = None) -> Registry:
    """A registry with a handler-only plugin: ``upper``, which should answer b"abc" with b"ABC"."""
    from sockwork import HandlerEntry, HandlerSamples

    class Plugin:
        @hookimpl
        def sockwork_add_handlers(self) -> list[HandlerEntry]:
            return [HandlerEntry("upper", lambda options: blocking,
                                 async_factory=None if async_form is None else lambda options: async_form,
                                 samples=HandlerSamples(stream=[(b"abc", b"ABC")], datagram=[(b"abc", b"ABC")]))]

    pm = make_plugin_manager(entry_points=False)
    pm.register(Plugin())
    return Registry(pm)


def upper_of(transform: Any) -> Any:
    """A classic handler: reads three bytes (or takes the datagram) and answers ``transform`` of them."""
    def handle(request: Any, client_address: Any, server: Any) -> None:
        if isinstance(request, tuple):
            payload, sock = request
            sock.sendto(transform(payload), client_address)
        else:
            request.sendall(transform(request.recv(3)))

    return handle


def async_upper(transform: Any) -> Any:
    from sockwork import aio

    async def stream(reader: Any, writer: Any) -> None:
        writer.write(transform(await reader.read(3)))
        await writer.drain()

    async def datagram(payload: bytes, client_address: Any) -> bytes:
        return bytes(transform(payload))

    return aio.AsyncHandler(stream, datagram, name="upper")


def test_the_kit_passes_a_handler_that_answers_its_samples() -> None:
    """Blocking and async forms both answer b"ABC", on streams and datagrams."""
    conformance.test_a_handler_answers_its_samples_under_each_kind_of_dispatcher(
        sockwork_handler_name="upper", sockwork_registry=handler_registry(
            upper_of(bytes.upper), async_upper(bytes.upper)))


def test_the_kit_catches_a_handler_with_a_wrong_reply() -> None:
    """A blocking form that answers wrongly is caught, named with what it said."""
    with pytest.raises(AssertionError, match=r"handler 'upper' under pool answered b'abc' on a stream with b'abc'"):
        conformance.test_a_handler_answers_its_samples_under_each_kind_of_dispatcher(
            sockwork_handler_name="upper", sockwork_registry=handler_registry(upper_of(bytes), None))


def test_the_kit_catches_a_broken_async_form() -> None:
    """The blocking form is right, the async one raises: caught under asyncio."""
    def explode(payload: bytes) -> bytes:
        raise RuntimeError("async form is broken")

    with pytest.raises(AssertionError, match="under asyncio"):
        conformance.test_a_handler_answers_its_samples_under_each_kind_of_dispatcher(
            sockwork_handler_name="upper", sockwork_registry=handler_registry(
                upper_of(bytes.upper), async_upper(explode)))


# ---- The kit's lifecycle test, against a plugin whose hook raises ----------------------------------------

def lifecycle_registry(started_raises: bool) -> Registry:
    class Audit:
        def __init__(self) -> None:
            self.seen: list[str] = []

        @hookimpl
        def sockwork_server_started(self, server: Any) -> None:
            if started_raises:
                raise KeyError("the audit log is not configured")
            self.seen.append("started")

        @hookimpl
        def sockwork_request_failed(self, exc: BaseException) -> None:
            self.seen.append("failed")

        @hookimpl
        def sockwork_server_stopped(self, server: Any) -> None:
            self.seen.append("stopped")

    pm = make_plugin_manager(entry_points=False)
    pm.register(Audit(), name="audit")
    return Registry(pm)


def test_the_kit_passes_a_lifecycle_plugin_that_keeps_the_contract() -> None:
    """Started, a failed request, stopped: each hook called, in that order, none raising."""
    conformance.test_lifecycle_hooks_are_called_in_order_and_raise_nothing(
        sockwork_lifecycle_plugin="audit", sockwork_registry=lifecycle_registry(started_raises=False))


def test_the_kit_catches_a_lifecycle_hook_that_raises() -> None:
    """The server logs a raising hook and goes on; the kit names it."""
    with pytest.raises(AssertionError, match=r"plugin 'audit'.s hooks raised: \[\('sockwork_server_started', KeyError"):
        conformance.test_lifecycle_hooks_are_called_in_order_and_raise_nothing(
            sockwork_lifecycle_plugin="audit", sockwork_registry=lifecycle_registry(started_raises=True))
