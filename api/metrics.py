"""The API's Prometheus metrics, correct across gunicorn's worker processes.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (``k2 api`` sets it), prometheus_client
keeps each worker's values in files there and /metrics sums them; the gunicorn
config marks a dead worker's files so its gauges vanish. Without it (tests in
one process) the default registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

REQUESTS = Counter(
    "k2_api_requests_total", "HTTP requests answered, by endpoint, method and status.", ["endpoint", "method", "status"]
)
LATENCY = Histogram(
    "k2_api_request_duration_seconds",
    "Time until a request's answer starts, by endpoint (a streamed body is encoded as it is sent).",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ROWS = Counter("k2_api_rows_returned_total", "Rows returned, by endpoint.", ["endpoint"])
PARTIAL = Counter(
    "k2_api_partial_results_total", "Answers cut short by the query time budget, by endpoint.", ["endpoint"]
)
TIMEOUTS = Counter("k2_api_query_timeouts_total", "Queries that found nothing within their budget (504).", ["endpoint"])
RATE_LIMITED = Counter("k2_api_rate_limited_total", "Requests refused by the rate limit (429).")
OVERLOADED = Counter(
    "k2_api_overloaded_total", "Requests refused at once because the worker's queue was full (503).", ["endpoint"]
)
QUEUED = Gauge(
    "k2_api_queued_requests", "Requests waiting for their turn (K2_API_QUEUE per worker).", multiprocess_mode="livesum"
)
STAGE = Histogram(
    "k2_api_stage_duration_seconds",
    "Where a request's time went, by endpoint and stage: `queue` (waiting for its turn), `query` (DuckDB running "
    "its statements), `encode` (writing the body: JSON, CSV, Arrow or Parquet).",
    ["endpoint", "stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def exposition() -> bytes:
    """The text exposition of every worker's metrics (or this process's)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
