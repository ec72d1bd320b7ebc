"""The Prometheus endpoint: ``metrics = "tcp://HOST:PORT"`` serves ``GET /metrics`` from the server's process.

``Server(..., metrics="tcp://127.0.0.1:9100")`` serves it (``server.metrics.url``);
``observer=`` replaces the built-in :class:`sockwork.observe.TurnMetrics` that
measures turns for it (any :class:`sockwork.observe.Observer`; the endpoint
shows histograms of the built-in one only).

    scrape ──► SideListener "metrics" (the server's loop, no worker) ──► prometheus_client.generate_latest(registry)
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

from ._side_listener import SideListener, http_answer
from .errors import ConfigError
from .observe import Observer, Reading, Snapshot, TurnMetrics, read
from .validators import check_listener_url

if TYPE_CHECKING:
    from ._health import ListenerAddress
    from ._server import Server

__all__ = ["EXTRA", "MetricsEndpoint", "Observer", "metrics_endpoint", "require_prometheus"]

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


def metrics_endpoint(server: Server, address: ListenerAddress, observer: Observer | None,
                     ) -> tuple[MetricsEndpoint | None, Observer | None]:
    """For ``Server(metrics=..., observer=...)``, before anything is bound: the address and the extra
    checked (ConfigError), the endpoint built and added to ``server.side_listeners`` (bound and answered
    with the others, by the server's loop), and the observer to use (the built-in one unless given)."""
    where = check_listener_url(address, "metrics")
    if where is None:
        return None, observer
    require_prometheus()
    endpoint = MetricsEndpoint(server, where)
    server.side_listeners["metrics"] = endpoint.listener
    return endpoint, observer if observer is not None else TurnMetrics()


@final
class MetricsEndpoint:
    """``GET /metrics`` of one server, on a side listener of its own (see :mod:`sockwork._side_listener`)."""

    def __init__(self, server: Server, address: tuple[str, int] | int) -> None:
        require_prometheus()
        from prometheus_client import CollectorRegistry, ProcessCollector  # optional extra, checked above

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SockworkCollector(server))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.listener = SideListener("metrics", address, http_answer({"/metrics": self._route}), reads_request=True)

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics``, once the listener is bound."""
        host, port = self.listener.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def render(self) -> bytes:
        """The exposition text (Prometheus' text format)."""
        from prometheus_client import generate_latest  # an optional extra

        return generate_latest(self.registry)

    def _route(self) -> tuple[int, str, bytes]:
        from prometheus_client import CONTENT_TYPE_LATEST  # an optional extra

        return 200, CONTENT_TYPE_LATEST, self.render()


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
