"""The benchmark runs and reports (its numbers are not asserted: machines are noisy)."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sockwork.bench import clients, workloads
from sockwork.bench import report as reporting
from sockwork.bench import tally as tallying
from sockwork.bench.runs import client_split
from sockwork.bench.tally import ClientTally, tally_clients

pytestmark = pytest.mark.timeout(120)


def test_quick_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "sockwork", "bench", "--quick", "--workloads", "short,udp",
         "--implementations", "legacy,pool,prefork", "--warmup", "0.2", "--duration", "0.2", "--json", str(out)],
        capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout
    for row in ("socketserver.ThreadingTCPServer", "sockwork.socketserver.ThreadingUDPServer",
                "sockwork `pool`", "sockwork `prefork`", "sockwork Server (thread)"):
        assert f"| {row} |" in table, table
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["workload"], r["implementation"]) for r in rows] == [
        (w, i) for w in ("short", "udp") for i in ("stdlib", "legacy", "pool", "prefork")]
    for row in rows:
        # CPU time comes in clock ticks (10 ms): a 0.2 s window of a light row may see none.
        assert row["requests"] > 0 and row["cpu_us_per_request"] >= 0 and row["p99_ms"] >= row["p50_ms"] > 0, row
        assert row["clients"] == 8, row
        if row["implementation"] == "stdlib" and row["workload"] == "short":
            continue  # its backlog of 5 drops SYNs: a client retrying for 1 s gets no reply in a 0.2 s window
        assert row["errors"] == 0 and row["answered"] == 8 and row["fewest"] > 0, row
    assert set(report["shutdown_ms"]) == {"stdlib", "sockwork"}


# ---- Counting ----------------------------------------------------------------------

def test_only_what_ends_inside_the_window_counts() -> None:
    """Replies and failures in [start, stop) count; the warm-up and what is in flight at the end do not."""
    tally = ClientTally(10.0, 20.0)
    tally.record(5.0, 9.0, True)  # warm-up
    tally.record(9.0, 11.0, True)  # sent in the warm-up, answered in the window: counts, latency 2 s
    tally.record(12.0, 13.0, False)
    tally.record(19.0, 21.0, True)  # answered after the window: in flight at the end
    tally.record(19.5, 20.0, False)  # stop is outside the window
    assert tally.report() == {"completed": 1, "failed": 1}
    assert tally.latencies == [2.0]


def test_a_client_without_a_reply_in_the_window_is_an_error() -> None:
    """A client that waited through the whole window counts as an error, next to the failures."""
    waited = ClientTally(10.0, 20.0)
    waited.record(9.0, 25.0, True)  # its one reply came after the window
    counted = tally_clients([{"completed": 7, "failed": 0}, waited.report(), {"completed": 0, "failed": 3}])
    assert counted == {
        "requests": 7, "failed": 3, "unanswered": 1, "errors": 4,
        "clients": 3, "answered": 1, "fewest": 0, "median_per_client": 0,
    }


def test_fairness_is_the_fewest_next_to_the_median() -> None:
    """Every client served, unevenly: no errors, and the fewest and the median say how uneven."""
    counted = tally_clients([{"completed": n, "failed": 0} for n in (5, 100, 120, 90)])
    assert counted["errors"] == 0 and counted["answered"] == 4
    assert (counted["fewest"], counted["median_per_client"]) == (5, 95)


def test_worst_round_carries_the_fairness() -> None:
    """Over rounds, a client starved in one round of three shows; errors add up."""
    def run(answered: int, fewest: int, errors: int) -> dict[str, Any]:
        return {"implementation": "pool", "workload": "many", "rps": 1.0, "cpu_us_per_request": 1.0,
                "p50_ms": 1.0, "p99_ms": 1.0, "p999_ms": 1.0, "peak_rss_mib": 1.0, "threads": 1, "processes": 1,
                "requests": 10, "errors": errors, "failed": 0, "unanswered": errors, "clients": 4,
                "answered": answered, "fewest": fewest, "median_per_client": 10}

    row = reporting.median_row([run(4, 9, 0), run(3, 0, 1), run(4, 8, 0)])
    assert (row["answered"], row["fewest"], row["errors"], row["unanswered"]) == (3, 0, 1, 1)


def test_clients_are_split_evenly_between_client_processes() -> None:
    assert client_split(1000) == [500, 500]
    assert client_split(5) == [3, 2]
    assert client_split(1) == [1]


def test_a_missing_event_loop_is_skipped_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(workloads.PEERS, "nowhere-streams", "sockwork_no_such_module")
    note = workloads.unavailable("nowhere-streams")
    assert note is not None and "pip install sockwork_no_such_module" in note
    assert workloads.unavailable("asyncio-streams") is None and workloads.unavailable("pool") is None


# ---- A starved client, measured --------------------------------------------------------

@pytest.fixture
def answers_first_client_only() -> Iterator[tuple[str, int]]:
    """A TCP server that echoes on the first connection it accepts and never reads the others."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    wake_r, wake_w = socket.socketpair()
    held: list[socket.socket] = []

    def serve() -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is wake_r:
                        return
                    if key.fileobj is listener:
                        conn, _ = listener.accept()
                        held.append(conn)
                        if len(held) == 1:
                            conn.setblocking(False)
                            selector.register(conn, selectors.EVENT_READ)
                        continue
                    conn = key.fileobj  # type: ignore[assignment]  # the first client's socket
                    try:
                        data = conn.recv(65536)
                        if data:
                            conn.sendall(data)
                    except ConnectionError:  # the client closed with a reply unread: a reset
                        data = b""
                    if not data:
                        selector.unregister(conn)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield listener.getsockname()
    finally:
        wake_w.send(b"x")
        thread.join()
        for sock in (*held, listener, wake_r, wake_w):
            sock.close()


class _Driver:
    """Stands in for the bench's driver: on a client process's "ready" line, opens a short window at once."""

    def __init__(self, duration: float) -> None:
        self.control, self._w = os.pipe()
        self.duration = duration
        self.ready: list[dict[str, int]] = []

    def write(self, text: str) -> None:
        self.ready.append(json.loads(text))
        now = time.time()
        os.write(self._w, json.dumps({"start": now, "stop": now + self.duration}).encode() + b"\n")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        os.close(self.control)
        os.close(self._w)


@pytest.mark.parametrize("client", ["mux", "threads"])
def test_a_starved_client_is_counted(client: str, answers_first_client_only: tuple[str, int],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Three clients, a server that answers one: two unanswered clients, two errors, fewest 0."""
    monkeypatch.setattr(tallying, "SETUP_STALL", 0.3)  # stop waiting for the starved ones soon
    spec = {**workloads.WORKLOADS["persistent"], "client": client}
    driver = _Driver(duration=0.3)
    try:
        result = clients.run_clients(spec, list(answers_first_client_only), 3, driver.control, driver)
    finally:
        driver.close()
    assert driver.ready == [{"answered": 1}]
    counted = tally_clients(result["clients"])
    assert (counted["answered"], counted["unanswered"], counted["errors"]) == (1, 2, 2), counted
    assert counted["fewest"] == 0 and counted["requests"] > 0
    assert len(result["latencies"]) == counted["requests"]


def test_new_workloads_run_with_tiny_counts(tmp_path: Path) -> None:
    """many, lines and silent, a few clients each, the standard library next to asyncio streams: every
    client answered, and what holding connections costs is reported."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "sockwork", "bench", "--quick", "--workloads", "many,lines,silent",
         "--implementations", "asyncio-streams", "--clients", "4", "--silent", "10", "--trickle", "2",
         "--warmup", "0.2", "--duration", "0.3", "--json", str(out)],
        capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stderr
    assert "| asyncio streams |" in result.stdout and "× asyncio" in result.stdout, result.stdout
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["workload"], r["implementation"]) for r in rows] == [
        (w, i) for w in ("many", "lines", "silent") for i in ("stdlib", "asyncio-streams")]
    for row in rows:
        assert row["errors"] == 0 and row["answered"] == row["clients"] == 4 and row["fewest"] > 0, row
        assert row["conns_held"] > 0, row
    silent = [r for r in rows if r["workload"] == "silent"]
    for row in silent:
        assert row["waiting_opened"] == 12 and row["waiting_closed_by_server"] == 0, row
        assert row["conns_held"] >= 12, row
    assert report["workloads"]["silent"]["silent"] == 10


WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:36303/1k.bin
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.77ms  654.08us   8.78ms   81.20%
    Req/Sec     2.21k   127.21     2.38k    63.64%
  2421 requests in 1.10s, 1.20MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 21
Requests/sec:   2201.28
Transfer/sec:      1.09MB
SOCKWORK-WRK {"requests": 2421, "duration_us": 1100000, "bytes": 1259105, "errors": {"connect": 0, "read": 2, \
"write": 0, "status": 21, "timeout": 1}, "latency_us": {"p50": 1663, "p99": 4385, "p99.9": 6966, "max": 8783}}
"""


def test_wrk_report_is_read_from_the_scripts_line() -> None:
    """Good replies, every kind of error, and latencies in ms, from the line the bench's Lua script writes."""
    from sockwork.bench.wrk import parse_wrk_report

    report = parse_wrk_report(WRK_OUTPUT)
    assert report == {
        "requests": 2400, "errors": 21 + 2 + 1, "duration_s": 1.1,
        "p50_ms": 1.663, "p99_ms": 4.385, "p999_ms": 6.966, "max_ms": 8.783,
    }


def test_wrk_output_without_the_report_line_is_an_error() -> None:
    from sockwork.bench.wrk import parse_wrk_report

    with pytest.raises(ValueError, match="no report line"):
        parse_wrk_report(WRK_OUTPUT.rsplit("SOCKWORK-WRK", 1)[0])


def test_http_workloads_are_skipped_and_said_so_without_wrk(tmp_path: Path) -> None:
    """No wrk on PATH: the run succeeds, stderr and the report say why the HTTP tables are missing."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "sockwork", "bench", "--quick", "--workloads", "http10,http11", "--json", str(out)],
        capture_output=True, text=True, timeout=110, env={**os.environ, "PATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "wrk is not installed" in result.stderr and "apt-get install wrk" in result.stderr
    for workload in ("http10", "http11"):
        assert f"### {workload}: " in result.stdout
    assert result.stdout.count("Skipped: wrk is not installed") == 2, result.stdout
    report = json.loads(out.read_text())
    assert report["results"] == [] and "wrk is not installed" in report["http_skipped"]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_http_workloads_run_with_wrk(tmp_path: Path) -> None:
    """http.server on both socketservers, both protocols, one short round: rows, no errors."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "sockwork", "bench", "--quick", "--workloads", "http10,http11",
         "--implementations", "legacy,pool", "--warmup", "1", "--duration", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stderr
    assert "| http.server.ThreadingHTTPServer on sockwork.socketserver |" in result.stdout, result.stdout
    rows = json.loads(out.read_text())["results"]
    assert [(r["workload"], r["implementation"]) for r in rows] == [
        (w, i) for w in ("http10", "http11") for i in ("stdlib", "legacy")]  # pool cannot run http.server
    for row in rows:
        if row["implementation"] == "stdlib" and row["requests"] == 0:
            continue  # its backlog of 5 can stall every connection past a 1 s window (SYN retries)
        assert row["requests"] > 0, row
        assert row["max_ms"] >= row["p99_ms"] >= row["p50_ms"] > 0
        # The standard library's backlog of 5 can make a connect wait past wrk's 2 s timeout.
        assert row["errors"] == 0 or row["implementation"] == "stdlib", row


# ---- The package: small modules, short functions -----------------------------------------

def test_no_function_of_the_benchmark_is_over_60_lines() -> None:
    """Each function of sockwork.bench reads at a glance: 60 lines at most, docstring included."""
    import ast

    import sockwork.bench

    package = Path(sockwork.bench.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert len(modules) > 5, modules
    long = []
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long.append(f"{module.name}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_python_m_sockwork_bench_is_the_command() -> None:
    """`python -m sockwork.bench --help` and `sockwork bench --help` print the same usage."""
    module = subprocess.run([sys.executable, "-m", "sockwork.bench", "--help"], capture_output=True, text=True,
                            timeout=60, check=True)
    command = subprocess.run([sys.executable, "-m", "sockwork", "bench", "--help"], capture_output=True, text=True,
                             timeout=60, check=True)
    assert module.stdout == command.stdout and "--implementations" in module.stdout


# ---- Reference rows, placement, TLS ----------------------------------------------------

def _bench(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "sockwork", "bench", "--quick", "--warmup", "0.2", "--duration", "0.3",
         "--json", str(out), *options], capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text())


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="pinning needs Linux and two CPUs")
def test_bare_rows_pinned_and_free_in_one_run(tmp_path: Path) -> None:
    """Both bare rows serve short, udp and unix, pinned and free; the report gives × bare and free ÷ pinned."""
    result, report = _bench(tmp_path, "--workloads", "short,udp,unix", "--implementations", "bare-threads,bare-lf",
                            "--clients", "2", "--pin", "both")
    rows = report["results"]
    assert [(r["workload"], r["placement"], r["implementation"]) for r in rows] == [
        (w, p, i) for w in ("short", "udp", "unix") for p in ("pinned", "free")
        for i in ("stdlib", "bare-threads", "bare-lf")]
    for row in rows:
        assert row["answered_at_setup"] == 2, row  # every client had its first reply from every server
        if row["implementation"] == "stdlib" and row["workload"] == "short":
            continue  # its backlog of 5 drops SYNs (see test_quick_benchmark_runs_and_reports)
        if row["workload"] == "udp":
            continue  # on a loaded machine a datagram lost in a 0.3 s window leaves its client unanswered
        assert row["errors"] == 0 and row["answered"] == 2 and row["requests"] > 0, row
    table = result.stdout
    assert "| bare threads (hand-off) |" in table and "| bare threads (leader/followers) |" in table
    assert "× bare" in table and table.count("Server CPU per request, free ÷ pinned:") == 3, table
    assert "Server pinned to CPU 0, load on CPU 1" in table and "Server free on every CPU:" in table


def test_tls_workload_against_asyncio_start_server(tmp_path: Path) -> None:
    """tls: the classic rows wrap in the handler, pool runs the tls transport, asyncio streams run
    start_server(ssl=...); the asyncio dispatcher, refused by assembly, is reported as not run."""
    result, report = _bench(tmp_path, "--workloads", "tls", "--implementations", "pool,asyncio,asyncio-streams",
                            "--clients", "2")
    rows = report["results"]
    assert [r["implementation"] for r in rows] == ["stdlib", "pool", "asyncio-streams"]
    for row in rows:
        assert row["errors"] == 0 and row["answered"] == 2 and row["requests"] > 0, row
    assert "| asyncio start_server(ssl=...) |" in result.stdout and "| sockwork `pool`, tls |" in result.stdout
    [refused] = report["not_run"]
    assert refused["implementation"] == "asyncio" and "cannot take over" in refused["why"]
    assert "Not run: asyncio: " in result.stdout


def test_a_pinned_server_runs_every_thread_on_its_cpu(tmp_path: Path) -> None:
    """A server started with cpus pins itself first: its threads (the bare row starts 9+) inherit the mask."""
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("pinning needs Linux")
    cpu = min(os.sched_getaffinity(0))
    server = subprocess.Popen(
        [sys.executable, "-m", "sockwork.bench", "--serve", "bare-threads", "persistent", str(tmp_path / "s.sock"),
         json.dumps({"cpus": [cpu]})], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        json.loads(server.stdout.readline())
        tasks = [int(t) for t in os.listdir(f"/proc/{server.pid}/task")]
        assert len(tasks) > 2
        assert {frozenset(os.sched_getaffinity(t)) for t in tasks} == {frozenset({cpu})}
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0
        assert server.stdout is not None
        server.stdout.close()


def test_pinning_is_refused_with_a_reason_where_it_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """One CPU, or a mode that does not exist: a one-line error naming what was wrong."""
    from sockwork.bench.placement import placements

    with pytest.raises(ValueError, match="--pin must be one of free, pinned, both, got 'half'"):
        placements("half")
    assert [p.name for p in placements("free")] == ["free"]
    if not hasattr(os, "sched_getaffinity"):
        return
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    with pytest.raises(ValueError, match=r"--pin needs at least 2 CPUs .* may use 1"):
        placements("pinned")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1, 3, 5})
    pinned, free = placements("both")
    assert (pinned.server, pinned.load, free.server) == ((1,), (3, 5), None)
    assert pinned.describe() == "server pinned to CPU 1, load on CPU 3,5"


# ---- Progress, empty rows, spread, summary ---------------------------------------------

class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_is_a_line_per_run_off_a_terminal_and_a_bar_on_one() -> None:
    """Off a terminal: one plain line per finished run with runs done and time left; on one: a redrawn bar."""
    from sockwork.bench.progress import Progress, duration

    log = _Stream(tty=False)
    progress = Progress(total=3, per_run_guess=10.0, stream=log)
    assert progress.left() >= 3 * 10.0
    progress.start("short: pool (round 1/3)")
    assert log.text == ""
    progress.finish(4.2)
    assert log.text.startswith("sockwork bench: short: pool (round 1/3): 4.2 s (1/3 runs, about ")
    assert log.text.endswith(" left)\n") and "\r" not in log.text
    progress.skip(1)
    assert progress.total == 2

    terminal = _Stream(tty=True)
    progress = Progress(total=2, per_run_guess=1.0, stream=terminal)
    progress.start("udp: legacy (round 1/1)")
    progress.finish(1.0)
    progress.say("udp: done")
    progress.close()
    assert "\r\033[K[" in terminal.text and "] 1/2 udp: legacy (round 1/1), about " in terminal.text
    assert "udp: done\n" in terminal.text and terminal.text.endswith("\r\033[K")
    assert (duration(45), duration(190), duration(3900)) == ("45 s", "3 min 10 s", "1 h 5 min")


def _row(implementation: str, rps: float, errors: int = 0, **more: Any) -> dict[str, Any]:
    return {"implementation": implementation, "workload": "persistent", "placement": "free", "rps": rps,
            "cpu_us_per_request": 1e6 / rps if rps else None, "errors": errors, **more}


def test_a_run_that_measured_nothing_is_an_error() -> None:
    """0 requests in the window: at least one error, and the table says the round measured nothing."""
    from sockwork.bench.runs import flag_empty

    empty = flag_empty({"requests": 0, "errors": 0})
    assert empty == {"requests": 0, "errors": 1, "empty_rounds": 1}
    assert flag_empty({"requests": 5, "errors": 0})["empty_rounds"] == 0
    assert reporting._errors({"errors": 1, "empty_rounds": 1, "rounds": 3}) == "1 (measured nothing in 1 of 3 round(s))"
    assert reporting._errors({"errors": 2, "empty_rounds": 0}) == "2"


def test_a_one_round_spread_is_unknown() -> None:
    assert reporting._spread({"rps": 100.0, "rps_rounds": [100.0]}) == "unknown (1 round)"
    assert reporting._spread({"rps": 100.0, "rps_rounds": [90.0, 100.0, 110.0]}) == "20%"


def test_the_summary_names_the_best_dispatcher_without_errors() -> None:
    """The fastest sockwork dispatcher with no errors, with its ratios to stdlib, asyncio streams and bare."""
    import argparse

    from sockwork.bench.placement import FREE

    rows = [_row("stdlib", 100.0), _row("legacy", 300.0), _row("bare-threads", 400.0), _row("pool", 200.0),
            _row("thread", 250.0, errors=1), _row("asyncio-streams", 50.0)]
    args = argparse.Namespace(workloads=["persistent"], placements=[FREE])
    lines = reporting.summary(rows, args)
    assert "| persistent | free | `pool` | 200 | 2.00 | 4.00 | 0.50 | 5,000.0 | 0.50 | 2.00 |" in lines, lines
    every = [_row("stdlib", 100.0), _row("pool", 200.0, errors=3)]
    assert "| persistent | free | every sockwork dispatcher had errors |" in reporting.summary(every, args)[4]


def test_the_default_comparison_has_the_asyncio_dispatcher_and_the_bare_row() -> None:
    assert {"asyncio", "bare-threads"} <= set(workloads.IMPLEMENTATIONS)


def test_the_legacy_module_is_reported_as_ratios_to_the_standard_library() -> None:
    """Per workload and placement: req/s and server CPU per request of the legacy module ÷ the stdlib's,
    and whether it is at least level (both, with no errors)."""
    import argparse

    from sockwork.bench.placement import FREE, Placement

    pinned = Placement("pinned", (0,), (1,))
    rows = [_row("stdlib", 100.0, placement="pinned"), _row("legacy", 105.0, placement="pinned"),
            {**_row("stdlib", 100.0), "workload": "udp"}, {**_row("legacy", 95.0), "workload": "udp"},
            {**_row("pool", 95.0), "workload": "short"}]
    args = argparse.Namespace(workloads=["persistent", "udp", "short"], placements=[pinned, FREE])
    lines = reporting.legacy_summary(rows, args)
    assert "| persistent | pinned | 1.05 | 0.95 | 0, 0 | yes |" in lines, lines
    assert "| udp | free | 0.95 | 1.05 | 0, 0 | no |" in lines, lines
    assert not any(line.startswith("| short |") for line in lines)  # no legacy row there
    assert reporting.legacy_summary([_row("pool", 1.0)], args) == []


def test_help_gives_the_command_lines_of_the_tracked_comparisons() -> None:
    help_text = subprocess.run([sys.executable, "-m", "sockwork", "bench", "--help"], capture_output=True,
                               text=True, timeout=60, check=True).stdout
    assert "sockwork bench --workloads udp,short,persistent --implementations legacy --pin --rounds 3" in help_text
    assert "--pin both --rounds 3" in help_text


def test_no_summary_without_a_sockwork_dispatcher() -> None:
    import argparse

    from sockwork.bench.placement import FREE

    args = argparse.Namespace(workloads=["persistent"], placements=[FREE])
    assert reporting.summary([_row("stdlib", 100.0), _row("legacy", 90.0)], args) == []
