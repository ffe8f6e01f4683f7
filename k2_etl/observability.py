"""Every Prometheus metric K2 defines, in one place.

Names follow ``k2_<component>_<what>_<unit>``; counters end in ``_total`` and
durations are in seconds. Components import their metrics from here so a
name is never spelled twice.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

# --- streaming (k2 consume) ------------------------------------------------------------------
STREAM_CONSUMED = Counter("k2_stream_records_consumed_total", "Messages read from Kafka.", ["table"])
STREAM_LANDED = Counter("k2_stream_records_landed_total", "Records appended to the Iceberg table.", ["table"])
STREAM_REJECTED = Counter("k2_stream_records_rejected_total", "Messages sent to the dead letters.", ["table"])
STREAM_DEDUPLICATED = Counter(
    "k2_stream_records_deduplicated_total", "Records dropped because the table already held their id.", ["table"]
)
STREAM_COMMIT_SECONDS = Histogram(
    "k2_stream_commit_duration_seconds",
    "Time of one append with its offsets (including conflict retries).",
    ["table"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STREAM_BATCH_ROWS = Histogram(
    "k2_stream_batch_rows",
    "Records per append.",
    ["table"],
    buckets=(1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000),
)
STREAM_FRESHNESS_SECONDS = Histogram(
    "k2_stream_freshness_seconds",
    "Commit time minus the Kafka timestamp of the batch's oldest record (batch loads stamp event time).",
    ["table"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600, 86_400),
)
STREAM_FENCED = Counter("k2_stream_fenced_batches_total", "Batches dropped: another consumer owned them.", ["table"])
STREAM_COMMIT_FAILURES = Counter(
    "k2_stream_commit_failures_total",
    "Batch commits that failed (catalog, storage, registry or broker unreachable) and were retried.",
    ["table"],
)
STREAM_DEPENDENCY_UP = Gauge(
    "k2_stream_dependency_up",
    "1 when the consumer's last use of the dependency (catalog, registry, broker) succeeded, 0 while it fails.",
    ["dependency"],
)
STREAM_UNLANDED_SECONDS = Gauge(
    "k2_stream_unlanded_seconds",
    "How long records loads produced to an owned partition (per the load manifest) have waited unlanded; 0: none.",
    ["topic", "partition"],
)
STREAM_UNLANDED_MESSAGES = Gauge(
    "k2_stream_unlanded_messages",
    "Records loads produced to an owned partition (per the load manifest) that its table has not landed.",
    ["topic", "partition"],
)
STREAM_TOPIC_RESETS = Counter(
    "k2_stream_topic_resets_total",
    "Partitions read again from the beginning: their offsets were of another life of the topic "
    "(created again, or a memory-only broker restarted) or beyond the partition's end.",
    ["topic"],
)
STREAM_SEQUENCE_EVENTS = Counter(
    "k2_stream_sequence_events_total",
    "Records by sequence classification: in_order, gap, out_of_order, reset, duplicate.",
    ["table", "kind"],
)
STREAM_SEQUENCE_MISSING = Counter(
    "k2_stream_sequence_missing_total", "Sequence numbers skipped by gaps (missing upstream).", ["table"]
)
STREAM_LAG = Gauge(
    "k2_stream_lag_messages",
    "Messages in the partition after the offset its table records (the broker's high watermark minus it).",
    ["topic", "partition"],
)

# --- table maintenance (k2 compact / expire / clean-orphans, k2_maintenance) ---------------------
MAINTENANCE_SECONDS = Histogram(
    "k2_maintenance_duration_seconds",
    "Wall time of one maintenance operation on one table.",
    ["operation", "table"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
MAINTENANCE_FILES_REWRITTEN = Counter(
    "k2_maintenance_files_rewritten_total", "Data files compaction replaced.", ["table"]
)
MAINTENANCE_FILES_WRITTEN = Counter("k2_maintenance_files_written_total", "Data files compaction wrote.", ["table"])
MAINTENANCE_DUPLICATES_REMOVED = Counter(
    "k2_maintenance_duplicates_removed_total", "Rows with an id already landed, dropped by compaction.", ["table"]
)
MAINTENANCE_CONFLICTS = Counter(
    "k2_maintenance_conflicts_total",
    "Maintenance commits refused by a concurrent change (the work is left for the next run).",
    ["operation", "table"],
)
MAINTENANCE_SNAPSHOTS_EXPIRED = Counter("k2_maintenance_snapshots_expired_total", "Snapshots expired.", ["table"])
MAINTENANCE_ORPHANS_REMOVED = Counter(
    "k2_maintenance_orphan_files_removed_total", "Files no snapshot referenced, deleted.", ["table"]
)
