"""Observability: /metrics read with prometheus_client's own parser equals server.stats and the load's own
counts (prefork included, across a killed worker); gauges and histograms move with silent and slow clients;
`sockwork top`; JSON log lines; the missing extra named in one line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sockwork import KEEP_ALIVE, ConfigError, Server, ServerConfig, stream_handler
from sockwork.connection import Connection
from sockwork.observe import TurnMetrics

prometheus_client = pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from sockwork.testing import eventually, serving  # noqa: E402

pytestmark = pytest.mark.timeout(90)

TCP = "tcp://127.0.0.1:0"
METRICS = "tcp://127.0.0.1:0"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's endpoint, parsed by prometheus_client: (name, sorted labels) -> value."""
    assert server.metrics is not None
    with urllib.request.urlopen(server.metrics.url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels`` (prefork: over the workers)."""
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))


def as_stats(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, int]:
    stats = {outcome: int(total(samples, "sockwork_finished_total", outcome=outcome))
             for outcome in ("completed", "failed", "timed_out", "disconnected", "refused")}
    stats["accepted"] = int(total(samples, "sockwork_accepted_total"))
    stats["rejected"] = int(total(samples, "sockwork_rejected_total"))
    stats["oversized"] = int(total(samples, "sockwork_oversized_total"))
    stats["active"] = int(total(samples, "sockwork_active"))
    return stats


def server_stats(server: Server) -> dict[str, int]:
    s = server.stats
    return {name: getattr(s, name) for name in ("accepted", "active", "completed", "failed", "rejected",
                                                "timed_out", "disconnected", "refused", "oversized")}


class Load:
    """A bounded load: ``clients`` threads, each ``connections`` connections of ``turns`` echoed messages."""

    def __init__(self, address: Any, clients: int = 4, connections: int = 15, turns: int = 3) -> None:
        self.address, self.clients, self.connections, self.turns = address, clients, connections, turns
        self.answered = self.failed = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, args=(n,)) for n in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    def _client(self, number: int) -> None:
        for i in range(self.connections):
            try:
                with socket.create_connection(self.address, timeout=10) as conn:
                    for turn in range(self.turns):
                        message = b"client %d conn %d turn %d;" % (number, i, turn)
                        conn.sendall(message)
                        got = b""
                        while len(got) < len(message):
                            chunk = conn.recv(4096)
                            assert chunk, "closed early"
                            got += chunk
                        assert got == message
                ok = True
            except (OSError, AssertionError):
                ok = False
            with self._lock:
                if ok:
                    self.answered += 1
                else:
                    self.failed += 1


@pytest.mark.parametrize("dispatcher", ["pool", "thread", "asyncio"])
def test_the_counters_scraped_under_load_equal_server_stats_and_the_load(dispatcher: str) -> None:
    """Scraped while clients run and after: counters never go down, and at the end equal server.stats and what
    the load generator counted, exactly."""
    server = Server(transport=TCP, dispatcher=dispatcher, handler="echo", metrics=METRICS)
    with serving(server):
        load = Load(server.address)
        runner = threading.Thread(target=load.run)
        runner.start()
        seen: list[dict[str, int]] = []
        while runner.is_alive():
            seen.append(as_stats(scrape(server)))
            time.sleep(0.05)
        runner.join()
        expected = load.clients * load.connections
        assert load.answered == expected and load.failed == 0
        assert eventually(lambda: server.stats.completed == expected)
        final = as_stats(scrape(server))
        assert final == server_stats(server)
        assert final["completed"] == final["accepted"] == expected and final["active"] == 0
        for earlier, later in zip(seen, [*seen[1:], final], strict=True):
            assert all(later[key] >= earlier[key] for key in ("accepted", "completed"))
        samples = scrape(server)
        turns = total(samples, "sockwork_turn_duration_seconds_count")
        # A turn per message at least (asyncio: one per connection, the handler reads the stream itself).
        assert turns >= (expected if dispatcher == "asyncio" else expected * load.turns)
        assert total(samples, "sockwork_connection_received_bytes_count") == expected
        assert total(samples, "sockwork_workers_busy") == 0


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="prefork needs pidfd_open")
def test_prefork_one_scrape_shows_every_worker_and_loses_nothing_of_a_killed_one() -> None:
    """prefork, 2 workers: series labelled by worker; after one worker is killed with connections open, summed
    over the workers the counters equal server.stats and the load's counts (its open connections: failed)."""
    server = Server(transport=TCP, dispatcher="prefork", dispatcher_options={"workers": 2}, handler="echo",
                    metrics=METRICS)
    with serving(server):
        dispatcher: Any = server.dispatcher
        assert eventually(lambda: len(dispatcher.worker_pids) == 2)
        first = Load(server.address)
        first.run()
        assert first.failed == 0
        # Connections held open (served once, waiting in a worker's loop), then one worker killed under them.
        held = [socket.create_connection(server.address, timeout=10) for _ in range(6)]
        for conn in held:
            conn.sendall(b"hold")
            assert conn.recv(10) == b"hold"
        # Killed with nothing unreported (workers report every 0.2 s: a worker killed between two reports
        # takes what it counted since its last one with it; design.md says so).
        assert eventually(lambda: server.stats.active == len(held) and server.stats.completed == first.answered)
        samples = scrape(server)
        workers = {labels for (name, labels), _ in samples.items() if name == "sockwork_worker_info"}
        assert {dict(labels)["worker"] for labels in workers} == {"0", "1"}
        assert {int(dict(labels)["pid"]) for labels in workers} == set(dispatcher.worker_pids)
        victim = next(int(dict(labels)["pid"]) for labels in workers if dict(labels)["worker"] == "0")
        os.kill(victim, signal.SIGKILL)
        assert eventually(lambda: victim not in dispatcher.worker_pids and len(dispatcher.worker_pids) == 2)
        lost = 0
        for conn in held:
            try:
                conn.sendall(b"again")
                ok = conn.recv(10) == b"again"
            except OSError:
                ok = False
            lost += not ok
            with contextlib.suppress(OSError):  # shut down, not only closed: a worker forked since holds a copy
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        second = Load(server.address)
        second.run()
        assert second.failed == 0
        answered = first.answered + second.answered + len(held) - lost
        assert eventually(lambda: server.stats.completed == answered and server.stats.active == 0), (
            server.stats, answered, lost, first.answered, second.answered)
        samples = scrape(server)
        assert as_stats(samples) == server_stats(server)
        assert server.stats.failed == lost and server.stats.accepted == answered + lost
        assert total(samples, "sockwork_worker_exits_total", worker="0", reason="crashed") == 1
        assert total(samples, "sockwork_turn_duration_seconds_count", worker="0") > 0  # kept from before the kill
        new_pids = {int(dict(labels)["pid"]) for (name, labels), _ in samples.items()
                    if name == "sockwork_worker_info"}
        assert victim not in new_pids and new_pids == set(dispatcher.worker_pids)


@stream_handler
def slow_echo(conn: Connection) -> object:
    """Echoes; a message starting with b"slow" takes half a second first."""
    data = conn.recv()
    if not data:
        return None
    if data.startswith(b"slow"):
        time.sleep(0.5)
    conn.sendall(data)
    return KEEP_ALIVE


def test_gauges_and_histograms_move_with_silent_connections_and_slow_requests() -> None:
    """100 silent connections wait idle (no worker); 10 slow requests on 4 workers: 4 busy, the rest queued
    (ready), and their queueing delay lands in the upper buckets."""
    server = Server(transport=TCP, dispatcher="pool", dispatcher_options={"workers": 4}, handler=slow_echo,
                    metrics=METRICS)
    with serving(server):
        before = scrape(server)
        assert total(before, "sockwork_workers") == 4 and total(before, "sockwork_workers_busy") == 0
        silent = [socket.create_connection(server.address, timeout=10) for _ in range(100)]
        slow = [socket.create_connection(server.address, timeout=10) for _ in range(10)]
        try:
            assert eventually(lambda: total(scrape(server), "sockwork_connections_waiting", state="idle") == 110)
            for conn in slow:
                conn.sendall(b"slow request")
            assert eventually(lambda: total(samples := scrape(server), "sockwork_workers_busy") == 4
                              and total(samples, "sockwork_connections_waiting", state="ready") >= 1)
            for conn in slow:
                assert conn.recv(100) == b"slow request"
            after = scrape(server)
            assert total(after, "sockwork_connections_waiting", state="idle") == 110
            assert total(after, "sockwork_active") == 110
            waited = total(after, "sockwork_queue_wait_seconds_count")
            assert waited >= 10
            # Six requests waited for a worker at least one slow turn (0.5 s): above the 0.25 s bucket.
            assert waited - total(after, "sockwork_queue_wait_seconds_bucket", le="0.25") >= 6
            assert total(after, "sockwork_turn_duration_seconds_count") >= 10
            assert total(after, "sockwork_turn_duration_seconds_count") - total(
                after, "sockwork_turn_duration_seconds_bucket", le="0.25") >= 10  # each slow turn took 0.5 s
            assert total(after, "sockwork_descriptors_open") >= 110
            assert total(after, "sockwork_descriptors_limit") >= total(after, "sockwork_descriptors_open")
        finally:
            for conn in silent + slow:
                conn.close()
        assert eventually(lambda: total(scrape(server), "sockwork_connection_received_bytes_count") == 110)
        final = scrape(server)
        assert total(final, "sockwork_connection_received_bytes_sum") == 10 * len(b"slow request")


def test_a_connection_stage_has_its_gauge_and_its_histogram() -> None:
    """Connections in the PROXY stage are counted as such; a finished stage lands in the stage histogram."""
    server = Server(transport=TCP, handler="echo", dispatcher="pool", metrics=METRICS,
                    transport_options={"proxy_protocol": "v1", "trusted_proxies": ["127.0.0.1/32"]})
    with serving(server):
        waiting = [socket.create_connection(server.address, timeout=10) for _ in range(3)]
        try:
            assert eventually(lambda: total(scrape(server), "sockwork_connections_waiting", state="stage") == 3)
            with socket.create_connection(server.address, timeout=10) as conn:
                conn.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\nhello")
                assert conn.recv(10) == b"hello"
            samples = scrape(server)
            assert total(samples, "sockwork_stage_duration_seconds_count", stage="PROXY header") == 1
        finally:
            for conn in waiting:
                conn.close()


def test_the_endpoint_answers_only_metrics_and_never_takes_a_worker() -> None:
    """/metrics answers while the only worker is busy; other paths 404, other methods 405."""
    gate = threading.Event()

    @stream_handler
    def blocking(conn: Connection) -> object:
        conn.recv()
        gate.wait(10)
        conn.sendall(b"done")
        return None

    server = Server(transport=TCP, dispatcher="pool", dispatcher_options={"workers": 1, "queue_size": 1},
                    handler=blocking, metrics=METRICS)
    with serving(server):
        assert server.metrics is not None
        with socket.create_connection(server.address, timeout=10) as busy:
            busy.sendall(b"x")
            assert eventually(lambda: total(scrape(server), "sockwork_workers_busy") == 1)
            base = server.metrics.url.rsplit("/", 1)[0]
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(base + "/other", timeout=10)
            request = urllib.request.Request(server.metrics.url, data=b"x", method="POST")
            with pytest.raises(urllib.error.HTTPError, match="405"):
                urllib.request.urlopen(request, timeout=10)
            gate.set()
            assert busy.recv(10) == b"done"


def test_per_thread_buckets_keep_what_ended_threads_observed() -> None:
    """Observations from threads that have ended are kept (folded), and busy counts unfinished turns."""
    metrics = TurnMetrics()

    def turns() -> None:
        for _ in range(10):
            metrics.end_turn(metrics.begin_turn(time.perf_counter() - 0.3))

    threads = [threading.Thread(target=turns) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    began = metrics.begin_turn(None)
    assert metrics.busy == 1
    histograms = metrics.histograms()
    assert histograms["turn"].count == 1000 and histograms["queue_wait"].count == 1000
    assert histograms["queue_wait"].counts[0] == 0  # each waited about 0.3 s
    metrics.end_turn(began)
    assert metrics.busy == 0 and metrics.histograms()["turn"].count == 1001


def test_metrics_without_the_extra_fail_at_assembly_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """No prometheus_client: the config, the Server and `sockwork check` name the extra, in one line."""
    import importlib.util

    from sockwork import _cli
    from sockwork.assembly import assemble_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "prometheus_client" else real(name, *args))
    config = ServerConfig.from_dict({"transport": TCP, "metrics": METRICS})
    with pytest.raises(ConfigError, match=r"metrics: the Prometheus endpoint needs prometheus_client, which is "
                                          r"not installed: pip install 'sockwork\[prometheus\]'"):
        assemble_config(config)
    with pytest.raises(ConfigError, match=r"pip install 'sockwork\[prometheus\]'"):
        Server(transport=TCP, handler="echo", metrics=METRICS)
    assert _cli.main(["check", "--metrics", METRICS]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sockwork[prometheus]" in err


def test_a_bad_metrics_url_is_a_config_error() -> None:
    """Only tcp://HOST:PORT is a metrics address; the field is named."""
    with pytest.raises(ConfigError, match=r"metrics: .*tcp://HOST:PORT"):
        ServerConfig.from_dict({"transport": TCP, "metrics": "http://127.0.0.1:9100"})
    assert ServerConfig.from_dict({"transport": TCP, "metrics": False}).metrics is None


@pytest.mark.parametrize("dispatcher", ["pool", "prefork"])
def test_top_json_shows_the_server_and_a_row_per_prefork_worker(dispatcher: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`sockwork top URL --json` prints one snapshot; prefork has one row per worker with its pid."""
    if dispatcher == "prefork" and not hasattr(os, "pidfd_open"):
        pytest.skip("prefork needs pidfd_open")
    from sockwork import _cli

    options = {"workers": 2} if dispatcher == "prefork" else None
    server = Server(transport=TCP, dispatcher=dispatcher, dispatcher_options=options, handler="echo",
                    metrics=METRICS)
    with serving(server):
        Load(server.address, clients=2, connections=5).run()
        assert eventually(lambda: server.stats.completed == 10)
        assert server.metrics is not None
        url = server.metrics.url.removeprefix("http://").removesuffix("/metrics")
        assert _cli.main(["top", f"tcp://{url}", "--json"]) == 0
        snapshot = json.loads(capsys.readouterr().out)
        assert snapshot["server"]["completed"] == 10 and snapshot["server"]["active"] == 0
        assert snapshot["server"]["turn_p99_ms"] is not None
        if dispatcher == "prefork":
            rows = snapshot["workers"]
            assert [row["worker"] for row in rows] == ["0", "1"]
            assert {row["pid"] for row in rows} == set(server.dispatcher.worker_pids)  # type: ignore[attr-defined]
            assert sum(row["completed"] for row in rows) == 10
        else:
            assert snapshot["workers"] == []
        # Without a terminal: plain lines, one per row, each refresh.
        assert _cli.main(["top", server.metrics.url, "--count", "2", "--interval", "0.1"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2 * (1 + (2 if dispatcher == "prefork" else 0))
        assert all("worker=" in line and "finished=" in line for line in lines)
    assert _cli.main(["top", "tcp://127.0.0.1:9", "--json"]) == 1
    assert "cannot read http://127.0.0.1:9/metrics" in capsys.readouterr().err


def test_json_log_lines_from_the_command_line() -> None:
    """--log-format json --access-log json: every stderr line is one JSON object with the documented keys."""
    from sockwork.logs import ACCESS_KEYS, LOG_KEYS

    process = subprocess.Popen(
        [sys.executable, "-m", "sockwork", "serve", "--transport", TCP, "--dispatcher", "pool", "--access-log",
         "json", "--log-format", "json", "--metrics", METRICS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        serving_line = process.stdout.readline()
        port = int(serving_line.split("tcp://127.0.0.1:")[1].split()[0])
        metrics_port = int(serving_line.split("; metrics on tcp://127.0.0.1:")[1].split()[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"twelve bytes")
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(100) == b"twelve bytes"
        access = json.loads(process.stderr.readline())
        assert tuple(access) == ACCESS_KEYS
        assert access["logger"] == "sockwork.access" and access["outcome"] == "completed"
        assert access["client"].startswith("127.0.0.1:") and access["bytes_in"] == 12
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            assert b"sockwork_accepted_total 1.0" in response.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        rest = [json.loads(line) for line in process.stderr.read().splitlines()]
        assert rest and all(tuple(line)[:len(LOG_KEYS)] == LOG_KEYS for line in rest)
        assert any(line["message"].startswith("stopping on SIGTERM") for line in rest)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_async_handlers_have_an_access_log(caplog: pytest.LogCaptureFixture) -> None:
    """The asyncio dispatcher writes the same access line as the others (client, outcome, bytes)."""
    import logging

    server = Server(transport=TCP, dispatcher="asyncio", handler="echo", access_log="json")
    with caplog.at_level(logging.INFO, logger="sockwork.access"), serving(server):
        with socket.create_connection(server.address, timeout=10) as conn:
            conn.sendall(b"hello")
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(10) == b"hello"
        assert eventually(lambda: any(r.name == "sockwork.access" for r in caplog.records))
    [record] = [r for r in caplog.records if r.name == "sockwork.access"]
    line = json.loads(record.getMessage())
    assert line["outcome"] == "completed" and line["bytes_in"] == 5 and line["client"].startswith("127.0.0.1:")


def test_the_grafana_dashboard_loads_and_asks_for_metrics_that_exist() -> None:
    """docs/examples' dashboard is valid JSON, and every metric its queries name is one the endpoint serves."""
    import re

    from sockwork.limits import ServerStats
    from sockwork.metrics import families
    from sockwork.observe import GAUGES, HISTOGRAMS, Histogram, Reading, Snapshot, WorkerReading

    dashboard = json.loads((DOCS / "examples" / "grafana-sockwork.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    histograms = {name: Histogram.empty(bounds) for name, bounds in HISTOGRAMS.items()}
    histograms["stage:tls"] = Histogram.empty(HISTOGRAMS["turn"])
    everything = Snapshot(ServerStats(), dict.fromkeys(GAUGES, 1), histograms)
    served = {sample.name for reading in (Reading(everything), Reading(None, (WorkerReading(0, 1, everything,
                                                                                           {"crashed": 1}),)))
              for family in families(reading) for sample in family.samples}
    named = {name for expr in exprs for name in re.findall(r"\b(sockwork_[a-z_]+)", expr)}
    assert named and named <= served, named - served
