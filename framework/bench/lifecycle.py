"""The two costs outside serving: how long shutdown() takes, and how long the import takes."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from .servers import EchoHandler

IMPORT_RUNS = 5


def shutdown_latency(rounds: int) -> dict[str, float]:
    """Median ms from shutdown() to its return, the loop idle, a stop at a random moment."""
    import socketserver

    from sockwork import Server

    def stdlib() -> Any:
        # Any callable serves at run time; typeshed asks for a BaseRequestHandler subclass.
        s = socketserver.ThreadingTCPServer(("127.0.0.1", 0), EchoHandler)  # type: ignore[arg-type]  # see above
        return s, s.serve_forever, s.shutdown, s.server_close

    def ours() -> Any:
        s = Server(transport="tcp://127.0.0.1:0", dispatcher="thread", handler=EchoHandler)
        return s, s.serve_forever, s.shutdown, s.close

    samples: dict[str, list[float]] = {"stdlib": [], "sockwork": []}
    for _ in range(rounds):
        samples["stdlib"].append(_measure_shutdown(stdlib))
        samples["sockwork"].append(_measure_shutdown(ours))
    return {name: statistics.median(values) for name, values in samples.items()}


def _measure_shutdown(make: Any) -> float:
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


def import_times(runs: int = IMPORT_RUNS) -> dict[str, float]:
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
