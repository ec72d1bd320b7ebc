"""``sockwork bench``: the command line, the order of the runs, and the report at the end."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from .clients import run_clients
from .holder import hold
from .lifecycle import import_times, shutdown_latency
from .placement import MODES, Placement, pin, placements
from .progress import Progress
from .report import markdown, median_row
from .runs import Refused, one_run
from .servers import serve
from .tls import tls_unavailable
from .workloads import HTTP_IMPLEMENTATIONS, IMPLEMENTATIONS, WORKLOADS, not_applicable, unavailable
from .wrk import WRK_MISSING, one_http_run

DESCRIPTION = "Side-by-side benchmark: sockwork's dispatchers and legacy classes against socketserver."


EPILOG = """\
comparisons the project tracks (one run each, on a quiet machine):
  the legacy module against socketserver: UDP with 8 outstanding datagrams, a new TCP
  connection per request, 32 keep-alive connections; server pinned, 3 rounds:
    sockwork bench --workloads udp,short,persistent --implementations legacy --pin --rounds 3
  the hot path against the bare reference rows, pinned and free, every client counted:
    sockwork bench --workloads persistent,many,short,udp,lines,tls \\
        --implementations legacy,bare-threads,bare-lf,thread,pool,asyncio,asyncio-streams,uvloop-streams \\
        --pin both --rounds 3
  each table gives ratios to the standard library ("× stdlib"), to asyncio streams
  ("× asyncio") and to the bare row ("× bare"); the report ends with the best dispatcher
  per workload and the legacy module's ratios. See docs/performance.md.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with a first word the driver uses, one of its server or client processes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--serve"], ["--client"], ["--hold"]):
        return _child(argv[0], argv[1:])
    args = parse_options(argv)
    results = run_all(args)
    shutdown = shutdown_latency(3 if args.quick else 10)
    args.import_ms = import_times()
    print(markdown(results, shutdown, args))
    if args.json:
        _write_json(args.json, results, shutdown, args)
    return 0


def _child(role: str, argv: list[str]) -> int:
    """One process of a run, as the driver starts it (``runs.py``): its last argument is a JSON object of
    extras, ``cpus`` (pin to these) and ``directory`` (the run's temporary directory)."""
    extra = json.loads(argv[-1]) if argv[-1].startswith("{") else {}
    if role == "--serve":
        return serve(argv[0], argv[1], argv[2], extra.get("cpus"))
    pin(extra.get("cpus"))
    if role == "--client":
        report = run_clients(WORKLOADS[argv[0]], json.loads(argv[1]), int(argv[2]), sys.stdin.fileno(), sys.stdout,
                             extra.get("directory"))
        json.dump(report, sys.stdout)
    else:
        hold(json.loads(argv[0]), int(argv[1]), int(argv[2]), float(argv[3]))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sockwork bench", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs: a few minutes with every workload")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, of: " + ", ".join(WORKLOADS))
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS),
                        help="comma-separated: stdlib, legacy, a sockwork dispatcher (DISPATCHER+metrics: with the "
                             "metrics endpoint on), asyncio-streams, "
                             "uvloop-streams, bare-threads, bare-lf; stdlib is always added first (default: all of "
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
    parser.add_argument("--pin", nargs="?", const="pinned", default="free", metavar="MODE",
                        help="where the server runs (Linux): 'pinned' (the default with no MODE) pins the server "
                             "to one CPU and the load (client processes, wrk) to the others; 'both' measures "
                             "pinned and free in one run and reports free ÷ pinned server CPU per request; "
                             "'free' (the default without --pin): no pinning")
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
    try:
        args.placements = placements(args.pin)
    except ValueError as exc:
        parser.error(f"{exc} (choose from {', '.join(MODES)})")
    implementations = ["stdlib"] + [i for i in args.implementations.split(",") if i and i != "stdlib"]
    args.skipped = [note for note in map(unavailable, implementations) if note]
    args.implementations = [i for i in implementations if unavailable(i) is None]
    http_workloads = [w for w in args.workloads if WORKLOADS[w]["kind"] == "http"]
    args.wrk = shutil.which("wrk")
    args.http_skipped = None
    if http_workloads and args.wrk is None:
        args.http_skipped = WRK_MISSING.format(", ".join(http_workloads))
    args.tls_skipped = tls_unavailable() if any(WORKLOADS[w].get("tls") for w in args.workloads) else None
    args.not_run = []  # (workload, implementation, why): filled as the runs go
    for note in [*args.skipped, *(n for n in (args.http_skipped, args.tls_skipped) if n)]:
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
    """Every workload, every implementation that serves it, in each placement; progress on stderr."""
    plan = {}
    for workload in args.workloads:
        spec = args.specs[workload]
        if not ((spec["kind"] == "http" and args.wrk is None) or (spec.get("tls") and args.tls_skipped)):
            plan[workload] = _chosen(workload, spec, args)
    total = sum(len(chosen) for chosen in plan.values()) * len(args.placements) * args.rounds
    progress = Progress(total, args.warmup + args.duration, sys.stderr)
    results: list[dict[str, Any]] = []
    try:
        for workload, chosen in plan.items():
            results.extend(_run_workload(workload, args.specs[workload], chosen, args, progress))
            progress.say(f"{workload}: done")
    finally:
        progress.close()
    return results


def _chosen(workload: str, spec: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The implementations that serve ``workload``; the others noted with the reason."""
    if spec["kind"] == "http":
        return [i for i in args.implementations if i in HTTP_IMPLEMENTATIONS]  # http.server needs socketserver
    chosen = []
    for implementation in args.implementations:
        why = not_applicable(implementation, spec)
        if why is None:
            chosen.append(implementation)
        else:
            args.not_run.append((workload, implementation, why))
    return chosen


def _run_workload(workload: str, spec: dict[str, Any], chosen: list[str], args: argparse.Namespace,
                  progress: Progress) -> list[dict[str, Any]]:
    """Round after round, each placement, each implementation (A B C A B C: drift hits all alike)."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(p.name, i): [] for p in args.placements for i in chosen}
    for number in range(1, args.rounds + 1):
        for index, placement in enumerate(args.placements):
            for implementation in list(chosen):
                where = f", {placement.name}" if len(args.placements) > 1 or placement.server else ""
                progress.start(f"{workload}: {implementation} (round {number}/{args.rounds}{where})")
                began = time.monotonic()
                try:
                    run = _one(implementation, workload, spec, placement, args)
                except Refused as exc:  # its server cannot serve this workload: said in the report, once
                    chosen.remove(implementation)
                    args.not_run.append((workload, implementation, str(exc)))
                    progress.skip((args.rounds - number + 1) * len(args.placements) - index)
                    continue
                progress.finish(time.monotonic() - began)
                if run["empty_rounds"]:
                    progress.say(f"sockwork bench: error: {implementation} on {workload} measured nothing in "
                                 f"round {number}{where}: no client got a reply in the window")
                runs[(placement.name, implementation)].append(run)
    return [median_row(done) for done in runs.values() if done]


def _one(implementation: str, workload: str, spec: dict[str, Any], placement: Placement,
         args: argparse.Namespace) -> dict[str, Any]:
    if spec["kind"] == "http":
        return one_http_run(implementation, workload, args.warmup, args.duration, args.wrk, placement)
    return one_run(implementation, workload, spec, args.warmup, args.duration, placement)


def _write_json(path: str, results: list[dict[str, Any]], shutdown: dict[str, float],
                args: argparse.Namespace) -> None:
    with open(path, "w") as f:
        json.dump({"results": results, "shutdown_ms": shutdown, "import_ms": args.import_ms,
                   "http_skipped": args.http_skipped, "tls_skipped": args.tls_skipped, "skipped": args.skipped,
                   "not_run": [{"workload": w, "implementation": i, "why": why} for w, i, why in args.not_run],
                   "placements": [p._asdict() for p in args.placements],
                   "workloads": {w: args.specs[w] for w in args.workloads},
                   "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                   "machine": platform.platform(),
                   "cpus": os.cpu_count(), "python": platform.python_version()}, f, indent=2)
