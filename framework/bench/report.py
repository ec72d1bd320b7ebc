"""The report: rows from rounds, and Markdown tables with their ratios."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from typing import Any

from .bare import BARE
from .lifecycle import IMPORT_RUNS
from .workloads import CLASSIC, PEERS, WORKLOADS
from .wrk import WRK_THREADS


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a run per round: medians, except the worst round for p99.9 and fairness, and sums of errors."""
    row = dict(runs[0])

    def median(key: str) -> Any:
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    for key in ("rps", "cpu_us_per_request", "p50_ms", "p99_ms", "peak_rss_mib", "median_per_client",
                "conns_held", "rss_kib_per_conn", "waiting_opened"):
        if key in row:
            row[key] = median(key)
    row["rps_rounds"] = [r["rps"] for r in runs]
    for key in ("requests", "errors", "failed", "unanswered", "waiting_closed_by_server", "empty_rounds"):
        if key in row:
            row[key] = sum(r[key] or 0 for r in runs)
    for key in ("threads", "processes"):
        row[key] = max(r[key] for r in runs)
    row["p999_ms"] = max((r["p999_ms"] for r in runs if r["p999_ms"] is not None), default=None)
    if "max_ms" in row:
        row["max_ms"] = max(r["max_ms"] for r in runs)
    if "fewest" in row:  # the worst round: a client starved in one round of three was starved
        worst = min(runs, key=lambda r: (r["answered"] - r["clients"], -1 if r["fewest"] is None else r["fewest"]))
        row["answered"], row["fewest"] = worst["answered"], worst["fewest"]
    row["rounds"] = len(runs)
    return row


def markdown(results: list[dict[str, Any]], shutdown: dict[str, float], args: argparse.Namespace) -> str:
    """The whole report: the machine, every workload's table, shutdown() and import time."""
    lines = [
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
        f"{args.rounds} round(s) per implementation, {args.duration:g} s each after {args.warmup:g} s warm-up; "
        "medians over rounds (p99.9 and the fairness columns: the worst round; errors: all rounds)."
        + (" With one round the spread of req/s is unknown: run --rounds 3 (or more) to see it."
           if args.rounds == 1 else " Spread: (highest − lowest) ÷ median req/s over the rounds."),
        "",
    ]
    lines += [f"Skipped: {note}" for note in args.skipped] + ([""] if args.skipped else [])
    for workload in args.workloads:
        rows = [r for r in results if r["workload"] == workload]
        lines += _workload_markdown(workload, args.specs[workload], rows, args)
    lines += summary(results, args) + legacy_summary(results, args)
    return "\n".join(lines + _lifecycle_tables(shutdown, args.import_ms))


def _workload_markdown(workload: str, spec: dict[str, Any], rows: list[dict[str, Any]],
                       args: argparse.Namespace) -> list[str]:
    """A workload's title, what did not run and why, a table per placement, free ÷ pinned."""
    http = spec["kind"] == "http"
    lines = [_http_title(workload) if http else _title(workload, spec), ""]
    skipped = args.http_skipped if http else args.tls_skipped if spec.get("tls") else None
    if skipped and not rows:
        return [*lines, f"Skipped: {skipped}", ""]
    not_run = [f"Not run: {implementation}: {why}." for w, implementation, why in args.not_run if w == workload]
    lines += [*not_run, ""] if not_run else []
    for placement in args.placements:
        if placement.server is not None or len(args.placements) > 1:
            description = placement.describe()
            lines += [f"{description[0].upper()}{description[1:]}:", ""]
        group = [r for r in rows if r.get("placement", "free") == placement.name]
        lines += [*(_http_table(workload, group) if http else _table(workload, spec, group)), ""]
    if len(args.placements) > 1:
        lines += _free_over_pinned(workload, rows)
    return lines


def summary(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The best sockwork dispatcher per workload (and placement), by req/s among rows without errors."""
    lines = ["### Summary: the best sockwork dispatcher per workload", "",
             "| workload | placement | dispatcher | req/s | × stdlib | × asyncio streams | × bare | "
             "server CPU µs/req | CPU × stdlib | CPU × bare |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for workload in args.workloads:
        for placement in args.placements:
            rows = [r for r in results if r["workload"] == workload and r.get("placement", "free") == placement.name]
            line = _summary_line(workload, placement.name, rows) if rows else None
            if line is not None:
                lines.append(line)
    if len(lines) == 4:
        return []
    return [*lines, "", "The best by req/s among sockwork's dispatchers without errors (a row says so when each had "
            "errors; a workload none of them ran is left out); ratios as in the tables.", ""]


def legacy_summary(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """sockwork.socketserver against socketserver, the same classic handler: ratios per workload (issue 24)."""
    lines = ["### sockwork.socketserver against socketserver (the same handler code)", "",
             "| workload | placement | req/s × stdlib | server CPU/req × stdlib | errors (stdlib, legacy) | "
             "at least level |", "|---|---|---:|---:|---:|---|"]
    for workload in args.workloads:
        for placement in args.placements:
            rows = {r["implementation"]: r for r in results
                    if r["workload"] == workload and r.get("placement", "free") == placement.name}
            stdlib, legacy = rows.get("stdlib"), rows.get("legacy")
            if stdlib is None or legacy is None:
                continue
            rps = legacy["rps"] / stdlib["rps"] if legacy["rps"] and stdlib["rps"] else None
            cpu_ratio = _ratio(legacy["cpu_us_per_request"], stdlib["cpu_us_per_request"])
            level = (rps is not None and rps >= 1.0 and cpu_ratio != "–" and float(cpu_ratio) <= 1.0
                     and not legacy["errors"])
            lines.append(f"| {workload} | {placement.name} | {_ratio(legacy['rps'], stdlib['rps'])} | {cpu_ratio} | "
                         f"{stdlib['errors']}, {legacy['errors']} | {'yes' if level else 'no'} |")
    if len(lines) == 4:
        return []
    return [*lines, "", "At least level: ≥ 1.00× the standard library's req/s at ≤ 1.00× its server CPU per "
            "request, with no errors (medians over the rounds; compare pinned runs).", ""]


def _summary_line(workload: str, placement: str, rows: list[dict[str, Any]]) -> str | None:
    reference = rows[0]
    peer = next((r for r in rows if r["implementation"] == "asyncio-streams"), None)
    bare = next((r for r in rows if r["implementation"] in BARE), None)
    ours = [r for r in rows if r["implementation"] not in (*CLASSIC, *PEERS, *BARE)]
    clean = [r for r in ours if not r["errors"]]
    if not ours:
        return None  # none was asked for (or none serves the workload)
    if not clean:
        return f"| {workload} | {placement} | every sockwork dispatcher had errors | | | | | | | |"
    best = max(clean, key=lambda r: r["rps"])
    cpu = best["cpu_us_per_request"]
    peer_rps = peer["rps"] if peer else None
    bare_rps, bare_cpu = (bare["rps"], bare["cpu_us_per_request"]) if bare else (None, None)
    return (f"| {workload} | {placement} | `{best['implementation']}` | {best['rps']:,.0f} | "
            f"{_ratio(best['rps'], reference['rps'])} | {_ratio(best['rps'], peer_rps)} | "
            f"{_ratio(best['rps'], bare_rps)} | {_number(cpu)} | "
            f"{_ratio(cpu, reference['cpu_us_per_request'])} | {_ratio(cpu, bare_cpu)} |")


def _free_over_pinned(workload: str, rows: list[dict[str, Any]]) -> list[str]:
    """Server CPU per request free on every CPU next to pinned to one: a convoy shows as a ratio over 1."""
    pinned = {r["implementation"]: r for r in rows if r.get("placement") == "pinned"}
    lines = ["Server CPU per request, free ÷ pinned:", "",
             "| implementation | pinned µs/req | free µs/req | free ÷ pinned |", "|---|---:|---:|---:|"]
    for row in rows:
        other = pinned.get(row["implementation"])
        if row.get("placement") != "free" or other is None:
            continue
        lines.append(f"| {_label(row['implementation'], workload)} | {_number(other['cpu_us_per_request'])} | "
                     f"{_number(row['cpu_us_per_request'])} | "
                     f"{_ratio(row['cpu_us_per_request'], other['cpu_us_per_request'])} |")
    return [*lines, ""]


def _lifecycle_tables(shutdown: dict[str, float], import_ms: dict[str, float]) -> list[str]:
    return [
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
        f"| socketserver | {import_ms['stdlib']:.1f} | 1.00 |",
        f"| sockwork.socketserver | {import_ms['sockwork']:.1f} | "
        f"{import_ms['sockwork'] / import_ms['stdlib']:.2f} |",
        "",
    ]


def _title(workload: str, spec: dict[str, Any]) -> str:
    what = f"{spec['clients']:,} clients, {spec['size']}-byte requests"
    if spec["protocol"] == "lines":
        what = f"{spec['clients']:,} clients, {spec['size']}-byte lines"
    what += " over TLS" if spec.get("tls") else ""
    what += "" if spec["persistent"] else ", a connection per request"
    if spec.get("silent") or spec.get("trickle"):
        what += (f", while {spec.get('silent', 0):,} silent connections and {spec.get('trickle', 0):,} sending "
                 f"a byte every {spec.get('trickle_every', 2.0):g} s are held open")
    return f"### {workload}: {what} (sockwork runs `{spec['handler']}`, limits {spec['limits']})"


Column = tuple[str, Any]  # a header and a function of the row that gives the cell


def _table(workload: str, spec: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """One workload's rows: throughput and its ratios, latency, CPU, what the server held, every client counted."""
    if not rows:
        return ["No implementation ran."]
    columns = _rate_columns(workload, rows) + _held_columns(spec) + _client_columns()
    header = "| " + " | ".join(name for name, _ in columns) + " |"
    rule = "|---|" + "---:|" * (len(columns) - 1)
    return [header, rule, *("| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows)]


def _rate_columns(workload: str, rows: list[dict[str, Any]]) -> list[Column]:
    """The implementation, req/s with its ratios, latencies, CPU per request with its ratio."""
    reference = rows[0]
    peer = next((r for r in rows if r["implementation"] == "asyncio-streams"), None)
    bare = next((r for r in rows if r["implementation"] in BARE), None)
    columns: list[Column] = [
        ("implementation", lambda r: _label(r["implementation"], workload)),
        ("req/s", lambda r: f"{r['rps']:,.0f}"),
        ("spread", _spread),
        ("× stdlib", lambda r: _ratio(r["rps"], reference["rps"])),
    ]
    if peer is not None:
        columns.append(("× asyncio", lambda r: _ratio(r["rps"], peer["rps"])))
    if bare is not None:
        columns.append(("× bare", lambda r: _ratio(r["rps"], bare["rps"])))
    columns += [("p50 ms", lambda r: _ms(r["p50_ms"])),
                ("p99 ms", lambda r: _ms(r["p99_ms"])),
                ("p99.9 ms", lambda r: _ms(r["p999_ms"])),
                ("server CPU µs/req", lambda r: _number(r["cpu_us_per_request"])),
                ("× stdlib", lambda r: _ratio(r["cpu_us_per_request"], reference["cpu_us_per_request"]))]
    if bare is not None:
        columns.append(("× bare", lambda r: _ratio(r["cpu_us_per_request"], bare["cpu_us_per_request"])))
    return columns


def _held_columns(spec: dict[str, Any]) -> list[Column]:
    """What the server held: memory, threads, processes, and for crowds the connections and RSS per one."""
    waiting = bool(spec.get("silent") or spec.get("trickle"))
    columns: list[Column] = [
        ("peak RSS MiB", lambda r: f"{r['peak_rss_mib']:.1f}"),
        ("threads", lambda r: str(r["threads"])),
        ("processes", lambda r: str(r["processes"])),
    ]
    if spec["client"] == "mux":
        columns += [
            ("connections held" if not waiting else "waiting connections held", lambda r: f"{r['conns_held']:,}"),
            ("RSS KiB/connection", lambda r: _number(r["rss_kib_per_conn"])),
        ]
    if waiting:
        columns.append(("waiting closed by server", lambda r: str(r.get("waiting_closed_by_server", "–"))))
    return columns


def _client_columns() -> list[Column]:
    """Every client counted: how many were answered, the fewest replies next to the median, errors."""
    return [
        ("clients answered", lambda r: f"{r['answered']:,}/{r['clients']:,}"),
        ("fewest / median", lambda r: f"{r['fewest']:,} / {r['median_per_client']:,.0f}"
         if r["fewest"] is not None else "–"),
        ("errors", _errors),
    ]


def _spread(row: dict[str, Any]) -> str:
    """(highest − lowest) ÷ median req/s over the rounds; "unknown" with one round."""
    values = row.get("rps_rounds") or [row["rps"]]
    if len(values) < 2:
        return "unknown (1 round)"
    return f"{(max(values) - min(values)) / row['rps']:.0%}" if row["rps"] else "–"


def _errors(row: dict[str, Any]) -> str:
    """The errors, and the rounds that measured nothing at all (each one an error too)."""
    empty = row.get("empty_rounds") or 0
    if not empty:
        return f"{row['errors']:,}"
    return f"{row['errors']:,} (measured nothing in {empty} of {row.get('rounds', 1)} round(s))"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def _http_title(workload: str) -> str:
    spec = WORKLOADS[workload]
    what = "keep-alive" if spec["persistent"] else "a connection per request"
    return (f"### {workload}: http.server, {spec['protocol']} ({what}), a {spec['size']}-byte file, "
            f"`wrk -t{WRK_THREADS} -c{spec['clients']}`")


def _http_table(workload: str, rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["No implementation ran."]
    reference = rows[0]
    lines = [
        ("| implementation | req/s | spread | × stdlib | p50 ms | p99 ms | p99.9 ms | max ms | server CPU µs/req | "
         "× stdlib | peak RSS MiB | threads | errors |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {_label(row['implementation'], workload)} | {row['rps']:,.0f} | {_spread(row)} | "
            f"{_ratio(row['rps'], reference['rps'])} | {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | "
            f"{_ms(row['p999_ms'])} | {_ms(row['max_ms'])} | {_number(row['cpu_us_per_request'])} | "
            f"{_ratio(row['cpu_us_per_request'], reference['cpu_us_per_request'])} | {row['peak_rss_mib']:.1f} | "
            f"{row['threads']} | {_errors(row)} |"
        )
    return lines


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value and reference else "–"


def _label(implementation: str, workload: str) -> str:
    kind = WORKLOADS[workload]["kind"]
    if kind == "http":
        module = "socketserver" if implementation == "stdlib" else "sockwork.socketserver"
        return f"http.server.ThreadingHTTPServer on {module}"
    if implementation in BARE:
        return f"bare threads ({BARE[implementation]})"
    if WORKLOADS[workload].get("tls"):
        return _tls_label(implementation)
    if implementation == "asyncio-streams":
        return "asyncio streams" if kind != "udp" else "asyncio datagram endpoint"
    if implementation == "uvloop-streams":
        return "uvloop streams" if kind != "udp" else "uvloop datagram endpoint"
    cls = {"tcp": "ThreadingTCPServer", "udp": "ThreadingUDPServer", "unix": "ThreadingUnixStreamServer"}[kind]
    return {"stdlib": f"socketserver.{cls}", "legacy": f"sockwork.socketserver.{cls}"}.get(
        implementation, f"sockwork `{implementation}`")


def _tls_label(implementation: str) -> str:
    return {"stdlib": "socketserver.ThreadingTCPServer, the handler wraps the socket (ssl)",
            "legacy": "sockwork.socketserver.ThreadingTCPServer, the handler wraps the socket (ssl)",
            "asyncio-streams": "asyncio start_server(ssl=...)",
            "uvloop-streams": "uvloop start_server(ssl=...)"}.get(implementation, f"sockwork `{implementation}`, tls")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
