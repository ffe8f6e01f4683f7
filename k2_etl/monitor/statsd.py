"""Airflow's own metrics, received over StatsD by `k2 monitor` and served with its metrics.

Airflow 3 emits its metrics (scheduler heartbeats, task instances finished and failed, DAG run
durations, ...) over StatsD or OpenTelemetry only. The usual bridge to Prometheus is Prometheus's
statsd_exporter; this receiver does its job for K2 because neither bridge runs where K2 must: no
Debian 12 or PyPI package ships statsd_exporter, and Debian's Prometheus (2.42) predates the OTLP
receiver (2.47). It is small on purpose, and it runs the same in the compose stack (Airflow sends to
k2-monitor), so the names alerts and dashboards read are the same everywhere.

Airflow sends InfluxDB-style tags (``metrics.statsd_influxdb_enabled``): ``name,tag=value:1|c``.
A line becomes, with every character outside ``[a-zA-Z0-9_]`` of the name turned to ``_`` and the
tags as labels:

* a counter (``c``): ``<name>_total``, the increments added up (scaled by a sample rate);
* a gauge (``g``): ``<name>``, the last value (``+n``/``-n``: changed by n);
* a timer (``ms``, ``h``): a histogram ``<name>_seconds``;
* anything else (sets, names not starting ``airflow``, malformed lines): counted in
  ``k2_monitor_statsd_lines_total{outcome}``.

Series beyond :data:`MAX_SERIES` are dropped (and counted), so a metric with an unbounded tag
cannot exhaust the monitor's memory.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from k2_etl.observability import MONITOR_STATSD_LINES

log = logging.getLogger(__name__)

MAX_SERIES = 10_000
#: Names taken (after `.` became `_`): Airflow's, as `metrics.statsd_prefix` = airflow makes them.
PREFIX = "airflow_"
#: Timer buckets, seconds: a task's few milliseconds to a daily load's hours.
BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 7200.0, float("inf"))
_LINE = re.compile(r"^(?P<name>[^:|]+):(?P<value>[-+]?[0-9.eE+-]+)\|(?P<type>c|g|ms|h|s)(?:\|@(?P<rate>[0-9.]+))?")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.total += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1


class StatsdMetrics(Collector):
    """The metrics received so far, as a prometheus_client collector (register it in a registry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, dict[Labels, float]] = {}
        self.gauges: dict[str, dict[Labels, float]] = {}
        self.timers: dict[str, dict[Labels, _Histogram]] = {}
        self._owner: dict[str, tuple[str, str]] = {}  # each sample name exposed -> the metric (kind, name)
        self._series = 0

    def ingest(self, packet: bytes) -> None:
        """One UDP packet: lines of StatsD."""
        for raw in packet.decode("utf-8", errors="replace").splitlines():
            if raw.strip():
                MONITOR_STATSD_LINES.labels(self._take(raw.strip())).inc()

    def _take(self, line: str) -> str:
        found = _LINE.match(line)
        if found is None or found["type"] == "s":
            return "ignored"
        name, *tags = found["name"].split(",")
        try:
            labels: Labels = tuple(sorted((_safe(k), v) for k, v in (tag.split("=", 1) for tag in tags)))
            text = found["value"]
            value = float(text)
            rate = float(found["rate"]) if found["rate"] else 1.0
        except ValueError:
            return "malformed"
        metric, kind = _safe(name), found["type"]
        if not metric.startswith(PREFIX):
            return "ignored"  # not Airflow's: no name of K2's own may be sent to the monitor
        if not _valid(metric, labels, value, rate) or (kind == "c" and value < 0):
            return "malformed"
        key = {"c": f"{metric}_total", "g": metric}.get(kind, f"{metric}_seconds")
        timer = kind in ("ms", "h")
        # every name it exposes (a counter's family is named without _total), none of another metric's
        samples = (key, *(f"{key}{suffix}" for suffix in ("_bucket", "_count", "_sum"))) if timer else (key, metric)
        family: dict[str, dict[Labels, Any]] = {"c": self.counters, "g": self.gauges}.get(kind, self.timers)
        with self._lock:
            if any(self._owner.get(sample, (kind, key)) != (kind, key) for sample in samples):
                return "malformed"  # another kind of metric has this name
            series = family.get(key)
            if (series is None or labels not in series) and self._series >= MAX_SERIES:
                return "dropped"
            if series is None:
                series = family[key] = {}
                self._owner.update(dict.fromkeys(samples, (kind, key)))
            self._series += labels not in series
            if kind == "c":
                series[labels] = series.get(labels, 0.0) + value / rate
            elif kind == "g":
                series[labels] = series.get(labels, 0.0) + value if text[0] in "+-" else value
            else:
                series.setdefault(labels, _Histogram()).observe(value / 1000)
        return "ok"

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counters = {n: dict(s) for n, s in self.counters.items()}
            gauges = {n: dict(s) for n, s in self.gauges.items()}
            timers = {n: {k: (list(h.counts), h.total) for k, h in s.items()} for n, s in self.timers.items()}
        for name, series in counters.items():
            family = CounterMetricFamily(name.removesuffix("_total"), "From Airflow's StatsD (k2 monitor).")
            for labels, value in series.items():
                family.add_sample(name, dict(labels), value)
            yield family
        for name, series in gauges.items():
            gauge = GaugeMetricFamily(name, "From Airflow's StatsD (k2 monitor).")
            for labels, value in series.items():
                gauge.add_sample(name, dict(labels), value)
            yield gauge
        for name, histograms in timers.items():
            histogram = HistogramMetricFamily(name, "From Airflow's StatsD timers (k2 monitor).")
            for labels, (counts, total) in histograms.items():
                for bound, count in zip(BUCKETS, counts, strict=True):
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    histogram.add_sample(f"{name}_bucket", {**dict(labels), "le": le}, count)
                histogram.add_sample(f"{name}_count", dict(labels), counts[-1])
                histogram.add_sample(f"{name}_sum", dict(labels), total)
            yield histogram


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name)


def _valid(metric: str, labels: Labels, value: float, rate: float) -> bool:
    """A Prometheus name and labels (none reserved, none twice), a finite value, a sample rate in (0, 1]."""
    names = [k for k, _ in labels]
    return (bool(_NAME.fullmatch(metric)) and math.isfinite(value) and 0 < rate <= 1
            and len(set(names)) == len(names)
            and all(_NAME.fullmatch(k) and not k.startswith("__") and k != "le" for k in names))  # fmt: skip


def serve_udp(metrics: StatsdMetrics, host: str, port: int) -> socket.socket:
    """Receive StatsD on ``host:port`` (UDP) in a daemon thread; raises OSError when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, port))

    def receive() -> None:
        while True:
            try:
                packet = sock.recv(65_535)
            except OSError:  # closed: the monitor is stopping
                return
            try:
                metrics.ingest(packet)
            except Exception:  # a packet must never stop the receiver
                log.exception("statsd: a packet not taken")

    threading.Thread(target=receive, name="k2-monitor-statsd", daemon=True).start()
    return sock
