"""Every Prometheus metric K2 defines, in one place.

Names follow ``k2_<component>_<what>_<unit>``; counters end in ``_total`` and
durations are in seconds. Components import their metrics from here so a
name is never spelled twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from k2_etl.config import Settings

log = logging.getLogger(__name__)

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
    "Commit time minus when the batch's oldest records were produced (a K2 load's k2-produced-ms header, else the "
    "oldest record's Kafka timestamp).",
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

#: What the consumer's use of a dependency can fail on (k2_stream_dependency_up's label values).
STREAM_DEPENDENCIES = ("catalog", "storage", "registry", "broker")


def zero_stream_series(tables: Iterable[str], topics: Iterable[str]) -> None:
    """Create the consumer's labelled series before their first event: a dashboard or alert then
    sees 0 fenced batches or gaps, not no data (Prometheus's advice for labels known in advance).
    The dependencies start up: nothing has failed yet."""
    for table in tables:
        for counter in (STREAM_CONSUMED, STREAM_LANDED, STREAM_REJECTED, STREAM_DEDUPLICATED, STREAM_FENCED,
                        STREAM_COMMIT_FAILURES, STREAM_SEQUENCE_MISSING):  # fmt: skip
            counter.labels(table)
    for topic in topics:
        STREAM_TOPIC_RESETS.labels(topic)
    for dependency in STREAM_DEPENDENCIES:
        STREAM_DEPENDENCY_UP.labels(dependency).set(1)


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

# --- the platform as `k2 monitor` sees it (one process, whatever else runs or fails) ---------------
COMPONENT_UP = Gauge(
    "k2_platform_component_up",
    "1 when the component passes the health check `k2 status` runs on it, 0 when it does not.",
    ["component"],
)
COMPONENT_DEGRADED = Gauge(
    "k2_platform_component_degraded_info",
    "1 for each component that fails its health check, labelled with the reason `k2 status` gives (no series "
    "while it is healthy).",
    ["component", "reason"],
)
_TABLE = ["table"]
LAKE_SNAPSHOTS = Gauge("k2_lake_snapshots", "Snapshots in the table's metadata (`k2 expire` bounds them).", _TABLE)
LAKE_DATA_FILES = Gauge("k2_lake_data_files", "Data files in the current snapshot.", _TABLE)
LAKE_ROWS = Gauge("k2_lake_rows", "Rows in the current snapshot's data files (before deletes).", _TABLE)
LAKE_PARTITION_FILES_MAX = Gauge(
    "k2_lake_partition_data_files_max",
    "Data files of the table's worst partition (`k2 compact` rewrites a partition at K2_MAINTENANCE_MIN_FILES).",
    _TABLE,
)
LAKE_FILE_SIZE_AVERAGE = Gauge(
    "k2_lake_data_file_size_average_bytes", "Average size of the current snapshot's data files.", _TABLE
)
LAKE_SNAPSHOT_AGE = Gauge(
    "k2_lake_newest_snapshot_age_seconds", "Since the table's newest commit (maintenance included).", _TABLE
)
LAKE_SNAPSHOT_ROWS = Gauge("k2_lake_newest_snapshot_added_rows", "Rows the table's newest commit added.", _TABLE)
LAKE_FRESHNESS = Gauge(
    "k2_lake_freshness_seconds",
    "Since the table's newest commit that landed records (a consumer's append; maintenance lands nothing new).",
    _TABLE,
)
_PARTITION = ["topic", "partition"]
LAKE_PRODUCED_OFFSET = Gauge(
    "k2_lake_produced_offset",
    "Per the load manifest: the offset after the last record loads produced to the partition (7 days back).",
    _PARTITION,
)
LAKE_LANDED_OFFSET = Gauge(
    "k2_lake_landed_offset",
    "The next offset the partition's table records as landed, in the topic's current life (-1: none).",
    _PARTITION,
)
LAKE_UNLANDED_RECORDS = Gauge(
    "k2_lake_unlanded_records",
    "Records loads produced to the partition that its table has not landed (offsets recorded before the records "
    "existed count them all).",
    _PARTITION,
)
LAKE_UNLANDED_IDLE_SECONDS = Gauge(
    "k2_lake_unlanded_idle_seconds",
    "How long records loads produced to the partition have waited unlanded with its landed offset not moving "
    "(0: none waiting). A busy consumer keeps it near 0; a stalled one lets it grow.",
    _PARTITION,
)
LAKE_UNLANDED_STALLED = Gauge(
    "k2_lake_unlanded_stalled",
    "1 when records loads produced to the partition have waited unlanded, its landed offset not moving, for "
    "K2_STREAM_STALL_SECONDS or more (the `landed` row of `k2 status` is unhealthy), else 0.",
    _PARTITION,
)
MONITOR_PASS_SECONDS = Histogram(
    "k2_monitor_pass_duration_seconds",
    "Time of one pass of `k2 monitor` (component checks, table metadata, offsets).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MONITOR_LAST_PASS = Gauge("k2_monitor_last_pass_timestamp_seconds", "When `k2 monitor` last finished a pass.")
MONITOR_INTERVAL = Gauge("k2_monitor_interval_seconds", "K2_MONITOR_INTERVAL_SECONDS: how often `k2 monitor` passes.")
MONITOR_STATSD_LINES = Counter(
    "k2_monitor_statsd_lines_total",
    "StatsD lines `k2 monitor` received from Airflow, by outcome: ok, ignored (sets), malformed, dropped (the series "
    "limit reached).",
    ["outcome"],
)
MONITOR_ERRORS = Counter(
    "k2_monitor_errors_total", "Parts of a monitor pass that failed (their series keep the last values).", ["part"]
)

# --- batch work, pushed to the Pushgateway when it ends ------------------------------------------
JOB_PUSH_TIMEOUT_SECONDS = 5.0
#: What a batch job pushes besides its outcome: the families of batch work. Never the monitor's,
#: the consumer's or the process's own (a job's copy of `k2_monitor_last_pass_timestamp_seconds`, 0,
#: would make the monitor look stuck).
BATCH_METRICS = ("k2_ingest_", "k2_maintenance_", "k2_quality_")
#: The daily load's scope, whatever formats had files that day: each day's run replaces the last
#: (a scope named after the day's formats would leave a failed day's group behind for ever).
DAILY_LOAD_SCOPE = "daily"


@contextlib.contextmanager
def batch_job(
    settings: Settings,
    job: str,
    warn: Callable[[str], None] | None = None,
    scope: str | None = None,
    dry_run: bool = False,
) -> Iterator[JobRun]:
    """Push this process's K2 metrics, and how the run ended, to ``K2_PUSHGATEWAY_URL`` when the
    work in the block ends, whether it succeeds or raises.

    The group is ``job`` plus ``scope`` (what the run worked on: the formats loaded, a table, "all"),
    so the loads of two formats, or the compactions of two tables, keep their own numbers; a later
    run of the same work replaces them. The key is ``scope`` rather than ``table`` or ``format``:
    the Pushgateway refuses a push whose metrics carry a grouping label with another value (a
    compaction of all tables reports per table). A later run of the same work replaces the group's
    metrics; the last success's time is kept apart, so a failed run leaves it (:func:`_push`). A
    Pushgateway that does not answer costs a warning, never the work's result.
    """
    started = time.time()
    run = JobRun()
    try:
        yield run
        run.succeeded = run.succeeded is not False
    finally:
        if settings.pushgateway_url and not dry_run:  # a dry run changed nothing: the last real run stands
            grouping = {"scope": scope} if scope else {}
            _push(settings.pushgateway_url, job, grouping, started, bool(run.succeeded), warn)


@dataclasses.dataclass
class JobRun:
    """How a :func:`batch_job` run ended: raising fails it; so does setting ``succeeded`` False (a
    run that reports its failure rather than raising it)."""

    succeeded: bool | None = None


def _push(
    url: str, job: str, grouping: dict[str, str], started: float, succeeded: bool, warn: Callable[[str], None] | None
) -> None:
    """Two pushes. The run's metrics replace the group's (PUT): a series the last run had and this
    one lacks (a reject reason) goes. The success time goes to a group of its own (``record`` is
    ``last_success``), only when the run succeeded, so a failed run leaves it."""
    from prometheus_client import REGISTRY, CollectorRegistry, push_to_gateway

    run, success = CollectorRegistry(), CollectorRegistry()
    ended = time.time()
    Gauge("k2_job_last_run_timestamp_seconds", "When the job's last run ended.", registry=run).set(ended)
    Gauge("k2_job_last_run_duration_seconds", "Wall time of the job's last run.", registry=run).set(ended - started)
    Gauge("k2_job_last_run_succeeded", "1 when the job's last run succeeded, 0 when it failed.",
          registry=run).set(int(succeeded))  # fmt: skip
    Gauge("k2_job_last_success_timestamp_seconds", "When the job last succeeded.", registry=success).set(ended)

    class _Both:  # this run's outcome and the batch work's metrics the process holds, in one push
        def collect(self) -> Iterator[Any]:
            yield from (family for family in REGISTRY.collect() if family.name.startswith(BATCH_METRICS))
            yield from run.collect()

    pushes: list[tuple[Any, dict[str, str]]] = [(_Both(), grouping)]
    if succeeded:
        pushes.append((success, {**grouping, "record": "last_success"}))
    try:
        for registry, key in pushes:
            push_to_gateway(url, job=job, registry=registry, grouping_key=key, timeout=JOB_PUSH_TIMEOUT_SECONDS)
    except Exception as exc:  # OSError, URLError, an HTTP error: the work's result stands
        (warn or log.warning)(f"metrics of {job} not pushed to {url}: {exc}")


# --- the daily load's data-quality checks (k2_etl.jobs.quality; pushed with the run) ----------------
QUALITY_CHECK_PASSED = Gauge(
    "k2_quality_check_passed", "1 when the check passed on the day the daily load last checked, 0 when not.", ["check"]
)
QUALITY_SEQUENCE_EVENTS = Gauge(
    "k2_quality_sequence_events", "Sequence events of the day the daily load last checked, by kind.", ["kind"]
)
