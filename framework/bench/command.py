"""``sockwork bench``: the command line, the order of the runs, and the report at the end."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from .clients import run_clients
from .holder import hold
from .lifecycle import import_times, shutdown_latency
from .report import markdown, median_row
from .runs import one_run
from .servers import serve
from .workloads import HTTP_IMPLEMENTATIONS, IMPLEMENTATIONS, WORKLOADS, unavailable
from .wrk import WRK_MISSING, one_http_run

DESCRIPTION = "Side-by-side benchmark: sockwork's dispatchers and legacy classes against socketserver."


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with a first word the driver uses, one of its server or client processes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        serve(argv[1], argv[2], argv[3])
        return 0
    if argv[:1] == ["--client"]:
        json.dump(run_clients(WORKLOADS[argv[1]], json.loads(argv[2]), int(argv[3]), sys.stdin.fileno(), sys.stdout),
                  sys.stdout)
        return 0
    if argv[:1] == ["--hold"]:
        hold(json.loads(argv[1]), int(argv[2]), int(argv[3]), float(argv[4]))
        return 0
    args = parse_options(argv)
    results = run_all(args)
    shutdown = shutdown_latency(3 if args.quick else 10)
    args.import_ms = import_times()
    print(markdown(results, shutdown, args))
    if args.json:
        _write_json(args.json, results, shutdown, args)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sockwork bench", description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="short runs: a few minutes with every workload")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, of: " + ", ".join(WORKLOADS))
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS),
                        help="comma-separated: stdlib, legacy, a sockwork dispatcher, asyncio-streams, "
                             "uvloop-streams; stdlib is always added first (default: all of "
                             + ", ".join(IMPLEMENTATIONS) + ")")
    parser.add_argument("--rounds", type=int, help="runs per implementation, interleaved (default 3; quick 1)")
    parser.add_argument("--duration", type=float,
                        help="measured seconds per run "
                             "(default 2; quick 0.3; wrk rounds it to whole seconds, at least 1)")
    parser.add_argument("--warmup", type=float,
                        help="warm-up seconds per run (default 1.5; quick 1.1), counted from when every "
                             "client process has set up (its clients connected and answered once, see above)")
    parser.add_argument("--clients", type=int, metavar="N",
                        help="clients per workload instead of each workload's own number (not the HTTP ones)")
    parser.add_argument("--silent", type=int, metavar="N", help="silent connections held open by 'silent' (2000)")
    parser.add_argument("--trickle", type=int, metavar="N",
                        help="connections trickling a byte every 2 s held open by 'silent' (100)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser


def parse_options(argv: list[str]) -> argparse.Namespace:
    """The command line, checked, with each workload's spec and what is skipped (said on stderr)."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (0.3 if args.quick else 2.0)
    args.warmup = args.warmup or (1.1 if args.quick else 1.5)
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    for flag in ("clients", "silent", "trickle"):
        if getattr(args, flag) is not None and getattr(args, flag) < (1 if flag == "clients" else 0):
            parser.error(f"--{flag} must be >= {1 if flag == 'clients' else 0}, got {getattr(args, flag)}")
    args.specs = {workload: _spec(workload, args) for workload in args.workloads}
    implementations = ["stdlib"] + [i for i in args.implementations.split(",") if i and i != "stdlib"]
    args.skipped = [note for note in map(unavailable, implementations) if note]
    args.implementations = [i for i in implementations if unavailable(i) is None]
    http_workloads = [w for w in args.workloads if WORKLOADS[w]["kind"] == "http"]
    args.wrk = shutil.which("wrk")
    args.http_skipped = None
    if http_workloads and args.wrk is None:
        args.http_skipped = WRK_MISSING.format(", ".join(http_workloads))
    for note in [*args.skipped, *([args.http_skipped] if args.http_skipped else [])]:
        print(f"sockwork bench: skipped: {note}", file=sys.stderr, flush=True)
    return args


def _spec(workload: str, args: argparse.Namespace) -> dict[str, Any]:
    """The workload's spec with the command line's --clients, --silent and --trickle."""
    spec = dict(WORKLOADS[workload])
    if spec["kind"] != "http":
        overrides = {"clients": args.clients, "silent": args.silent if "silent" in spec else None,
                     "trickle": args.trickle if "trickle" in spec else None}
        spec.update({key: value for key, value in overrides.items() if value is not None})
    return spec


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every workload, every implementation, round after round (A B C A B C: drift hits all alike)."""
    results: list[dict[str, Any]] = []
    for workload in args.workloads:
        spec = args.specs[workload]
        http = spec["kind"] == "http"
        if http and args.wrk is None:
            continue
        chosen = [i for i in args.implementations if i in HTTP_IMPLEMENTATIONS] if http else args.implementations
        runs: dict[str, list[dict[str, Any]]] = {i: [] for i in chosen}
        for _ in range(args.rounds):
            for implementation in chosen:
                if http:
                    run = one_http_run(implementation, workload, args.warmup, args.duration, args.wrk)
                else:
                    run = one_run(implementation, workload, spec, args.warmup, args.duration)
                runs[implementation].append(run)
        results.extend(median_row(runs[i]) for i in chosen)
        print(f"{workload}: done", file=sys.stderr, flush=True)
    return results


def _write_json(path: str, results: list[dict[str, Any]], shutdown: dict[str, float],
                args: argparse.Namespace) -> None:
    with open(path, "w") as f:
        json.dump({"results": results, "shutdown_ms": shutdown, "import_ms": args.import_ms,
                   "http_skipped": args.http_skipped, "skipped": args.skipped,
                   "workloads": {w: args.specs[w] for w in args.workloads},
                   "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                   "machine": platform.platform(),
                   "cpus": os.cpu_count(), "python": platform.python_version()}, f, indent=2)
