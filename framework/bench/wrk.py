"""The HTTP workloads: http.server on either socketserver, driven by wrk (a C load generator)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from . import measurement as proc
from .placement import FREE, Placement, pin
from .runs import COMMAND, extras, flag_empty, read_address, stop_process
from .workloads import WORKLOADS

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


def one_http_run(implementation: str, workload: str, warmup: float, duration: float, wrk: str,
                 placement: Placement = FREE) -> dict[str, Any]:
    """One server process, driven by wrk: a warm-up run, then the measured run."""
    spec = WORKLOADS[workload]
    directory = tempfile.mkdtemp(prefix="sw-bench-http-")
    with open(os.path.join(directory, "1k.bin"), "wb") as f:
        f.write(os.urandom(spec["size"]))
    script = os.path.join(directory, "report.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    server = subprocess.Popen([*COMMAND, "--serve", implementation, workload, directory, extras(cpus=placement.server)],
                              stdout=subprocess.PIPE, text=True)
    try:
        host, port = read_address(server)
        command = [wrk, f"-t{WRK_THREADS}", f"-c{spec['clients']}", "-s", script, f"http://{host}:{port}/1k.bin"]
        # wrk takes whole seconds
        subprocess.run([*command, f"-d{max(1, round(warmup))}s"], capture_output=True, text=True, timeout=120,
                       check=True, preexec_fn=lambda: pin(placement.load))
        measured = _measure_wrk(server.pid, [*command, f"-d{max(1, round(duration))}s"], placement)
    finally:
        server_status = stop_process(server, 30)
        server.stdout.close()  # type: ignore[union-attr]  # stdout=PIPE
        shutil.rmtree(directory)
    report = measured["report"]
    requests = report["requests"]
    return flag_empty({
        "implementation": implementation, "workload": workload, "placement": placement.name,
        "requests": requests, "errors": report["errors"] + (server_status != 0),
        "rps": requests / report["duration_s"],
        "cpu_us_per_request": measured["cpu"] / requests * 1e6 if requests else None,
        "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"], "p999_ms": report["p999_ms"],
        "max_ms": report["max_ms"], "peak_rss_mib": measured["rss"] / 1024,
        "threads": measured["threads"], "processes": measured["processes"],
    })


def _measure_wrk(pid: int, command: list[str], placement: Placement) -> dict[str, Any]:
    """Run wrk's measured run, sampling the server (``pid``) while it lasts."""
    cpu_before, threads, processes = proc.cpu_seconds(pid), 0, 0
    measured = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: pin(placement.load))  # the driver runs no thread here
    while measured.poll() is None:
        threads = max(threads, proc.status(pid, "Threads"))
        processes = max(processes, 1 + len(proc.descendants(pid)))
        time.sleep(0.05)
    cpu = proc.cpu_seconds(pid) - cpu_before
    rss = proc.status(pid, "VmHWM")
    out, err = measured.communicate()
    if measured.returncode != 0:
        raise RuntimeError(f"wrk failed ({measured.returncode}): {err.strip() or out.strip()}")
    return {"report": parse_wrk_report(out), "cpu": cpu, "rss": rss, "threads": threads, "processes": processes}


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
