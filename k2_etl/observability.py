"""Every Prometheus metric K2 defines, in one place.

Names follow ``k2_<component>_<what>_<unit>``; counters end in ``_total`` and
durations are in seconds. Components import their metrics from here so a
name is never spelled twice.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REGISTRY_REQUESTS = Counter(
    "k2_registry_requests_total",
    "HTTP requests served by the local schema registry.",
    ["method", "route", "status"],
)
REGISTRY_REQUEST_SECONDS = Histogram(
    "k2_registry_request_duration_seconds",
    "Latency of local schema registry requests.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
