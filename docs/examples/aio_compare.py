"""Side by side, in one run: sockwork's ``asyncio`` dispatcher against asyncio's own servers (issue 12).

    python docs/examples/aio_compare.py [--seconds 3] [--rounds 2] [--idle 10000]

Each server runs in its own process; one load process (uvloop protocols when
installed, else asyncio) drives it. Reported per server and workload: requests
per second, the server's CPU per request (utime + stime from /proc, over the
measured window) and fairness (fewest / most replies of one client). Rounds
alternate the servers so that drift on the machine hits all of them alike.
Every client's every reply is checked; a missing or wrong reply is an error.

Workloads: ``keepalive`` (32 clients, 64-byte ping-pong on one connection each),
``connect`` (16 clients, a new connection per request), ``udp`` (32 clients,
one datagram out, one back), and ``idle`` (``--idle`` silent connections held
by sockwork-asyncio while 32 clients are served: RSS per idle connection and
the clients' p99 latency). Measuring, not a test: no assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

SERVERS = {
    "keepalive": ["sockwork-asyncio", "sockwork-uvloop", "asyncio-streams", "uvloop-streams", "asyncio-protocol",
                  "uvloop-protocol"],
    "connect": ["sockwork-asyncio", "sockwork-uvloop", "asyncio-streams", "uvloop-streams"],
    "udp": ["sockwork-asyncio", "sockwork-uvloop", "asyncio-protocol", "uvloop-protocol"],
}
SIZE = 64
TICKS = os.sysconf("SC_CLK_TCK")


# ---- Servers (each in its own process) ----------------------------------------------------

async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _EchoDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


def serve(kind: str, udp: bool, idle: int) -> None:
    """Print the port, then serve until stdin closes."""
    name, _, flavour = kind.partition("-")
    if name == "sockwork":
        import logging

        from sockwork import Limits, Server
        logging.basicConfig(level=logging.WARNING)
        limits = Limits(max_connections=idle + 1000, idle_timeout=600)
        server = Server("udp://127.0.0.1:0" if udp else "tcp://127.0.0.1:0", "echo", "asyncio",
                        dispatcher_options={"loop": "uvloop" if flavour == "uvloop" else "asyncio"}, limits=limits)
        import threading

        threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
        print(server.address[1], flush=True)
        server.serve_forever()
        server.close()
        return
    if name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    async def main() -> None:
        if udp:
            transport, _ = await loop.create_datagram_endpoint(_EchoDatagram, local_addr=("127.0.0.1", 0))
            port = transport.get_extra_info("sockname")[1]
        elif flavour == "streams":
            srv = await asyncio.start_server(_echo, "127.0.0.1", 0, backlog=1024)
            port = srv.sockets[0].getsockname()[1]
        else:
            srv = await loop.create_server(_EchoProtocol, "127.0.0.1", 0, backlog=1024)
            port = srv.sockets[0].getsockname()[1]
        print(port, flush=True)
        await loop.run_in_executor(None, sys.stdin.read)

    loop.run_until_complete(main())


# ---- Load (one process) --------------------------------------------------------------------

def _client_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


async def _keepalive(port: int, clients: int, seconds: float, latencies: list[float] | None) -> dict[str, Any]:
    counts = [0] * clients
    errors = 0
    stop = time.monotonic() + seconds

    async def one(i: int) -> None:
        nonlocal errors
        payload = (b"%04d" % i).ljust(SIZE, b".")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < stop:
                began = time.perf_counter()
                writer.write(payload)
                if await reader.readexactly(SIZE) != payload:
                    errors += 1
                    return
                if latencies is not None:
                    latencies.append(time.perf_counter() - began)
                counts[i] += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(one(i) for i in range(clients)))
    return {"counts": counts, "errors": errors}


async def _connect(port: int, clients: int, seconds: float) -> dict[str, Any]:
    counts = [0] * clients
    errors = 0
    stop = time.monotonic() + seconds

    async def one(i: int) -> None:
        nonlocal errors
        payload = (b"%04d" % i).ljust(SIZE, b".")
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(payload)
                ok = await reader.readexactly(SIZE) == payload
                writer.close()
            except (OSError, asyncio.IncompleteReadError):
                ok = False
            if not ok:
                errors += 1
            else:
                counts[i] += 1

    await asyncio.gather(*(one(i) for i in range(clients)))
    return {"counts": counts, "errors": errors}


async def _udp(port: int, clients: int, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    counts = [0] * clients
    errors = 0
    stop = time.monotonic() + seconds

    class Client(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.waiter: asyncio.Future[bytes] | None = None

        def datagram_received(self, data: bytes, addr: Any) -> None:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(data)

    async def one(i: int) -> None:
        nonlocal errors
        payload = (b"%04d" % i).ljust(SIZE, b".")
        transport, protocol = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
        try:
            while time.monotonic() < stop:
                protocol.waiter = loop.create_future()
                transport.sendto(payload)
                try:
                    reply = await asyncio.wait_for(protocol.waiter, 1.0)
                except TimeoutError:
                    errors += 1  # lost: counted, and the client goes on
                    continue
                if reply == payload:
                    counts[i] += 1
                else:
                    errors += 1
        finally:
            transport.close()

    await asyncio.gather(*(one(i) for i in range(clients)))
    return {"counts": counts, "errors": errors}


def load(workload: str, port: int, seconds: float) -> None:
    loop = _client_loop()
    if workload == "keepalive":
        result = loop.run_until_complete(_keepalive(port, 32, seconds, None))
    elif workload == "connect":
        result = loop.run_until_complete(_connect(port, 16, seconds))
    else:
        result = loop.run_until_complete(_udp(port, 32, seconds))
    print(json.dumps(result))


def idle_load(port: int, idle: int, seconds: float) -> None:
    """Hold ``idle`` silent connections, report when they are open, then serve 32 keep-alive clients."""
    loop = _client_loop()

    async def main() -> None:
        held = []
        for _ in range(idle):
            sock = socket.create_connection(("127.0.0.1", port))
            held.append(sock)
        print("held", flush=True)
        sys.stdin.readline()  # the parent has measured the server's memory
        latencies: list[float] = []
        result = await _keepalive(port, 32, seconds, latencies)
        latencies.sort()
        result["p99_ms"] = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None
        for sock in held:
            sock.close()
        print(json.dumps(result), flush=True)

    loop.run_until_complete(main())


# ---- The run ---------------------------------------------------------------------------------

def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _start_server(kind: str, udp: bool, idle: int = 0) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen([sys.executable, __file__, "serve", kind, "udp" if udp else "tcp", str(idle)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return server, int(server.stdout.readline())  # type: ignore[union-attr]


def _stop(server: subprocess.Popen[str]) -> None:
    server.stdin.close()  # type: ignore[union-attr]
    server.wait(10)
    server.stdout.close()  # type: ignore[union-attr]


def measure(workload: str, kind: str, seconds: float) -> dict[str, Any]:
    server, port = _start_server(kind, workload == "udp")
    try:
        before = _cpu(server.pid)
        started = time.monotonic()
        out = subprocess.run([sys.executable, __file__, "load", workload, str(port), str(seconds)],
                             capture_output=True, text=True, check=True).stdout
        elapsed = time.monotonic() - started
        cpu = _cpu(server.pid) - before
    finally:
        _stop(server)
    result = json.loads(out)
    total = sum(result["counts"])
    return {"rps": total / seconds, "cpu_us": cpu / max(total, 1) * 1e6, "errors": result["errors"],
            "fairness": f"{min(result['counts'])}/{max(result['counts'])}", "elapsed": elapsed}


def measure_idle(idle: int, seconds: float) -> dict[str, Any]:
    server, port = _start_server("sockwork-asyncio", False, idle)
    try:
        time.sleep(0.5)
        base = _rss_kib(server.pid)
        client = subprocess.Popen([sys.executable, __file__, "idle", str(port), str(idle), str(seconds)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        time.sleep(1.0)  # let the server take them all over
        held = _rss_kib(server.pid)
        threads = len(os.listdir(f"/proc/{server.pid}/task"))
        client.stdin.write("go\n")  # type: ignore[union-attr]
        client.stdin.flush()  # type: ignore[union-attr]
        result = json.loads(client.stdout.readline())  # type: ignore[union-attr]
        client.wait(30)
        client.stdin.close()  # type: ignore[union-attr]
        client.stdout.close()  # type: ignore[union-attr]
    finally:
        _stop(server)
    return {"kib_per_idle": (held - base) / idle, "threads": threads, "p99_ms": result["p99_ms"],
            "rps": sum(result["counts"]) / seconds, "errors": result["errors"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--workloads", default="keepalive,connect,udp,idle")
    args = parser.parse_args()
    for workload in args.workloads.split(","):
        if workload == "idle":
            r = measure_idle(args.idle, args.seconds)
            print(f"idle: {args.idle} idle connections: {r['kib_per_idle']:.2f} KiB each, {r['threads']} threads "
                  f"in the server; meanwhile 32 clients: {r['rps']:,.0f} req/s, p99 {r['p99_ms']:.2f} ms, "
                  f"errors {r['errors']}", flush=True)
            continue
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in SERVERS[workload]}
        for round_ in range(args.rounds):
            order = SERVERS[workload] if round_ % 2 == 0 else SERVERS[workload][::-1]
            for kind in order:
                results[kind].append(measure(workload, kind, args.seconds))
        base = sum(r["rps"] for r in results[SERVERS[workload][2]]) / args.rounds
        print(f"{workload}: (ratio against {SERVERS[workload][2]})", flush=True)
        for kind, runs in results.items():
            rps = sum(r["rps"] for r in runs) / len(runs)
            cpu = sum(r["cpu_us"] for r in runs) / len(runs)
            errors = sum(r["errors"] for r in runs)
            print(f"  {kind:18} {rps:>9,.0f} req/s  {rps / base:5.2f}x  {cpu:6.1f} us CPU/req  errors {errors}  "
                  f"fairness {' '.join(r['fairness'] for r in runs)}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3] == "udp", int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "load":
        load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "idle":
        idle_load(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        main()
