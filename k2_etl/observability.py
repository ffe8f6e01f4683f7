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

# --- batch ingestion (k2 load) --------------------------------------------------------------
_INGEST = ["format", "record_type"]
INGEST_ROWS_READ = Counter("k2_ingest_rows_read_total", "Data rows read from CSV files.", _INGEST)
INGEST_ROWS_PRODUCED = Counter("k2_ingest_rows_produced_total", "Rows produced to Kafka.", _INGEST)
INGEST_ROWS_REJECTED = Counter(
    "k2_ingest_rows_rejected_total", "Rows quarantined to the dead-letter topic.", [*_INGEST, "reason"]
)
INGEST_PRODUCE_ERRORS = Counter("k2_ingest_produce_errors_total", "Messages Kafka did not accept.", _INGEST)
INGEST_BYTES = Counter("k2_ingest_bytes_read_total", "Bytes of CSV read (decompressed).", _INGEST)
INGEST_FILES = Counter("k2_ingest_files_total", "Files processed, by outcome.", ["format", "status"])
INGEST_LOAD_SECONDS = Histogram(
    "k2_ingest_load_duration_seconds",
    "Wall time of loading one file.",
    _INGEST,
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
