"""TLS throughput side by side: sockwork's tls transport (pool) and asyncio's start_server(ssl=...).

``sockwork bench --workloads tls`` measures TLS keep-alive (32 clients) against
``asyncio.start_server(ssl=...)``; this script adds a new connection per request
and stalled handshakes. Run from the repository's root::

    python tests/stress/tls_bench.py [--duration 3] [--clients 8] [--only asyncio,tls-pool,...]

Workloads: ``new`` (a new connection, hence a full handshake, per request)
and ``keepalive`` (one connection per client, request after request). Each
request is 64 bytes, echoed. Servers and the load run in separate processes
(the load in ``--processes`` processes of ``clients/processes`` threads
each), all on loopback. Every client is counted: one that got no reply is an
error. Prints requests/s, p50 and p99 latency, errors, and the ratio to
asyncio. Rows:

- ``asyncio``: ``asyncio.start_server(..., ssl=context)``, an echo coroutine;
- ``tls-pool``: ``sockwork serve --transport tls://... --dispatcher pool`` (the
  handshake in the loop: needs the loop that runs connection stages);
- ``tcp-pool-wrap``: what a handler could do before the tls transport: a
  ``tcp`` pool whose handler wraps the socket and handshakes in the worker.

``--stalled N`` first opens N connections that never send a byte (a stalled
handshake each) and holds them through the run: the issue's "1,000 stalled
handshakes do not delay normal TLS clients" is ``--stalled 1000 --workloads
new``, reading the p99 column.

Needs ``trustme`` (the test extra) for the certificate.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PAYLOAD = b"x" * 64

ASYNCIO_SERVER = r"""
import asyncio, ssl, sys
async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
async def main():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context, backlog=1024)
    print("port", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""

WRAP_HANDLER = r'''
import ssl, sys
CONTEXT = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
CONTEXT.load_cert_chain(sys.argv[-2], sys.argv[-1])

def handle(request, client_address, server):
    sock = CONTEXT.wrap_socket(request, server_side=True)
    try:
        while data := sock.recv(65536):
            sock.sendall(data)
    except (ConnectionError, ssl.SSLError):
        pass
'''


def start(kind: str, directory: Path, workers: int) -> tuple[subprocess.Popen[str], int]:
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    if kind == "asyncio":
        argv = [sys.executable, "-c", ASYNCIO_SERVER, cert, key]
    elif kind == "tls-pool":
        argv = [sys.executable, "-m", "sockwork", "serve", "--transport", "tls://127.0.0.1:0", "--handler", "echo",
                "--dispatcher", "pool", "--workers", str(workers), "--log-level", "WARNING",
                "--option", f"transport.certfile={cert}", "--option", f"transport.keyfile={key}"]
    elif kind == "tcp-pool-wrap":
        (directory / "wrap_handler.py").write_text(WRAP_HANDLER)
        argv = [sys.executable, "-c",
                f"import sys; sys.path.insert(0, {str(directory)!r}); sys.argv[0] = 'sockwork'; "
                "from sockwork._cli import main; sys.exit(main(sys.argv[1:-2]))",
                "serve", "--transport", "tcp://127.0.0.1:0", "--handler", "wrap_handler:handle",
                "--dispatcher", "pool", "--workers", str(workers), "--log-level", "WARNING", cert, key]
    else:
        raise SystemExit(f"unknown server {kind!r}")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=directory)
    line = process.stdout.readline()  # type: ignore[union-attr]
    found = re.search(r"(?:port |:)(\d+)\b", line)
    if not found:
        process.kill()
        raise SystemExit(f"{kind} did not start: {line!r}")
    return process, int(found.group(1))


def client_process(port: int, cafile: str, workload: str, threads: int, start_at: float, duration: float,
                   results: Any) -> None:
    context = ssl.create_default_context(cafile=cafile)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def one_client() -> None:
        mine: list[float] = []
        failed = 0
        sock = None
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + duration
        while time.time() < end:
            began = time.perf_counter()
            try:
                if sock is None:
                    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                    sock = context.wrap_socket(raw, server_hostname="localhost")
                sock.sendall(PAYLOAD)
                got = b""
                while len(got) < len(PAYLOAD):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    got += chunk
                mine.append(time.perf_counter() - began)
            except (OSError, ssl.SSLError):
                failed += 1
                if sock is not None:
                    sock.close()
                sock = None
                continue
            if workload == "new":
                sock.close()
                sock = None
        if sock is not None:
            sock.close()
        if not mine:
            failed += 1  # a client that got no reply in the window is an error
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    pool = [threading.Thread(target=one_client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put((latencies, errors[0]))


def hold(port: int, count: int, ready: Any, done: Any) -> None:
    """Open ``count`` connections that never send anything; keep them until ``done`` is set."""
    held = []
    try:
        for _ in range(count):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        ready.set()
        done.wait()
    finally:
        for sock in held:
            sock.close()


def measure(kind: str, workload: str, directory: Path, clients: int, processes: int, duration: float,
            workers: int, stalled: int = 0) -> dict[str, float]:
    server, port = start(kind, directory, workers)
    holder = None
    done = multiprocessing.Event()
    try:
        if stalled:
            ready = multiprocessing.Event()
            holder = multiprocessing.Process(target=hold, args=(port, stalled, ready, done))
            holder.start()
            if not ready.wait(60):
                raise SystemExit(f"could not open {stalled} stalled connections to {kind}")
        results: Any = multiprocessing.Queue()
        start_at = time.time() + 0.5
        threads = max(1, clients // processes)
        load = [multiprocessing.Process(target=client_process, args=(
            port, str(directory / "ca.pem"), workload, threads, start_at, duration, results))
            for _ in range(processes)]
        for process in load:
            process.start()
        latencies: list[float] = []
        errors = 0
        for _ in load:
            got, failed = results.get(timeout=duration + 60)
            latencies.extend(got)
            errors += failed
        for process in load:
            process.join()
    finally:
        done.set()
        if holder is not None:
            holder.join(30)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()  # type: ignore[union-attr]
    latencies.sort()
    return {
        "rps": len(latencies) / duration,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan"),
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=8, help="pool workers for the sockwork rows")
    parser.add_argument("--only", default="asyncio,tls-pool,tcp-pool-wrap")
    parser.add_argument("--workloads", default="new,keepalive")
    parser.add_argument("--stalled", type=int, default=0, help="connections that stall their handshake, held open")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # servers and the holder inherit it
    import trustme

    with tempfile.TemporaryDirectory(prefix="sw-tls-bench-") as name:
        directory = Path(name)
        ca = trustme.CA()
        issued = ca.issue_cert("localhost", "127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
        issued.private_key_pem.write_to_path(str(directory / "key.pem"))
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        print(f"python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}, {os.cpu_count()} CPUs; "
              f"{args.clients} clients in {args.processes} processes, {args.duration} s per run"
              + (f", {args.stalled} stalled handshakes held open" if args.stalled else ""))
        for workload in args.workloads.split(","):
            print(f"\n{workload}:")
            rows = {kind: measure(kind, workload, directory, args.clients, args.processes, args.duration,
                                  args.workers, args.stalled) for kind in args.only.split(",")}
            base = rows.get("asyncio", {}).get("rps")
            for kind, row in rows.items():
                ratio = f"{row['rps'] / base:5.2f}x asyncio" if base else ""
                print(f"  {kind:<15} {row['rps']:9.0f} req/s  p50 {row['p50_ms']:7.2f} ms  "
                      f"p99 {row['p99_ms']:7.2f} ms  errors {row['errors']:.0f}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
