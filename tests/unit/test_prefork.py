"""prefork, the supervisor: workers accept by themselves, are replaced when they die, recycled on
request, never outlive their parent, and every request they took is counted however they end."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from sockwork import ConfigError, DispatcherEntry, OptionError, Registry, Server, hookimpl, make_plugin_manager
from sockwork.handlers import echo
from sockwork.registry import NoOptions
from sockwork.strategies import PoolDispatcher, PoolOptions
from sockwork.testing import client, exchange, serving

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="prefork needs pidfd_open")]

TCP = "tcp://127.0.0.1:0"
BUILTINS = Registry(make_plugin_manager(entry_points=False))


def pid_handler(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
    request.recv(100)
    request.sendall(b"%d" % os.getpid())


def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for a reaper that is not us counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_requests_are_served_by_the_workers_not_the_parent() -> None:
    """Each request is answered by one of the workers, never by the parent."""
    server = Server(transport=TCP, dispatcher="prefork", dispatcher_options={"workers": 2}, handler=pid_handler)
    with serving(server):
        pids = {int(exchange(server, b"who")) for _ in range(20)}
        assert pids <= server.dispatcher.worker_pids and os.getpid() not in pids  # type: ignore[attr-defined]
    assert server.stats.completed == 20


@pytest.mark.parametrize("inner", [e.name for e in BUILTINS.entries("dispatcher")
                                   if not getattr(e, "supervisor", False)])
def test_every_registered_dispatcher_runs_inside_the_workers(inner: str) -> None:
    """The inner dispatcher is chosen by name from the registry: every non-supervisor works."""
    server = Server(transport=TCP, dispatcher="prefork", registry=BUILTINS,
                    dispatcher_options={"workers": 2, "inner": inner}, handler="echo")  # by name: any form
    with serving(server):
        for i in range(10):
            assert exchange(server, b"req %d" % i) == b"req %d" % i
    assert server.stats.completed == 10 and server.stats.active == 0


class CountingPool:
    """A third party's dispatcher (a pool that counts how often it was built)."""

    @hookimpl
    def sockwork_add_dispatchers(self) -> list[DispatcherEntry]:
        return [DispatcherEntry("thirdparty-pool", lambda options: PoolDispatcher(PoolOptions(workers=2)), NoOptions)]


def test_a_third_party_dispatcher_runs_inside_the_workers() -> None:
    """A plugin's dispatcher, unknown to prefork, serves inside its workers."""
    pm = make_plugin_manager(entry_points=False)
    pm.register(CountingPool())
    server = Server(transport=TCP, dispatcher="prefork", registry=Registry(pm),
                    dispatcher_options={"workers": 2, "inner": "thirdparty-pool"}, handler=echo)
    with serving(server):
        assert exchange(server, b"plugin inside") == b"plugin inside"
    assert server.stats.completed == 1


def test_inner_dispatcher_and_its_options_are_validated() -> None:
    """Unknown inner names, a supervisor inside a supervisor and bad inner options fail at assembly."""
    with pytest.raises(ConfigError,
                       match="no dispatcher named 'forks'; registered: asyncio, fork, inline, pool, prefork"):
        Server(transport=TCP, dispatcher="prefork", dispatcher_options={"inner": "forks"}, handler=echo,
               registry=BUILTINS)
    with pytest.raises(ConfigError, match="'prefork' supervises processes itself and cannot run inside a worker"):
        Server(transport=TCP, dispatcher="prefork", dispatcher_options={"inner": "prefork"}, handler=echo,
               registry=BUILTINS)
    with pytest.raises(ConfigError,
                       match=r"option 'inner_options' \(pool option 'workers'\): must be an int >= 1, got 0"):
        Server(transport=TCP, dispatcher="prefork", registry=BUILTINS,
               dispatcher_options={"inner": "pool", "inner_options": {"workers": 0}}, handler=echo)
    with pytest.raises(OptionError, match="option 'inner_options': must be a table"):
        Server(transport=TCP, dispatcher="prefork", dispatcher_options={"inner_options": 3}, handler=echo,
               registry=BUILTINS)


def test_a_dead_worker_is_logged_and_replaced(caplog: pytest.LogCaptureFixture) -> None:
    """A worker killed from outside is logged with its signal and replaced; serving goes on."""
    server = Server(transport=TCP, dispatcher="prefork", dispatcher_options={"workers": 2}, handler=echo)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        pids: Any = server.dispatcher.worker_pids  # type: ignore[attr-defined]
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in server.dispatcher.worker_pids  # type: ignore[attr-defined]
                   and len(server.dispatcher.worker_pids) == 2)  # type: ignore[attr-defined]
        assert exchange(server, b"still serving") == b"still serving"
    assert f"prefork worker {victim} was killed by signal SIGKILL; starting a new one" in caplog.text


def test_a_crashed_workers_requests_count_as_failed_and_active_returns_to_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Requests a worker was serving when it crashed are counted as failed, not left active forever."""
    def crash_on_request(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        request.sendall(b"started")
        time.sleep(0.5)  # long enough for the worker to report this request as active
        os._exit(9)

    server = Server(transport=TCP, dispatcher="prefork", handler=crash_on_request,
                    dispatcher_options={"workers": 1, "inner": "thread"})
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        with client(server) as first, client(server) as second:
            assert first.recv(7) == b"started" and second.recv(7) == b"started"
            wait_until(lambda: server.stats.failed == 2)
        assert server.stats.active == 0
    assert "exited with status 9" in caplog.text
    assert "ended with 2 request(s) running; counted as failed" in caplog.text


def test_workers_are_recycled_after_max_requests(caplog: pytest.LogCaptureFixture) -> None:
    """With max_requests, a worker retires after that many requests and the log says so."""
    options = {"workers": 1, "inner": "inline", "max_requests": 3}
    server = Server(transport=TCP, dispatcher="prefork", dispatcher_options=options, handler=pid_handler)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        pids = [int(exchange(server, b"who")) for _ in range(12)]
    runs = [len(list(group)) for _, group in itertools.groupby(pids)]
    # Each worker serves at least 3 (with inline, exactly 3: one accept per round when recycling).
    assert runs == [3, 3, 3, 3], pids
    assert server.stats.completed == 12
    assert "retired after max_requests=3; starting a new one" in caplog.text


def test_a_worker_that_exits_0_by_itself_is_not_called_retired(caplog: pytest.LogCaptureFixture) -> None:
    """Exit status 0 without max_requests or a SIGTERM is reported as what it is."""
    def exit_quietly(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        request.sendall(b"bye")
        raise SystemExit(0)  # inline: ends the worker's loop, and the worker exits with status 0

    server = Server(transport=TCP, dispatcher="prefork", handler=exit_quietly,
                    dispatcher_options={"workers": 1, "inner": "inline"})
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        first: Any = set(server.dispatcher.worker_pids)  # type: ignore[attr-defined]
        assert exchange(server, b"x") == b"bye"
        wait_until(lambda: server.dispatcher.worker_pids and server.dispatcher.worker_pids != first)  # type: ignore[attr-defined]
    assert "retired" not in caplog.text
    assert "stopped on its own (exit status 0, no SIGTERM from this supervisor)" in caplog.text


def test_handle_request_is_refused_with_a_reason() -> None:
    with (Server(transport=TCP, dispatcher="prefork", dispatcher_options={"workers": 1}, handler=echo) as server,
          pytest.raises(RuntimeError, match="workers accept by themselves: use serve_forever")):
        server.handle_request(0)


SUPERVISOR = textwrap.dedent("""
    import sys
    from sockwork import Server
    server = Server(transport="tcp://127.0.0.1:0", dispatcher="prefork", handler="echo",
                    dispatcher_options={"workers": 2})
    with server.handle_signals():
        import threading
        def announce():
            server.wait_serving()
            print(server.address[1], *sorted(server.dispatcher.worker_pids), flush=True)
        threading.Thread(target=announce, daemon=True).start()
        server.serve_forever()
        server.close()
""")


def end_supervisor(process: subprocess.Popen[str], workers: list[int]) -> None:
    """Stop what the test started, by pid: the supervisor, then any worker a failed test left alive."""
    if process.poll() is None:
        process.kill()
        process.wait()
    process.stdout.close()  # type: ignore[union-attr]
    for pid in workers:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_workers_stop_when_their_parent_dies() -> None:
    """A supervisor killed with SIGKILL leaves no worker serving: they notice and drain."""
    process = subprocess.Popen([sys.executable, "-c", SUPERVISOR], stdout=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        _, *workers = [int(n) for n in process.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(workers) == 2
        process.kill()
        process.wait(timeout=10)
        wait_until(lambda: not any(alive(pid) for pid in workers), timeout=30)  # a loaded machine: slow, not wrong
    finally:
        end_supervisor(process, workers)


def test_a_second_signal_leaves_no_worker_alive() -> None:
    """SIGTERM twice while a worker's request hangs: the supervisor exits 1 and no worker survives."""
    script = SUPERVISOR.replace('handler="echo"', 'handler=hang, drain_timeout=None').replace(
        "from sockwork import Server", "from sockwork import Server\nimport time\n"
        "def hang(request, address, server):\n    request.recv(1)\n    time.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        port, *workers = [int(n) for n in process.stdout.readline().split()]  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"x")
            time.sleep(0.3)  # the request is running in a worker
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 1
        wait_until(lambda: not any(alive(pid) for pid in workers), timeout=5)
    finally:
        end_supervisor(process, workers)



def test_a_stop_right_after_the_spawn_is_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM sent while workers are still starting is repeated until heard: nobody is killed."""
    for _ in range(5):
        server = Server(transport=TCP, dispatcher="prefork", dispatcher_options={"workers": 2}, handler=echo,
                        drain_timeout=5)
        with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
            pass  # close() at once: the workers may not have installed their SIGTERM handler yet
    assert "killing" not in caplog.text


def test_a_handlers_exit_status_never_fakes_a_workers_reason(caplog: pytest.LogCaptureFixture) -> None:
    """sys.exit(3) in a handler is a crash (status 1), not "retired after max_requests"."""
    def exit_3(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        request.sendall(b"bye")
        raise SystemExit(3)

    server = Server(transport=TCP, dispatcher="prefork", handler=exit_3,
                    dispatcher_options={"workers": 1, "inner": "inline"})
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        first: Any = set(server.dispatcher.worker_pids)  # type: ignore[attr-defined]
        assert exchange(server, b"x") == b"bye"
        wait_until(lambda: server.dispatcher.worker_pids and server.dispatcher.worker_pids != first)  # type: ignore[attr-defined]
    assert "retired" not in caplog.text and "Logging error" not in caplog.text
    assert "exited with status 1; starting a new one" in caplog.text


def test_workers_call_only_the_failure_hook_and_keep_plugin_options() -> None:
    """started/stopped/collect_stats run once, in the supervising process; workers see plugin_options."""
    reports_r, reports_w = os.pipe()

    class Recorder:
        @hookimpl
        def sockwork_server_started(self, server: Any) -> None:
            os.write(reports_w, b"started %d\n" % os.getpid())

        @hookimpl
        def sockwork_request_failed(self, server: Any) -> None:
            os.write(reports_w, b"failed %d %s\n" % (os.getpid(), str(server.plugin_options).encode()))

    def fail(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    pm = make_plugin_manager(entry_points=False)
    pm.register(Recorder(), name="recorder")
    server = Server(transport=TCP, dispatcher="prefork", handler=fail, registry=Registry(pm),
                    dispatcher_options={"workers": 2}, plugin_options={"recorder": {"x": 1}})
    try:
        with serving(server):
            with client(server) as sock:
                sock.sendall(b"x")
                assert sock.recv(10) == b""
            wait_until(lambda: server.stats.failed == 1)
        os.set_blocking(reports_r, False)
        lines = os.read(reports_r, 4096).decode().splitlines()
    finally:
        os.close(reports_r)
        os.close(reports_w)
    assert lines[0] == f"started {os.getpid()}"
    assert len(lines) == 2 and lines[1].startswith("failed ") and lines[1].endswith("{'recorder': {'x': 1}}")
    assert int(lines[1].split()[1]) != os.getpid()


class CrashingInner:
    """A dispatcher whose start() fails: every worker dies at once (a crash loop)."""

    @hookimpl
    def sockwork_add_dispatchers(self) -> list[DispatcherEntry]:
        class Doomed:
            concurrency = 1

            def start(self, host: Any) -> None:
                raise RuntimeError("cannot start")

            def submit(self, request: Any, client_address: Any) -> None: ...
            def saturated(self) -> bool: return False
            def drain(self, timeout: float | None) -> bool: return True
            def close(self) -> None: ...

        return [DispatcherEntry("doomed", lambda options: Doomed())]


def test_a_crash_loop_backs_off_in_the_loop_and_stops_promptly(caplog: pytest.LogCaptureFixture) -> None:
    """Workers that die at once are replaced after growing pauses, scheduled in the loop (no sleep)."""
    pm = make_plugin_manager(entry_points=False)
    pm.register(CrashingInner(), name="crashing")
    server = Server(transport=TCP, dispatcher="prefork", registry=Registry(pm), handler=echo,
                    dispatcher_options={"workers": 1, "inner": "doomed"})
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        time.sleep(1.2)  # pauses of 0.1, 0.2, 0.4, 0.8 s: a handful of replacements, not hundreds
        server.shutdown()  # heard during a pause: serve_forever returns at once
    replaced = caplog.text.count("exited with status 1; starting a new one")
    assert 2 <= replaced <= 8, replaced


def test_requests_are_served_by_the_workers_whose_pids_are_logged_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """At start-up the supervisor logs which worker pids serve, and that each has its own memory: a handler's
    in-memory state is per worker (a key set through one is missing in another)."""
    server = Server(transport=TCP, dispatcher="prefork", dispatcher_options={"workers": 2}, handler=pid_handler)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        pids = sorted(server.dispatcher.worker_pids)  # type: ignore[attr-defined]
    [line] = [r.getMessage() for r in caplog.records if "worker processes serve" in r.getMessage()]
    assert line == (f"prefork: 2 worker processes serve (pids {pids[0]}, {pids[1]}); each has its own memory, "
                    "so what a handler keeps in memory (a dict, a cache, a counter) is seen by one worker only")


@pytest.mark.parametrize(("inner", "elsewhere"), [("pool", False), ("fork", True)])
def test_prefork_answers_keeps_connections_elsewhere_for_its_inner_dispatcher(inner: str, elsewhere: bool) -> None:
    """Inside prefork, a dispatcher that serves a kept-alive connection in a process of its own (fork, procpool)
    still does: prefork says so, as it does for runs_async (the kit's keep-alive test reads it)."""
    from sockwork.interfaces import capability
    from sockwork.strategies.prefork import PreforkDispatcher, PreforkOptions

    dispatcher = PreforkDispatcher(PreforkOptions(inner=inner))
    try:
        assert capability(dispatcher, "keeps_connections_elsewhere") is elsewhere
    finally:
        dispatcher.close()
