"""Side-by-side benchmark: sockwork's dispatchers and legacy classes against socketserver.

    python -m sockwork.bench [--quick] [--workloads short,persistent,...] [--json FILE]
    sockwork bench ...   (the same)

Each server runs in a process of its own and is driven by separate client
processes over loopback (or a Unix socket). Every run warms up first; the
implementations take turns round by round (A B C A B C) so that drift of a
shared machine affects all alike. Reported per run: requests/s, latency
percentiles, **server CPU time per request** (the server process tree's
utime+stime, which stays meaningful when the clients share the CPUs), peak
RSS, the most threads and processes seen, errors. The standard library's
classic server is always the reference row; ratios are against it.

Workloads (64-byte echo unless said otherwise):
  short       a new TCP connection per request, 8 clients at a time
  persistent  32 clients, each with one TCP connection, request after request
  large       4 clients, 64 KiB requests over persistent TCP connections
  udp         8 clients with one datagram outstanding each
  unix        8 clients over persistent Unix stream connections
  http10      http.server serving a 1 KiB file, HTTP/1.0 (a connection per request)
  http11      the same with HTTP/1.1 keep-alive

The two HTTP workloads run ``http.server.ThreadingHTTPServer`` with
``SimpleHTTPRequestHandler`` on the standard ``socketserver`` and on
``sockwork.socketserver`` (installed as ``socketserver`` before ``http.server``
is imported), nothing else, and are driven by ``wrk -t1 -c16`` (a C load
generator: the distribution's ``wrk`` package). Without ``wrk`` on PATH they are
skipped, and the report says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

WORKLOADS: dict[str, dict[str, Any]] = {
    "short": {"kind": "tcp", "clients": 8, "size": 64, "persistent": False},
    "persistent": {"kind": "tcp", "clients": 32, "size": 64, "persistent": True},
    "large": {"kind": "tcp", "clients": 4, "size": 65536, "persistent": True},
    "udp": {"kind": "udp", "clients": 8, "size": 64, "persistent": True},
    "unix": {"kind": "unix", "clients": 8, "size": 64, "persistent": True},
    "http10": {"kind": "http", "clients": 16, "size": 1024, "persistent": False, "protocol": "HTTP/1.0"},
    "http11": {"kind": "http", "clients": 16, "size": 1024, "persistent": True, "protocol": "HTTP/1.1"},
}
HTTP_IMPLEMENTATIONS = ("stdlib", "legacy")  # http.server runs on socketserver classes only
WRK_THREADS = 1
WRK_MISSING = ("wrk is not installed (not found on PATH): the HTTP workloads ({}) are skipped. "
               "Install the distribution's package, e.g. `apt-get install wrk`, to run them.")
# wrk reports through this script, in numbers rather than its rounded text ("4.30ms", "3.70k").
WRK_REPORT_MARK = "SOCKWORK-WRK "
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "bytes": %d, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
    .. '"latency_us": {"p50": %d, "p99": %d, "p99.9": %d, "max": %d}}\\n',
    "SOCKWORK-WRK ", summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""
# Implementations: the reference first. "legacy" is sockwork.socketserver's Threading* class.
IMPLEMENTATIONS = ("stdlib", "legacy", "thread", "pool", "prefork")
CLIENT_PROCESSES = 2


# ---- The server side -------------------------------------------------------------

class EchoHandler:
    """The same handler for every implementation: a classic handler class."""

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        if isinstance(request, tuple):
            data, sock = request
            sock.sendto(data, client_address)
            return
        while chunk := request.recv(65536):
            request.sendall(chunk)


def _serve(implementation: str, kind: str, path: str) -> None:
    """Run one server until SIGTERM; print its address first."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # for sigwait below, in every thread
    address: Any = path if kind == "unix" else ("127.0.0.1", 0)
    server: Any
    if kind in ("HTTP/1.0", "HTTP/1.1"):
        server = _http_server(implementation, kind, path)
        bound, stop, run, close = server.server_address, server.shutdown, server.serve_forever, server.server_close
    elif implementation in ("stdlib", "legacy"):
        if implementation == "stdlib":
            import socketserver as module
        else:
            from sockwork import socketserver as module  # type: ignore[no-redef]  # same API, either module
        cls = {"tcp": module.ThreadingTCPServer, "udp": module.ThreadingUDPServer,
               "unix": module.ThreadingUnixStreamServer}[kind]
        server = cls(address, EchoHandler)
        bound = server.server_address
        stop = server.shutdown
        run = server.serve_forever
        close = server.server_close
    else:
        from sockwork import Limits, Server

        url = {"tcp": "tcp://127.0.0.1:0", "udp": "udp://127.0.0.1:0", "unix": f"unix://{path}"}[kind]
        server = Server(transport=url, dispatcher=implementation, handler=EchoHandler, limits=Limits(idle_timeout=None))
        bound, stop, run, close = server.address, server.shutdown, server.serve_forever, server.close
    threading.Thread(target=lambda: (signal.sigwait({signal.SIGTERM}), stop()), daemon=True).start()
    print(json.dumps(bound), flush=True)
    try:
        run()
    finally:
        close()


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


# ---- The client side -------------------------------------------------------------

def _client(workload: str, address: Any, threads: int, start_at: float, warmup: float, duration: float) -> None:
    spec = WORKLOADS[workload]
    payload = os.urandom(spec["size"])
    measure_from, stop_at = start_at + warmup, start_at + warmup + duration
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0}
    lock = threading.Lock()

    def connect() -> socket.socket:
        if spec["kind"] == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(address)
        elif spec["kind"] == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect(tuple(address))
        else:
            sock = socket.create_connection(tuple(address))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(5)
        return sock

    def exchange(sock: socket.socket) -> bool:
        if spec["kind"] == "udp":
            sock.send(payload)
            return sock.recv(65536) == payload
        sock.sendall(payload)
        received = bytearray()
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                return False
            received += chunk
        return received == payload

    def run() -> None:
        mine: list[float] = []
        done = errors = 0
        time.sleep(max(0.0, start_at - time.time()))
        sock = None
        while (now := time.time()) < stop_at:
            began = time.perf_counter()
            try:
                if sock is None:
                    sock = connect()
                ok = exchange(sock)
                if not spec["persistent"]:
                    sock.close()
                    sock = None
            except OSError:
                ok = False
                if sock is not None:
                    sock.close()
                sock = None
            if now >= measure_from:
                mine.append(time.perf_counter() - began)
                done += ok
                errors += not ok
        if sock is not None:
            sock.close()
        with lock:
            latencies.extend(mine)
            counts["requests"] += done
            counts["errors"] += errors

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    json.dump({**counts, "latencies": latencies}, sys.stdout)


# ---- Measuring the server process tree --------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    children = [int(p) for p in f.read().split()]
                found.extend(children)
                todo.extend(children)
        except OSError:
            continue
    return found


def _cpu_seconds(pid: int) -> float:
    """utime+stime of the tree: the process, its reaped children, its live descendants."""
    def fields(p: int) -> list[str]:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    total = 0.0
    try:
        own = fields(pid)
        total += sum(int(x) for x in own[11:15])  # utime, stime, cutime, cstime
    except OSError:
        return 0.0
    for child in _descendants(pid):
        with contextlib.suppress(OSError):  # exited meanwhile: counted in its parent's cutime once reaped
            total += sum(int(x) for x in fields(child)[11:13])
    return total / _TICK


def _status(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---- The driver ---------------------------------------------------------------------

def _one_run(implementation: str, workload: str, warmup: float, duration: float) -> dict[str, Any]:
    spec = WORKLOADS[workload]
    directory = tempfile.mkdtemp(prefix="sw-bench-")
    path = os.path.join(directory, "s.sock")
    server = subprocess.Popen(
        [sys.executable, "-m", "sockwork.bench", "--serve", implementation, spec["kind"], path],
        stdout=subprocess.PIPE, text=True,
    )
    clients: list[subprocess.Popen[str]] = []
    try:
        address = json.loads(server.stdout.readline())  # type: ignore[union-attr]  # stdout=PIPE
        start_at = time.time() + 0.3  # time for the client processes to start
        per_process = max(1, spec["clients"] // CLIENT_PROCESSES)
        for _ in range(min(CLIENT_PROCESSES, spec["clients"])):
            clients.append(subprocess.Popen(
                [sys.executable, "-m", "sockwork.bench", "--client", workload, json.dumps(address),
                 str(per_process), repr(start_at), repr(warmup), repr(duration)],
                stdout=subprocess.PIPE, text=True,
            ))
        time.sleep(max(0.0, start_at + warmup - time.time()))
        cpu_before, threads, processes = _cpu_seconds(server.pid), 0, 0
        while time.time() < start_at + warmup + duration:
            threads = max(threads, _status(server.pid, "Threads")
                          + sum(_status(p, "Threads") for p in _descendants(server.pid)))
            processes = max(processes, 1 + len(_descendants(server.pid)))
            time.sleep(0.05)
        cpu = _cpu_seconds(server.pid) - cpu_before
        rss = _status(server.pid, "VmHWM") + sum(_status(p, "VmHWM") for p in _descendants(server.pid))
        reports = [json.loads(c.communicate(timeout=60)[0]) for c in clients]
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
        server.send_signal(signal.SIGTERM)
        try:
            server_status = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server_status = server.wait()
        server.stdout.close()  # type: ignore[union-attr]  # stdout=PIPE
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(directory)
    latencies = sorted(x for r in reports for x in r["latencies"])
    requests = sum(r["requests"] for r in reports)
    return {
        "implementation": implementation, "workload": workload,
        "requests": requests, "errors": sum(r["errors"] for r in reports) + (server_status != 0),
        "rps": requests / duration, "cpu_us_per_request": cpu / requests * 1e6 if requests else None,
        "p50_ms": _percentile(latencies, 0.50), "p99_ms": _percentile(latencies, 0.99),
        "p999_ms": _percentile(latencies, 0.999), "peak_rss_mib": rss / 1024,
        "threads": threads, "processes": processes,
    }


def _one_http_run(implementation: str, workload: str, warmup: float, duration: float, wrk: str) -> dict[str, Any]:
    """One server process, driven by wrk: a warm-up run, then the measured run."""
    spec = WORKLOADS[workload]
    directory = tempfile.mkdtemp(prefix="sw-bench-http-")
    with open(os.path.join(directory, "1k.bin"), "wb") as f:
        f.write(os.urandom(spec["size"]))
    script = os.path.join(directory, "report.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    server = subprocess.Popen(
        [sys.executable, "-m", "sockwork.bench", "--serve", implementation, spec["protocol"], directory],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        host, port = json.loads(server.stdout.readline())  # type: ignore[union-attr]  # stdout=PIPE
        command = [wrk, f"-t{WRK_THREADS}", f"-c{spec['clients']}", "-s", script, f"http://{host}:{port}/1k.bin"]
        # wrk takes whole seconds
        subprocess.run([*command, f"-d{max(1, round(warmup))}s"], capture_output=True, text=True, timeout=120,
                       check=True)
        cpu_before, threads, processes = _cpu_seconds(server.pid), 0, 0
        measured = subprocess.Popen([*command, f"-d{max(1, round(duration))}s"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        while measured.poll() is None:
            threads = max(threads, _status(server.pid, "Threads"))
            processes = max(processes, 1 + len(_descendants(server.pid)))
            time.sleep(0.05)
        cpu = _cpu_seconds(server.pid) - cpu_before
        rss = _status(server.pid, "VmHWM")
        out, err = measured.communicate()
        if measured.returncode != 0:
            raise RuntimeError(f"wrk failed ({measured.returncode}): {err.strip() or out.strip()}")
        report = parse_wrk_report(out)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server_status = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server_status = server.wait()
        server.stdout.close()  # type: ignore[union-attr]  # stdout=PIPE
        shutil.rmtree(directory)
    requests = report["requests"]
    seconds = report["duration_s"]
    return {
        "implementation": implementation, "workload": workload,
        "requests": requests, "errors": report["errors"] + (server_status != 0),
        "rps": requests / seconds, "cpu_us_per_request": cpu / requests * 1e6 if requests else None,
        "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"], "p999_ms": report["p999_ms"],
        "max_ms": report["max_ms"], "peak_rss_mib": rss / 1024, "threads": threads, "processes": processes,
    }


def parse_wrk_report(output: str) -> dict[str, Any]:
    """The numbers of one wrk run, from the line WRK_SCRIPT's ``done()`` writes.

    ``requests`` counts the 2xx/3xx replies; ``errors`` counts the other
    replies and every socket error wrk saw (connect, read, write, timeout).
    """
    for line in output.splitlines():
        if line.startswith(WRK_REPORT_MARK):
            raw = json.loads(line[len(WRK_REPORT_MARK):])
            break
    else:
        raise ValueError("no report line in wrk's output (was it run with the bench's -s script?):\n" + output)
    errors = raw["errors"]
    latency = raw["latency_us"]
    return {
        "requests": raw["requests"] - errors["status"],
        "errors": errors["status"] + errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "duration_s": raw["duration_us"] / 1e6,
        "p50_ms": latency["p50"] / 1000, "p99_ms": latency["p99"] / 1000,
        "p999_ms": latency["p99.9"] / 1000, "max_ms": latency["max"] / 1000,
    }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] * 1000


def _shutdown_latency(rounds: int) -> dict[str, float]:
    """Median ms from shutdown() to its return, the loop idle, a stop at a random moment."""
    import random
    import socketserver

    from sockwork import Server

    def measure(make: Any) -> float:
        _server, run, stop, close = make()
        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(random.uniform(0.01, 0.5))
        began = time.perf_counter()
        stop()
        elapsed = time.perf_counter() - began
        thread.join()
        close()
        return elapsed * 1000

    def stdlib() -> Any:
        # Any callable serves at run time; typeshed asks for a BaseRequestHandler subclass.
        s = socketserver.ThreadingTCPServer(("127.0.0.1", 0), EchoHandler)  # type: ignore[arg-type]  # see above
        return s, s.serve_forever, s.shutdown, s.server_close

    def ours() -> Any:
        s = Server(transport="tcp://127.0.0.1:0", dispatcher="thread", handler=EchoHandler)
        return s, s.serve_forever, s.shutdown, s.close

    samples: dict[str, list[float]] = {"stdlib": [], "sockwork": []}
    for _ in range(rounds):
        samples["stdlib"].append(measure(stdlib))
        samples["sockwork"].append(measure(ours))
    return {name: statistics.median(values) for name, values in samples.items()}


IMPORT_RUNS = 5


def _import_times(runs: int = IMPORT_RUNS) -> dict[str, float]:
    """Best-of-``runs`` ms to import the drop-in and the standard module, each in a fresh interpreter."""
    def best(module: str) -> float:
        times = []
        for _ in range(runs):
            result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                                    capture_output=True, text=True, check=True)
            lines = [line for line in result.stderr.splitlines() if line.rstrip().endswith(f"| {module}")]
            times.append(int(lines[-1].split("|")[1]) / 1000)  # cumulative microseconds of that import
        return min(times)

    return {"stdlib": best("socketserver"), "sockwork": best("sockwork.socketserver")}


def _markdown(results: list[dict[str, Any]], shutdown: dict[str, float], args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
        f"{args.rounds} round(s) per implementation, {args.duration:g} s each after {args.warmup:g} s warm-up; "
        "medians over rounds.",
        "",
    ]
    for workload in args.workloads:
        rows = [r for r in results if r["workload"] == workload]
        if WORKLOADS[workload]["kind"] == "http":
            lines += _http_markdown(workload, rows, args)
            continue
        reference = rows[0]
        lines += [
            f"### {workload}: {WORKLOADS[workload]['clients']} clients, {WORKLOADS[workload]['size']}-byte requests"
            + ("" if WORKLOADS[workload]["persistent"] else ", a connection per request"),
            "",
            "| implementation | req/s | × stdlib | p50 ms | p99 ms | p99.9 ms | server CPU µs/req | × stdlib | "
            "peak RSS MiB | threads | processes | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:  # a reference that served nothing gives no ratio ("–"), not a crash
            lines.append(
                f"| {_label(row['implementation'], workload)} | {row['rps']:,.0f} | "
                f"{_ratio(row['rps'], reference['rps'])} | {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | "
                f"{_ms(row['p999_ms'])} | {row['cpu_us_per_request'] or float('nan'):.1f} | "
                f"{_ratio(row['cpu_us_per_request'], reference['cpu_us_per_request'])} | "
                f"{row['peak_rss_mib']:.1f} | {row['threads']} | {row['processes']} | {row['errors']} |"
            )
        lines.append("")
    lines += [
        "### shutdown() of a running serve_forever()",
        "",
        "| implementation | median ms |",
        "|---|---:|",
        f"| socketserver.ThreadingTCPServer | {shutdown['stdlib']:.3f} |",
        f"| sockwork Server (thread) | {shutdown['sockwork']:.3f} |",
        "",
        f"### Import time (best of {IMPORT_RUNS}, python -X importtime)",
        "",
        "| module | ms | ratio |",
        "|---|---:|---:|",
        f"| socketserver | {args.import_ms['stdlib']:.1f} | 1.00 |",
        f"| sockwork.socketserver | {args.import_ms['sockwork']:.1f} | "
        f"{args.import_ms['sockwork'] / args.import_ms['stdlib']:.2f} |",
        "",
    ]
    return "\n".join(lines)


def _http_markdown(workload: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    spec = WORKLOADS[workload]
    what = "keep-alive" if spec["persistent"] else "a connection per request"
    title = (f"### {workload}: http.server, {spec['protocol']} ({what}), a {spec['size']}-byte file, "
             f"`wrk -t{WRK_THREADS} -c{spec['clients']}`")
    lines = [title, ""]
    if not rows:
        return [*lines, f"Skipped: {args.http_skipped}", ""]
    reference = rows[0]
    lines += [
        ("| implementation | req/s | × stdlib | p50 ms | p99 ms | p99.9 ms | max ms | server CPU µs/req | × stdlib | "
         "peak RSS MiB | threads | errors |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {_label(row['implementation'], workload)} | {row['rps']:,.0f} | "
            f"{_ratio(row['rps'], reference['rps'])} | {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | "
            f"{_ms(row['p999_ms'])} | {_ms(row['max_ms'])} | {row['cpu_us_per_request'] or float('nan'):.1f} | "
            f"{_ratio(row['cpu_us_per_request'], reference['cpu_us_per_request'])} | {row['peak_rss_mib']:.1f} | "
            f"{row['threads']} | {row['errors']} |"
        )
    return [*lines, ""]


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value and reference else "–"


def _label(implementation: str, workload: str) -> str:
    kind = WORKLOADS[workload]["kind"]
    if kind == "http":
        module = "socketserver" if implementation == "stdlib" else "sockwork.socketserver"
        return f"http.server.ThreadingHTTPServer on {module}"
    cls = {"tcp": "ThreadingTCPServer", "udp": "ThreadingUDPServer", "unix": "ThreadingUnixStreamServer"}[kind]
    return {"stdlib": f"socketserver.{cls}", "legacy": f"sockwork.socketserver.{cls}"}.get(
        implementation, f"sockwork `{implementation}`")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = dict(runs[0])
    for key in ("rps", "cpu_us_per_request", "p50_ms", "p99_ms", "p999_ms", "peak_rss_mib"):
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = statistics.median(values) if values else None
    for key in ("requests", "errors"):
        row[key] = sum(r[key] for r in runs)
    for key in ("threads", "processes"):
        row[key] = max(r[key] for r in runs)
    row["p999_ms"] = max((r["p999_ms"] for r in runs if r["p999_ms"] is not None), default=None)
    if "max_ms" in row:
        row["max_ms"] = max(r["max_ms"] for r in runs)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        _serve(argv[1], argv[2], argv[3])
        return 0
    if argv[:1] == ["--client"]:
        _client(argv[1], json.loads(argv[2]), int(argv[3]), float(argv[4]), float(argv[5]), float(argv[6]))
        return 0
    parser = argparse.ArgumentParser(prog="sockwork bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs: about a minute with every workload")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, of: " + ", ".join(WORKLOADS))
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS),
                        help="comma-separated; stdlib is always added first (default: all)")
    parser.add_argument("--rounds", type=int, help="runs per implementation, interleaved (default 3; quick 1)")
    parser.add_argument("--duration", type=float,
                        help="measured seconds per run "
                             "(default 2; quick 0.3; wrk rounds it to whole seconds, at least 1)")
    parser.add_argument("--warmup", type=float,
                        help="warm-up seconds per run (default 1.5; quick 1.1): longer than the 1 s after "
                             "which a dropped connection attempt is retried, so every client is connected")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (0.3 if args.quick else 2.0)
    args.warmup = args.warmup or (1.1 if args.quick else 1.5)
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    implementations = ["stdlib"] + [i for i in args.implementations.split(",") if i and i != "stdlib"]
    http_workloads = [w for w in args.workloads if WORKLOADS[w]["kind"] == "http"]
    wrk = shutil.which("wrk")
    args.http_skipped = None
    if http_workloads and wrk is None:
        args.http_skipped = WRK_MISSING.format(", ".join(http_workloads))
        print(f"sockwork bench: {args.http_skipped}", file=sys.stderr, flush=True)
    results: list[dict[str, Any]] = []
    for workload in args.workloads:
        http = workload in http_workloads
        if http and wrk is None:
            continue
        chosen = [i for i in implementations if i in HTTP_IMPLEMENTATIONS] if http else implementations
        runs: dict[str, list[dict[str, Any]]] = {i: [] for i in chosen}
        for _ in range(args.rounds):
            for implementation in chosen:  # A B C A B C: drift hits all alike
                if http:
                    assert wrk is not None  # without wrk, HTTP workloads were skipped above
                    run = _one_http_run(implementation, workload, args.warmup, args.duration, wrk)
                else:
                    run = _one_run(implementation, workload, args.warmup, args.duration)
                runs[implementation].append(run)
        results.extend(_median_row(runs[i]) for i in chosen)
        print(f"{workload}: done", file=sys.stderr, flush=True)
    shutdown = _shutdown_latency(3 if args.quick else 10)
    args.import_ms = _import_times()
    print(_markdown(results, shutdown, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "shutdown_ms": shutdown, "import_ms": args.import_ms,
                       "http_skipped": args.http_skipped,
                       "machine": platform.platform(),
                       "cpus": os.cpu_count(), "python": platform.python_version()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
