"""How long shutdown() takes to stop a running serve_forever(): sockwork vs socketserver.

Run:  python tests/bench_shutdown.py [--rounds N]

Both servers run in the same process, interleaved round by round (A B A B)
so that machine drift affects both alike. Reports median and p90 in
milliseconds and the ratio of medians. Not part of the test suite: timings
belong in benchmarks, not assertions.
"""

from __future__ import annotations

import argparse
import random
import socketserver  # the reference we compare against
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from sockwork import Server
from sockwork.handlers import echo


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        echo(self.request, self.client_address, self.server)


def _stdlib() -> tuple[Any, Callable[[], None], Callable[[], None]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    return server, server.shutdown, server.server_close


def _sockwork() -> tuple[Any, Callable[[], None], Callable[[], None]]:
    server = Server(transport="tcp://127.0.0.1:0", dispatcher="thread", handler=echo)
    return server, server.shutdown, server.close


def measure(make: Callable[[], tuple[Any, Callable[[], None], Callable[[], None]]]) -> float:
    """Seconds from calling shutdown() to its return, with the loop idle in select."""
    server, shutdown, close = make()
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    # A stop signal arrives at a random moment of the loop's wait, as in real life.
    time.sleep(random.uniform(0.01, 0.5))
    started = time.perf_counter()
    shutdown()
    elapsed = time.perf_counter() - started
    thread.join()
    close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="measurements per implementation (default 20)")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"socketserver.ThreadingTCPServer": [], "sockwork Server (thread)": []}
    for _ in range(args.rounds):
        results["socketserver.ThreadingTCPServer"].append(measure(_stdlib))
        results["sockwork Server (thread)"].append(measure(_sockwork))
    print("| implementation | median ms | p90 ms |")
    print("|---|---:|---:|")
    medians = {}
    for name, samples in results.items():
        samples.sort()
        medians[name] = statistics.median(samples)
        p90 = samples[int(0.9 * (len(samples) - 1))]
        print(f"| {name} | {medians[name] * 1000:.3f} | {p90 * 1000:.3f} |")
    ratio = medians["socketserver.ThreadingTCPServer"] / medians["sockwork Server (thread)"]
    print(f"\nsockwork's shutdown() returns {ratio:.0f}x sooner (median, {args.rounds} rounds each).")


if __name__ == "__main__":
    main()
