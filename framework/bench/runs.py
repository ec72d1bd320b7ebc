"""One measured run of a socket workload: a server process, its client processes, the window."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from . import measurement as proc
from . import tls
from .placement import FREE, Placement
from .tally import tally_clients

CLIENT_PROCESSES = 2
COMMAND = [sys.executable, "-m", "sockwork.bench"]


def client_split(clients: int, processes: int = CLIENT_PROCESSES) -> list[int]:
    """How many clients each client process runs: as even as can be, none empty."""
    return [n for n in (clients // processes + (i < clients % processes) for i in range(processes)) if n]


def stop_process(process: subprocess.Popen[str], timeout: float) -> int:
    """SIGTERM one process we started, by its PID; SIGKILL it if it has not exited within ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class Refused(Exception):
    """The server could not be built for the workload; the message says why (one line)."""


def extras(**values: Any) -> str:
    """The last argument of a run's child process (see ``command._child``)."""
    return json.dumps({key: value for key, value in values.items() if value is not None})


def read_address(server: subprocess.Popen[str]) -> Any:
    """The address the server printed, or Refused with the reason it printed instead."""
    line = server.stdout.readline()  # type: ignore[union-attr]  # stdout=PIPE
    if not line:
        raise RuntimeError(f"the server ended before printing its address (status {server.wait()})")
    printed = json.loads(line)
    if isinstance(printed, dict) and "refused" in printed:
        raise Refused(printed["refused"])
    return printed


def flag_empty(row: dict[str, Any]) -> dict[str, Any]:
    """A run that measured nothing (no request answered in the window) is an error, never a clean row."""
    row["empty_rounds"] = int(row["requests"] == 0)
    if row["requests"] == 0:
        row["errors"] = max(row["errors"], 1)
    return row


def one_run(implementation: str, workload: str, spec: dict[str, Any], warmup: float,
            duration: float, placement: Placement = FREE) -> dict[str, Any]:
    """One server process, its clients (and, for ``silent``, the holder of waiting connections)."""
    run = _Run(implementation, workload, spec, placement)
    try:
        run.start()
        run.load()
        run.measure(warmup, duration)
    finally:
        run.stop()
    return flag_empty(run.result(duration))


class _Run:
    """The processes of one run and what was read from them, in the order they happen."""

    def __init__(self, implementation: str, workload: str, spec: dict[str, Any], placement: Placement) -> None:
        self.implementation, self.workload, self.spec, self.placement = implementation, workload, spec, placement
        self.directory = tempfile.mkdtemp(prefix="sw-bench-")
        self.server: subprocess.Popen[str] | None = None
        self.clients: list[subprocess.Popen[str]] = []
        self.holder: subprocess.Popen[str] | None = None
        self.held: dict[str, Any] = {}
        self.waiting = spec.get("silent", 0) + spec.get("trickle", 0)
        self.server_status = 0

    def start(self) -> None:
        """The server, its address, and its size before any client."""
        path = os.path.join(self.directory, "s.sock")
        if self.spec.get("tls"):
            tls.make_certificates(self.directory)
        self.server = subprocess.Popen([*COMMAND, "--serve", self.implementation, self.workload, path,
                                        extras(cpus=self.placement.server)], stdout=subprocess.PIPE, text=True)
        self.address = read_address(self.server)
        time.sleep(0.2)  # the server's imports and threads settle
        self.rss_before, self.fds_before = proc.tree_rss_kib(self.server.pid), proc.tree_fds(self.server.pid)

    def load(self) -> None:
        """The holder (if any) and the client processes, each set up; the server's size loaded."""
        assert self.server is not None
        spec = self.spec
        if self.waiting:
            self.holder = subprocess.Popen(
                [*COMMAND, "--hold", json.dumps(self.address), str(spec.get("silent", 0)),
                 str(spec.get("trickle", 0)), repr(spec.get("trickle_every", 2.0)), extras(cpus=self.placement.load)],
                stdout=subprocess.PIPE, text=True)
            self.held = json.loads(self.holder.stdout.readline())  # type: ignore[union-attr]  # stdout=PIPE
            self.fds_loaded = proc.settled_fds(self.server.pid)  # the server has taken what it will of them
            self.rss_loaded = proc.tree_rss_kib(self.server.pid)
        for share in client_split(spec["clients"]):
            self.clients.append(subprocess.Popen(
                [*COMMAND, "--client", self.workload, json.dumps(self.address), str(share),
                 extras(cpus=self.placement.load, directory=self.directory)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        # Every client process sets up (bounded by SETUP_LIMIT), then says how many of its clients were answered.
        self.answered_at_setup = sum(json.loads(c.stdout.readline())["answered"]  # type: ignore[union-attr]
                                     for c in self.clients)
        if not self.waiting:  # every client that could connect has
            self.rss_loaded, self.fds_loaded = proc.tree_rss_kib(self.server.pid), proc.tree_fds(self.server.pid)

    def measure(self, warmup: float, duration: float) -> None:
        """Announce the window, sample the server through it, collect the reports."""
        assert self.server is not None
        pid = self.server.pid
        start_at = time.time() + warmup
        for client in self.clients:
            client.stdin.write(json.dumps({"start": start_at, "stop": start_at + duration}) + "\n")  # type: ignore[union-attr]
            client.stdin.close()  # type: ignore[union-attr]
        time.sleep(max(0.0, start_at - time.time()))
        cpu_before, self.threads, self.processes = proc.cpu_seconds(pid), 0, 0
        while time.time() < start_at + duration:
            self.threads = max(self.threads, sum(proc.status(p, "Threads") for p in proc.tree(pid)))
            self.processes = max(self.processes, len(proc.tree(pid)))
            time.sleep(0.05)
        self.cpu = proc.cpu_seconds(pid) - cpu_before
        self.rss = sum(proc.status(p, "VmHWM") for p in proc.tree(pid))
        self.reports = [json.loads(c.stdout.read()) for c in self.clients]  # type: ignore[union-attr]  # stdout=PIPE
        if self.holder is not None:
            self.holder.send_signal(signal.SIGTERM)
            self.held = {**self.held, **json.loads(self.holder.communicate(timeout=60)[0].splitlines()[-1])}

    def stop(self) -> None:
        """Every process of the run stopped by its PID, the temporary directory removed."""
        for process in [*self.clients, *([self.holder] if self.holder else [])]:
            stop_process(process, 5)
            if process.stdout:
                process.stdout.close()
        if self.server is not None:
            self.server_status = stop_process(self.server, 30)
            self.server.stdout.close()  # type: ignore[union-attr]  # stdout=PIPE
        shutil.rmtree(self.directory)

    def result(self, duration: float) -> dict[str, Any]:
        """The run's row: every client counted, the server's CPU per request, what it held."""
        counted = tally_clients([c for r in self.reports for c in r["clients"]])
        latencies = sorted(x for r in self.reports for x in r["latencies"])
        requests = counted["requests"]
        conns = self.fds_loaded - self.fds_before
        return {
            "implementation": self.implementation, "workload": self.workload, "placement": self.placement.name,
            **counted,
            "answered_at_setup": self.answered_at_setup,
            "errors": counted["errors"] + (self.server_status != 0), "server_exit": self.server_status,
            "rps": requests / duration, "cpu_us_per_request": self.cpu / requests * 1e6 if requests else None,
            "p50_ms": proc.percentile(latencies, 0.50), "p99_ms": proc.percentile(latencies, 0.99),
            "p999_ms": proc.percentile(latencies, 0.999), "peak_rss_mib": self.rss / 1024,
            "threads": self.threads, "processes": self.processes,
            # What holding connections costs the server: descriptors it took, and resident memory per one.
            "conns_held": conns, "rss_kib_per_conn": (self.rss_loaded - self.rss_before) / conns if conns > 0 else None,
            **({"waiting_opened": self.held["established"], "waiting_pending": self.held["pending"],
                "waiting_closed_by_server": self.held.get("closed_by_server")} if self.waiting else {}),
        }
