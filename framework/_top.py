"""``sockwork top URL``: a live view of a running server, read from its metrics endpoint.

    every --interval: GET URL ──► prometheus_client's text parser ──► rows (the server, and each prefork worker)
                                                                        ├── a terminal: a table redrawn (rich)
                                                                        └── otherwise: plain lines, one per row
    --json: one snapshot (cumulative figures; quantiles over the server's lifetime) on stdout, then exit

The same numbers as the endpoint (docs/production.md, "Monitoring"); rates and
quantiles in the live view are over the last interval. ``rich`` draws the
table where it is installed (``pip install 'sockwork[top]'``) and stdout is a
terminal; anything else gets plain lines.
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from .metrics import EXTRA, OUTCOMES

__all__ = ["main", "read_rows", "snapshot"]

COUNTERS = ("accepted", *OUTCOMES, "rejected")
GAUGES = {
    "sockwork_active": "active", "sockwork_workers_busy": "busy", "sockwork_workers": "workers",
    "sockwork_connections_waiting_limit": "waiting_limit", "sockwork_descriptors_open": "fds",
    "sockwork_descriptors_limit": "fds_limit",
}
HISTOGRAMS = {"sockwork_turn_duration_seconds": "turn", "sockwork_queue_wait_seconds": "queue_wait"}

Row = dict[str, Any]


def metrics_url(url: str) -> str:
    """``tcp://HOST:PORT`` (as given to --metrics) or ``http://HOST:PORT`` → ``http://HOST:PORT/metrics``."""
    if url.startswith("tcp://"):
        url = "http://" + url[len("tcp://"):]
    if "://" not in url:
        url = "http://" + url
    _, _, rest = url.partition("://")
    if "/" not in rest:
        url += "/metrics"
    return url


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode("utf-8"))


def read_rows(text: str) -> tuple[Row, list[Row]]:
    """The server's row (workers summed) and one row per prefork worker (empty for other dispatchers).

    A row holds the counters (``accepted``, ``completed``, ...), gauges (``active``, ``busy``, ``workers``,
    ``idle``, ``ready``, ``stage``, ``fds``, ``fds_limit``, ``waiting_limit``) and the two latency
    histograms' cumulative buckets (``turn``, ``queue_wait``: ``[[le, count], ...]``).
    """
    from prometheus_client.parser import text_string_to_metric_families  # an optional extra (main checks it)

    workers: dict[str, Row] = {}
    total: Row = {}

    def row_of(labels: Mapping[str, str]) -> list[Row]:
        worker = labels.get("worker")
        if worker is None:
            return [total]
        return [total, workers.setdefault(worker, {"worker": worker})]

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "sockwork_worker_info":
                workers.setdefault(labels["worker"], {"worker": labels["worker"]})["pid"] = int(labels["pid"])
                continue
            key: str | None = None
            if name == "sockwork_accepted_total":
                key = "accepted"
            elif name == "sockwork_finished_total":
                key = labels.get("outcome")
            elif name == "sockwork_rejected_total":
                key = "rejected"
            elif name == "sockwork_connections_waiting":
                key = labels.get("state")
            elif name in GAUGES:
                key = GAUGES[name]
            elif name.endswith("_bucket") and name[:-len("_bucket")] in HISTOGRAMS:
                for row in row_of(labels):
                    buckets = row.setdefault(HISTOGRAMS[name[:-len("_bucket")]], {})
                    buckets[labels["le"]] = buckets.get(labels["le"], 0) + value
                continue
            if key is None:
                continue
            for row in row_of(labels):
                row[key] = row.get(key, 0) + value
    for row in [total, *workers.values()]:
        for name in HISTOGRAMS.values():
            if name in row:
                row[name] = sorted(([float(le), count] for le, count in row[name].items()), key=lambda b: b[0])
    return total, [workers[w] for w in sorted(workers, key=int)]


def quantile(q: float, buckets: list[list[float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative ``[[le, count], ...]`` buckets; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return lower_bound


def _minus(now: list[list[float]] | None, before: list[list[float]] | None) -> list[list[float]]:
    if not now:
        return []
    if not before or len(before) != len(now):
        return now
    return [[le, count - old] for (le, count), (_, old) in zip(now, before, strict=True)]


def summarize(row: Row, before: Row | None = None, seconds: float | None = None) -> Row:
    """A row for people: counters, gauges, p50/p99 in ms (over the interval when ``before`` is given), req/s."""
    out: Row = {key: row[key] for key in ("worker", "pid") if key in row}
    for key in (*COUNTERS, "active", "busy", "workers", "idle", "ready", "stage", "fds", "fds_limit",
                "waiting_limit"):
        if key in row:
            out[key] = int(row[key])
    finished = sum(row.get(key, 0) for key in OUTCOMES)
    out["finished"] = int(finished)
    for name in HISTOGRAMS.values():
        buckets = _minus(row.get(name), before.get(name) if before else None)
        for q in (0.5, 0.99):
            value = quantile(q, buckets)
            out[f"{name}_p{round(q * 100)}_ms"] = None if value is None else round(value * 1000, 3)
    if before is not None and seconds:
        out["requests_per_second"] = round(
            (finished - sum(before.get(key, 0) for key in OUTCOMES)) / seconds, 1)
    return out


def snapshot(url: str) -> dict[str, Any]:
    """What ``--json`` prints: the server's row and each worker's (cumulative; quantiles over all time)."""
    total, workers = read_rows(fetch(url))
    return {"url": url, "time": time.time(), "server": summarize(total),
            "workers": [summarize(worker) for worker in workers]}


_COLUMNS = (("worker", "worker"), ("pid", "pid"), ("requests_per_second", "req/s"), ("active", "active"),
            ("busy", "busy"), ("workers", "of"), ("ready", "ready"), ("idle", "idle"), ("stage", "stage"),
            ("turn_p50_ms", "turn p50 ms"), ("turn_p99_ms", "turn p99 ms"), ("queue_wait_p99_ms", "wait p99 ms"),
            ("finished", "finished"), ("failed", "failed"), ("timed_out", "timed out"), ("fds", "fds"))


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _plain(rows: list[Row]) -> str:
    stamp = time.strftime("%H:%M:%S")
    return "\n".join(f"{stamp} " + " ".join(f"{title.replace(' ', '_')}={_cell(row.get(key))}"
                                            for key, title in _COLUMNS if key in row) for row in rows)


def _table(url: str, rows: list[Row], error: str | None) -> Any:
    from rich.table import Table  # an optional extra, imported where a terminal shows the table

    table = Table(title=f"sockwork top  {url}  {time.strftime('%H:%M:%S')}", caption=error)
    keys = [(key, title) for key, title in _COLUMNS if any(key in row for row in rows)]
    for _, title in keys:
        table.add_column(title, justify="right")
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for key, _ in keys))
    return table


def main(url: str, *, as_json: bool = False, interval: float = 1.0, count: int | None = None) -> int:
    """``sockwork top``: 0 after --json or --count refreshes, 1 if the endpoint cannot be read (--json),
    2 without prometheus_client."""
    try:
        import prometheus_client.parser  # noqa: F401 -- needed to read the endpoint
    except ImportError:
        print(f"sockwork top: reading metrics needs prometheus_client, which is not installed: {EXTRA}",
              file=sys.stderr)
        return 2
    if not interval > 0:
        print(f"sockwork top: --interval must be > 0 seconds, got {interval}", file=sys.stderr)
        return 2
    url = metrics_url(url)
    if as_json:
        try:
            print(json.dumps(snapshot(url), indent=2))
        except (OSError, ValueError) as exc:
            print(f"sockwork top: cannot read {url}: {exc}", file=sys.stderr)
            return 1
        return 0
    _live(url, interval, count)
    return 0


def _live(url: str, interval: float, count: int | None) -> None:
    """Refresh every ``interval`` seconds until Ctrl-C (or ``count`` refreshes): a table, or plain lines."""
    live = None
    if sys.stdout.isatty():
        try:
            from rich.live import Live  # an optional extra: plain lines without it

            live = Live(auto_refresh=False)
        except ImportError:
            live = None
    before: tuple[Row, list[Row], float] | None = None
    shown = 0
    try:
        if live is not None:
            live.start()
        while count is None or shown < count:
            error = None
            rows: list[Row] = []
            try:
                total, workers = read_rows(fetch(url))
                now = time.monotonic()
                previous = before
                seconds = now - previous[2] if previous else None
                rows = [summarize(total, previous[0] if previous else None, seconds)]
                old = {w.get("worker"): w for w in previous[1]} if previous else {}
                rows += [summarize(w, old.get(w.get("worker")), seconds) for w in workers]
                rows[0]["worker"] = "all"
                before = (total, workers, now)
            except (OSError, ValueError) as exc:
                error = f"cannot read {url}: {exc}"
            if live is not None:
                live.update(_table(url, rows, error), refresh=True)
            else:
                print(_plain(rows) if error is None else f"{time.strftime('%H:%M:%S')} {error}", flush=True)
            shown += 1
            if count is None or shown < count:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
