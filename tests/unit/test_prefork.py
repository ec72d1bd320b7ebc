"""prefork: workers accept by themselves, are replaced when they die, recycled on request."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import time

import pytest

from sockwork import OptionError, Server
from sockwork.handlers import echo
from sockwork.testing import exchange, serving

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="prefork needs pidfd_open")]

TCP = "tcp://127.0.0.1:0"


def pid_handler(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
    request.recv(100)
    request.sendall(b"%d" % os.getpid())


def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_requests_are_served_by_the_workers_not_the_parent() -> None:
    server = Server(transport=TCP, dispatcher="prefork", dispatcher_options={"workers": 2}, handler=pid_handler)
    with serving(server):
        pids = {int(exchange(server, b"who")) for _ in range(20)}
        assert pids <= server.dispatcher.worker_pids and os.getpid() not in pids
    assert server.stats.completed == 20


def test_a_dead_worker_is_logged_and_replaced(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(transport=TCP, dispatcher="prefork", dispatcher_options={"workers": 2}, handler=echo)
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        victim = min(server.dispatcher.worker_pids)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in server.dispatcher.worker_pids and len(server.dispatcher.worker_pids) == 2)
        assert exchange(server, b"still serving") == b"still serving"
    assert f"prefork worker {victim} was killed by signal SIGKILL; starting a new one" in caplog.text


def test_workers_are_recycled_after_max_requests() -> None:
    options = {"workers": 1, "inner": "inline", "max_requests": 3}
    server = Server(transport=TCP, dispatcher="prefork", dispatcher_options=options, handler=pid_handler)
    with serving(server):
        pids = [int(exchange(server, b"who")) for _ in range(12)]
    runs = [len(list(group)) for _, group in itertools.groupby(pids)]
    # Each worker serves at least 3 (a request accepted in the same round may make it 4).
    assert len(runs) >= 3 and all(run >= 3 for run in runs[:-1]), pids
    assert server.stats.completed == 12


def test_inner_dispatcher_and_its_options_are_validated() -> None:
    with pytest.raises(OptionError, match="option 'inner': must be one of inline, thread, pool, got 'fork'"):
        Server(transport=TCP, dispatcher="prefork", dispatcher_options={"inner": "fork"}, handler=echo)
    with pytest.raises(OptionError, match="not valid for the pool dispatcher: workers: must be an int >= 1, got 0"):
        Server(transport=TCP, dispatcher="prefork",
               dispatcher_options={"inner": "pool", "inner_options": {"workers": 0}}, handler=echo)


def test_handle_request_is_refused_with_a_reason() -> None:
    with Server(transport=TCP, dispatcher="prefork", dispatcher_options={"workers": 1}, handler=echo) as server:
        with pytest.raises(RuntimeError, match="workers accept by themselves: use serve_forever"):
            server.handle_request(0)
