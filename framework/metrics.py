"""The Prometheus endpoint: ``metrics = "tcp://HOST:PORT"`` serves ``GET /metrics`` from the server's process.

``Server(..., metrics="tcp://127.0.0.1:9100")`` serves it (``server.metrics.url``);
``observer=`` replaces the built-in :class:`sockwork.observe.TurnMetrics` that
measures turns for it (any :class:`sockwork.observe.Observer`; the endpoint
shows histograms of the built-in one only).

    scrape ──► SideListener (the server's loop, no worker) ──► prometheus_client.generate_latest(registry)
                                                       └── SockworkCollector.collect() ──► observe.read(server)

``prometheus_client`` is an optional extra (``pip install 'sockwork[prometheus]'``):
asking for metrics without it fails at assembly, naming the extra. The names,
labels and meanings are listed in docs/production.md ("Monitoring"); they are
the interface, so they change only with a changelog entry.

Rule 1: a scrape reads; it changes nothing the server counts.
Rule 2: with a supervisor (prefork) every series is labelled ``worker`` (the
worker's slot, 0..N-1, kept by its replacements), and a slot's counters include
its earlier processes': summed over ``worker`` they equal ``server.stats``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, final

from ._side_listener import SideListener
from .errors import ConfigError
from .observe import Observer, Reading, Snapshot, TurnMetrics, read

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["EXTRA", "MetricsEndpoint", "Observer", "checked_observer", "parse_metrics_url", "require_prometheus",
           "serve_metrics"]

EXTRA = "pip install 'sockwork[prometheus]'"

OUTCOMES = ("completed", "failed", "timed_out", "disconnected", "refused")
"""``sockwork_finished_total``'s ``outcome`` label: how requests ended (ServerStats' fields)."""

_GAUGES = (
    # (gauge key, metric name, help, extra label)
    ("connections_idle", "sockwork_connections_waiting",
     "Stream connections the loop holds without a worker, by state: idle (waiting for bytes), ready (readable, "
     "queued for a worker), stage (in a connection stage: PROXY header, TLS handshake).", ("state", "idle")),
    ("connections_ready", "sockwork_connections_waiting", "", ("state", "ready")),
    ("connections_in_stage", "sockwork_connections_waiting", "", ("state", "stage")),
    ("waiting_limit", "sockwork_connections_waiting_limit",
     "The most connections the loop holds at once (limits.max_waiting); at it the server stops accepting.", None),
    ("workers_busy", "sockwork_workers_busy", "Handler turns running now.", None),
    ("workers", "sockwork_workers", "The dispatcher's concurrency: the most handler turns at once.", None),
    ("descriptors_open", "sockwork_descriptors_open", "File descriptors open in the serving process.", None),
    ("descriptors_limit", "sockwork_descriptors_limit", "The serving process's descriptor limit (RLIMIT_NOFILE).",
     None),
)

_HISTOGRAMS = (
    ("turn", "sockwork_turn_duration_seconds", "How long a handler's turn took (one request of a connection)."),
    ("queue_wait", "sockwork_queue_wait_seconds",
     "How long a readable connection waited for a worker (the queueing delay clients feel)."),
    ("received_bytes", "sockwork_connection_received_bytes", "Bytes received per connection (TCP, as counted by "
                                                             "the kernel; a datagram's payload)."),
    ("sent_bytes", "sockwork_connection_sent_bytes", "Bytes sent per connection and acknowledged by the client (TCP)."),
)


def require_prometheus() -> None:
    """Raise a one-line ConfigError naming the extra if ``prometheus_client`` is not installed."""
    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigError(f"metrics: the Prometheus endpoint needs prometheus_client, which is not installed: {EXTRA}")


def parse_metrics_url(url: object) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (``[::1]`` for IPv6; port 0: the OS picks) as ``(host, port)``."""
    problem = f"'metrics' must be a URL tcp://HOST:PORT such as tcp://127.0.0.1:9100, got {url!r}"
    if not isinstance(url, str) or not url.startswith("tcp://"):
        raise ConfigError(problem)
    rest = url[len("tcp://"):].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(problem)
    return host, int(port)


def checked_observer(url: str | None, observer: Observer | None) -> Observer | None:
    """For ``Server(metrics=url, observer=...)``, before anything is bound: the URL and the extra checked
    (ConfigError), and the observer to use (the built-in :class:`TurnMetrics` unless one was given)."""
    if url is None:
        return observer
    require_prometheus()
    parse_metrics_url(url)
    return observer if observer is not None else TurnMetrics()


def serve_metrics(server: Server, url: str | None) -> MetricsEndpoint | None:
    """The server's endpoint at ``url`` (None: none), watched by its loop and closed with it.

    If the endpoint cannot listen, the server (bound already) is closed before the error goes up.
    """
    if url is None:
        return None
    try:
        endpoint = MetricsEndpoint(server, url)
    except BaseException:
        server.loop.close()
        server.transport.close()
        server.dispatcher.close()
        raise
    server.loop.add_reader(endpoint.listener.fileno(), endpoint.listener.run_ready)
    server.lifecycle.side_listeners.append(endpoint.listener)
    return endpoint


@final
class MetricsEndpoint:
    """``/metrics`` of one server, on a listener of its own (see :mod:`sockwork._side_listener`)."""

    def __init__(self, server: Server, url: str) -> None:
        require_prometheus()
        host, port = parse_metrics_url(url)
        from prometheus_client import CollectorRegistry, ProcessCollector  # optional extra, checked above

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SockworkCollector(server))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        try:
            self.listener = SideListener(host, port, self._respond)
        except OSError as exc:
            raise ConfigError(f"metrics: couldn't listen on {url}: {exc}") from None

    @property
    def url(self) -> str:
        host, port = self.listener.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def render(self) -> bytes:
        """The exposition text (Prometheus text format 0.0.4)."""
        from prometheus_client import generate_latest  # an optional extra

        return generate_latest(self.registry)

    def _respond(self, received: bytes, eof: bool) -> bytes | None:
        head, sep, _ = received.partition(b"\r\n\r\n")
        if not sep:
            head, sep, _ = received.partition(b"\n\n")
        if not sep:
            return _reply(400, b"incomplete request\n") if eof else None
        words = head.split(b"\r\n", 1)[0].split()
        if len(words) != 3 or not words[2].startswith(b"HTTP/"):
            return _reply(400, b"not an HTTP request\n")
        method, path = words[0], words[1].split(b"?", 1)[0]
        if path != b"/metrics":
            return _reply(404, b"not found; the metrics are at /metrics\n")
        if method not in (b"GET", b"HEAD"):
            return _reply(405, b"GET /metrics\n", b"Allow: GET, HEAD\r\n")
        from prometheus_client import CONTENT_TYPE_LATEST  # an optional extra

        body = self.render()
        return _reply(200, b"" if method == b"HEAD" else body, content_type=CONTENT_TYPE_LATEST.encode(),
                      length=len(body))

    def close(self) -> None:
        self.listener.close()


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


def _reply(status: int, body: bytes, headers: bytes = b"", content_type: bytes = b"text/plain; charset=utf-8",
           length: int | None = None) -> bytes:
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n"
            % (status, _REASONS[status], content_type, len(body) if length is None else length, headers)) + body


@final
class SockworkCollector:
    """A prometheus_client collector: every figure of :func:`sockwork.observe.read`, as metric families."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def collect(self) -> Iterator[Any]:
        return iter(families(read(self._server)))


def families(reading: Reading) -> list[Any]:
    """The metric families of one reading (names: docs/production.md, "Monitoring")."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily  # optional extra

    supervised = reading.own is None
    base = ["worker"] if supervised else []
    rows: list[tuple[list[str], Snapshot]] = (
        [([str(w.worker)], w.snapshot) for w in reading.workers] if supervised
        else [([], reading.own)]  # type: ignore[list-item]  # own is set when not supervised
    )
    accepted = CounterMetricFamily("sockwork_accepted", "Requests taken from the transport (connections accepted, "
                                                        "datagrams read).", labels=base)
    finished = CounterMetricFamily("sockwork_finished", "Requests that ended, by outcome (completed, failed, "
                                                        "timed_out, disconnected, refused).", labels=[*base, "outcome"])
    rejected = CounterMetricFamily("sockwork_rejected", "Requests closed at once over max_connections "
                                                        "(over_limit = \"close\").", labels=base)
    oversized = CounterMetricFamily("sockwork_oversized", "Datagrams dropped for being larger than "
                                                          "max_packet_size.", labels=base)
    active = GaugeMetricFamily("sockwork_active", "Requests accepted and not yet ended, wherever they are.",
                               labels=base)
    gauges: dict[str, Any] = {}
    for _, name, text, extra in _GAUGES:
        if name not in gauges:
            gauges[name] = GaugeMetricFamily(name, text, labels=[*base, *([extra[0]] if extra else [])])
    histograms = {key: HistogramMetricFamily(name, text, labels=base) for key, name, text in _HISTOGRAMS}
    stages = HistogramMetricFamily("sockwork_stage_duration_seconds", "How long a connection stage took, by stage "
                                   "(proxy: the PROXY header; tls: the handshake).", labels=[*base, "stage"])
    for labels, snap in rows:
        stats = snap.stats
        accepted.add_metric(labels, stats.accepted)
        for outcome in OUTCOMES:
            finished.add_metric([*labels, outcome], getattr(stats, outcome))
        rejected.add_metric(labels, stats.rejected)
        oversized.add_metric(labels, stats.oversized)
        active.add_metric(labels, stats.active)
        for key, name, _, extra in _GAUGES:
            if key in snap.gauges:
                gauges[name].add_metric([*labels, *([extra[1]] if extra else [])], snap.gauges[key])
        for key, histogram in snap.histograms.items():
            buckets = [("+Inf" if bound == float("inf") else repr(float(bound)), count) for bound, count in zip(
                [*histogram.bounds, float("inf")], histogram.cumulative(), strict=True)]
            if key.startswith("stage:"):
                stages.add_metric([*labels, key[len("stage:"):]], buckets, histogram.total)
            elif key in histograms:
                histograms[key].add_metric(labels, buckets, histogram.total)
    out = [accepted, finished, rejected, oversized, active, *gauges.values(), *histograms.values(), stages]
    if supervised:
        info = GaugeMetricFamily("sockwork_worker_info", "1 for each worker slot's current process (label pid).",
                                 labels=["worker", "pid"])
        exits = CounterMetricFamily("sockwork_worker_exits", "Worker processes that ended, by slot and reason "
                                                             "(stopped, recycled, orphaned, crashed).",
                                    labels=["worker", "reason"])
        for worker in reading.workers:
            if worker.pid is not None:
                info.add_metric([str(worker.worker), str(worker.pid)], 1)
            for reason, count in sorted(worker.exits.items()):
                exits.add_metric([str(worker.worker), reason], count)
        out += [info, exits]
    return [family for family in out if family.samples]
