"""A load generator for the stress tests, run as its own process (no shared GIL).

    python loadclient.py HOST PORT --connections 500 --requests 40 [--short] [--fail-every 10]

Persistent mode: ``connections`` clients connect at once; each sends
``requests`` lines one after another over its connection and checks every
echo. ``--short``: every request is a connection of its own (``connections``
requests in all, ``--parallel`` at a time). With ``--fail-every N`` every
Nth request asks the server to fail (a line starting ``fail``), and an empty
reply is expected for it. Prints one JSON object; bounded by ``--deadline``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time


def read_line(sock: socket.socket, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            line = bytes(buffer)
            buffer.clear()
            return line
        buffer += chunk
    end = buffer.index(b"\n") + 1
    line = bytes(buffer[:end])
    del buffer[:end]
    return line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args()

    results = {"ok": 0, "expected_failures": 0, "errors": 0, "first_errors": []}
    lock = threading.Lock()
    started = time.monotonic()

    def record(key: str, detail: str = "") -> None:
        with lock:
            results[key] += 1
            if key == "errors" and len(results["first_errors"]) < 10:
                results["first_errors"].append(detail)

    def exchange(sock: socket.socket, buffer: bytearray, number: int) -> None:
        failing = args.fail_every and number % args.fail_every == 0
        line = (b"fail %d\n" if failing else b"request %d\n") % number
        sock.sendall(line)
        reply = read_line(sock, buffer)
        if failing:
            record("expected_failures" if reply == b"" else "errors", f"{number}: wanted EOF, got {reply!r}")
        elif reply == line:
            record("ok")
        else:
            record("errors", f"{number}: sent {line!r}, got {reply!r}")

    def persistent(index: int) -> None:
        try:
            with socket.create_connection((args.host, args.port), timeout=args.deadline) as sock:
                buffer = bytearray()
                for i in range(args.requests):
                    exchange(sock, buffer, index * args.requests + i + 1)
        except OSError as exc:
            record("errors", f"connection {index}: {exc!r}")

    def short(numbers: range) -> None:
        for number in numbers:
            if time.monotonic() - started > args.deadline:
                record("errors", "deadline passed")
                return
            try:
                with socket.create_connection((args.host, args.port), timeout=args.deadline) as sock:
                    exchange(sock, bytearray(), number)
            except OSError as exc:
                record("errors", f"request {number}: {exc!r}")

    if args.short:
        threads = [threading.Thread(target=short, args=(range(i + 1, args.connections + 1, args.parallel),))
                   for i in range(args.parallel)]
    else:
        threads = [threading.Thread(target=persistent, args=(i,)) for i in range(args.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results["seconds"] = round(time.monotonic() - started, 3)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
