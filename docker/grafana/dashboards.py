"""K2's Grafana dashboards, as code (Grafana's grafana-foundation-sdk).

`make dashboards` (or ``python docker/grafana/dashboards.py``) writes one JSON file per dashboard
to ``docker/grafana/dashboards/``, which the compose stack's Grafana provisions (with the
Prometheus data source of ``docker/grafana/provisioning``). Each panel's queries are written once,
here: tests/unit/test_dashboards.py checks the JSON files are what this writes, and
tests/integration/test_monitoring.py runs every panel's query against a Prometheus scraping a
live platform (dashboard variables substituted) and fails naming a panel that returns nothing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable, Row
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).parent / "dashboards"
#: The data source's uid, as docker/grafana/provisioning/datasources/prometheus.yml names it.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="k2-prometheus")
#: Grafana's own variable for rate windows (at least four scrape intervals).
RATE = "$__rate_interval"
#: Dashboard variables and the value a test gives each (every table).
VARIABLES = {"table": ".+"}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """One panel: ``description`` is its purpose in a line (shown in Grafana's panel header)."""

    title: str
    description: str
    queries: list[Query]
    kind: Literal["timeseries", "stat", "table"] = "timeseries"
    unit: str = ""
    width: int = 12


@dataclass(frozen=True)
class Spec:
    uid: str
    title: str
    description: str
    rows: dict[str, list[Panel]]
    variables: list[str] = field(default_factory=list)


T = '{table=~"$table"}'


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


OVERVIEW = Spec("k2-overview", "K2 overview",
    "The pipeline from produced to landed to served, per table, and the health of every component.", {
    "Health": [
        Panel("Components", "Each component's health check, as `k2 status` runs it (1 healthy, 0 not).",
              [q("k2_platform_component_up", "{{component}}")], "stat", width=16),
        Panel("Alerts firing", "K2's alerts firing now (each has a runbook in docs/runbooks).",
              [q('count(ALERTS{alertstate="firing"}) or vector(0)')], "stat", width=8),
        Panel("Degradation", "Every component with the reason it is degraded, or 'healthy' (k2 monitor).",
              [q('k2_platform_component_degraded_info or label_replace(k2_platform_component_up == 1, '
                 '"reason", "healthy", "", "")')], "table", width=24),
        Panel("Scrape targets up", "Each Prometheus job's targets that answer (consumer replicas, API, monitor).",
              [q("sum by (job) (up)", "{{job}}")], "stat", width=24),
    ],
    "Produced → landed": [
        Panel("Produced vs landed offsets", "Per topic: the offsets loads produced up to and the tables landed "
              "up to (k2 monitor, from the load manifest and the tables' snapshots).",
              [q("sum by (topic) (k2_lake_produced_offset)", "produced {{topic}}"),
               q("sum by (topic) (k2_lake_landed_offset >= 0)", "landed {{topic}}")]),
        Panel("Unlanded records", "Records loads produced that the tables have not landed, per topic.",
              [q("sum by (topic) (k2_lake_unlanded_records)", "{{topic}}")]),
        Panel("Landed rows/s", "Records the consumers append to each table.",
              [q(f"sum by (table) (rate(k2_stream_records_landed_total[{RATE}]))", "{{table}}")], unit="rps"),
        Panel("Since data last landed", "Per table: since the newest commit that landed records.",
              [q("k2_lake_freshness_seconds", "{{table}}")], unit="s"),
        Panel("Freshness p99", "Produced → landed, the slowest 1% of batches (goal: 2 s while streaming).",
              [q(f"histogram_quantile(0.99, sum by (table, le) (rate(k2_stream_freshness_seconds_bucket[{RATE}])))",
                 "{{table}}")], unit="s"),
        Panel("Rows in the tables", "Rows of each table's current snapshot.", [q("k2_lake_rows", "{{table}}")],
              "stat"),
    ],
    "Served": [
        Panel("API requests/s by status", "Answers of the REST API.",
              [q(f"sum by (status) (rate(k2_api_requests_total[{RATE}]))", "{{status}}")], unit="reqps"),
        Panel("Last batch runs", "Whether each batch job's last run succeeded (Pushgateway).",
              [q("k2_job_last_run_succeeded")], "table"),
    ],
})  # fmt: skip

STREAMING = Spec("k2-streaming", "K2 streaming", "The consumers: throughput, lag, commits, freshness, sequences.", {
    "Throughput": [
        Panel("Records/s", "Consumed, landed, deduplicated and sent to the dead letters, per table.",
              [q(f"sum by (table) (rate(k2_stream_records_consumed_total{T}[{RATE}]))", "consumed {{table}}"),
               q(f"sum by (table) (rate(k2_stream_records_landed_total{T}[{RATE}]))", "landed {{table}}"),
               q(f"sum by (table) (rate(k2_stream_records_deduplicated_total{T}[{RATE}]))", "dedup {{table}}"),
               q(f"sum by (table) (rate(k2_stream_records_rejected_total{T}[{RATE}]))", "rejected {{table}}")],
              unit="rps", width=24),
        Panel("Lag", "Messages after the offset each table records, per topic (the broker's end minus it).",
              [q("sum by (topic) (k2_stream_lag_messages)", "{{topic}}")]),
        Panel("Consumers up", "Consumer replicas Prometheus scrapes.", [q('sum(up{job="k2-consumer"})')], "stat"),
    ],
    "Commits": [
        Panel("Commit time p50 / p99", "One append with its offsets, conflict retries included.",
              [q(f"histogram_quantile(0.5, sum by (table, le) (rate(k2_stream_commit_duration_seconds_bucket{T}"
                 f"[{RATE}])))", "p50 {{table}}"),
               q(f"histogram_quantile(0.99, sum by (table, le) (rate(k2_stream_commit_duration_seconds_bucket{T}"
                 f"[{RATE}])))", "p99 {{table}}")], unit="s"),
        Panel("Rows per batch p50", "Records per append.",
              [q(f"histogram_quantile(0.5, sum by (table, le) (rate(k2_stream_batch_rows_bucket{T}[{RATE}])))",
                 "{{table}}")]),
        Panel("Freshness p50 / p99", "Produced → landed, per table.",
              [q(f"histogram_quantile(0.5, sum by (table, le) (rate(k2_stream_freshness_seconds_bucket{T}"
                 f"[{RATE}])))", "p50 {{table}}"),
               q(f"histogram_quantile(0.99, sum by (table, le) (rate(k2_stream_freshness_seconds_bucket{T}"
                 f"[{RATE}])))", "p99 {{table}}")], unit="s"),
        Panel("Commit failures and fenced batches", "Commits retried after a failure; batches dropped because "
              "another consumer owned their partition.",
              [q(f"sum by (table) (increase(k2_stream_commit_failures_total{T}[{RATE}]))", "failed {{table}}"),
               q(f"sum by (table) (increase(k2_stream_fenced_batches_total{T}[{RATE}]))", "fenced {{table}}")]),
        Panel("Dependencies", "1 while the consumers' last use of each dependency succeeded.",
              [q("min by (dependency) (k2_stream_dependency_up)", "{{dependency}}")], "stat"),
        Panel("Topic resets", "Partitions read again from the start (a new life of the topic).",
              [q(f"sum by (topic) (increase(k2_stream_topic_resets_total[{RATE}]))", "{{topic}}")]),
    ],
    "Sequences and stalls": [
        Panel("Sequence events", "Records by sequence classification (in order, gap, out of order, reset, "
              "duplicate), per table.",
              [q(f"sum by (table, kind) (increase(k2_stream_sequence_events_total{T}[{RATE}]))",
                 "{{table}} {{kind}}")]),
        Panel("Sequence numbers missing", "Numbers skipped by gaps: records missing upstream.",
              [q(f"sum by (table) (increase(k2_stream_sequence_missing_total{T}[{RATE}]))", "{{table}}")]),
        Panel("Waiting without progress", "Per partition: how long produced records have waited unlanded with "
              "the landed offset not moving (k2 monitor).",
              [q("max by (topic, partition) (k2_lake_unlanded_idle_seconds)", "{{topic}}[{{partition}}]")],
              unit="s"),
        Panel("Stalled partitions", "Partitions stalled for K2_STREAM_STALL_SECONDS (the K2ConsumerStalled alert).",
              [q("sum by (topic) (k2_lake_unlanded_stalled)", "{{topic}}")], "stat"),
    ],
}, ["table"])  # fmt: skip

LAKE = Spec("k2-lake", "K2 lake health", "Each Iceberg table's metadata: what compaction and expiry keep in bounds.", {
    "Files": [
        Panel("Worst partition's data files", "Compaction's backlog (K2CompactionBehind above 500 for 2 h).",
              [q(f"k2_lake_partition_data_files_max{T}", "{{table}}")]),
        Panel("Data files", "Data files in each table's current snapshot.", [q(f"k2_lake_data_files{T}", "{{table}}")]),
        Panel("Average data file size", "Small files make reads slow.",
              [q(f"k2_lake_data_file_size_average_bytes{T}", "{{table}}")], unit="bytes"),
        Panel("Rows", "Rows in each table's current snapshot.", [q(f"k2_lake_rows{T}", "{{table}}")]),
    ],
    "Snapshots": [
        Panel("Snapshots", "Snapshots kept (K2TooManySnapshots above 15,000).",
              [q(f"k2_lake_snapshots{T}", "{{table}}")]),
        Panel("Newest snapshot age", "Since each table's newest commit, maintenance included.",
              [q(f"k2_lake_newest_snapshot_age_seconds{T}", "{{table}}")], unit="s"),
        Panel("Rows the newest snapshot added", "Size of each table's latest commit.",
              [q(f"k2_lake_newest_snapshot_added_rows{T}", "{{table}}")]),
        Panel("Since data last landed", "Since the newest commit that landed records.",
              [q(f"k2_lake_freshness_seconds{T}", "{{table}}")], unit="s"),
    ],
    "Maintenance": [
        Panel("Maintenance runs", "When compaction, expiry and orphan removal last ran, and whether they "
              "succeeded (Pushgateway).",
              [q('k2_job_last_run_succeeded{job=~"k2_compact|k2_expire|k2_clean_orphans"}')], "table", width=24),
        Panel("Maintenance time", "Wall time of each operation on each table, its last run.",
              [q(f"k2_maintenance_duration_seconds_sum{T} / k2_maintenance_duration_seconds_count{T}",
                 "{{operation}} {{table}}")], unit="s"),
        Panel("Monitor passes", "k2 monitor's pass time and the parts of passes that failed.",
              [q("histogram_quantile(0.99, sum by (le) (rate(k2_monitor_pass_duration_seconds_bucket"
                 f"[{RATE}])))", "p99 pass"),
               q("sum by (part) (k2_monitor_errors_total)", "errors {{part}}")], unit="s"),
    ],
}, ["table"])  # fmt: skip

API = Spec("k2-api", "K2 API", "The REST API: traffic, errors, latency, rows, the time budget and rate limits.", {
    "Traffic": [
        Panel("Requests/s by endpoint", "Answers per endpoint.",
              [q(f"sum by (endpoint) (rate(k2_api_requests_total[{RATE}]))", "{{endpoint}}")], unit="reqps"),
        Panel("Requests/s by status", "Answers per status code.",
              [q(f"sum by (status) (rate(k2_api_requests_total[{RATE}]))", "{{status}}")], unit="reqps"),
        Panel("5xx ratio", "Share of answers that are server errors (K2ApiErrors above 5%).",
              [q(f'(sum(rate(k2_api_requests_total{{status=~"5.."}}[{RATE}])) or vector(0)) / '
                 f"sum(rate(k2_api_requests_total[{RATE}]))")], unit="percentunit"),
        Panel("API instances up", "API replicas Prometheus scrapes.", [q('sum(up{job="k2-api"})')], "stat"),
    ],
    "Latency and limits": [
        Panel("Latency p50 / p99", "Time until an answer starts, per endpoint (K2ApiSlow above 2.5 s).",
              [q(f"histogram_quantile(0.5, sum by (endpoint, le) (rate(k2_api_request_duration_seconds_bucket"
                 f"[{RATE}])))", "p50 {{endpoint}}"),
               q(f"histogram_quantile(0.99, sum by (endpoint, le) (rate(k2_api_request_duration_seconds_bucket"
                 f"[{RATE}])))", "p99 {{endpoint}}")], unit="s"),
        Panel("Rows returned/s", "Rows answered, per endpoint.",
              [q(f"sum by (endpoint) (rate(k2_api_rows_returned_total[{RATE}]))", "{{endpoint}}")], unit="rps"),
        Panel("Partial answers and timeouts", "Queries cut short by the time budget, and those that found "
              "nothing within it (504).",
              [q(f"sum(rate(k2_api_partial_results_total[{RATE}])) or vector(0)", "partial"),
               q(f"sum(rate(k2_api_query_timeouts_total[{RATE}])) or vector(0)", "timeouts")], unit="reqps"),
        Panel("Rate limited/s", "Requests refused over K2_API_RATE_LIMIT (429).",
              [q(f"sum(rate(k2_api_rate_limited_total[{RATE}]))")], unit="reqps"),
    ],
    "Capacity": [
        Panel("Time per stage, p99", "Where requests spend their time: waiting for their turn (queue), DuckDB "
              "running (query), writing the body (encode).",
              [q(f"histogram_quantile(0.99, sum by (stage, le) (rate(k2_api_stage_duration_seconds_bucket"
                 f"[{RATE}])))", "{{stage}}")], unit="s"),
        Panel("Waiting and refused", "Requests waiting for a turn (K2_API_QUEUE per worker), and those refused "
              "at once with 503 overloaded because the queue was full (K2ApiOverloaded).",
              [q("sum(k2_api_queued_requests) or vector(0)", "waiting"),
               q(f"sum(rate(k2_api_overloaded_total[{RATE}])) or vector(0)", "refused/s")]),
    ],
})  # fmt: skip

LOADS = Spec("k2-loads", "K2 loads and data quality", "Batch loads and the daily load's checks (Pushgateway).", {
    "Runs": [
        Panel("Last run succeeded", "Each batch job's last run (1 succeeded, 0 failed), by what it ran on.",
              [q("k2_job_last_run_succeeded")], "table", width=24),
        Panel("Since the last success", "Per job (K2DailyLoadMissing: 28 h on a weekday).",
              [q("time() - k2_job_last_success_timestamp_seconds", "{{job}} {{scope}}")], unit="s"),
        Panel("Last run's duration", "Wall time of each job's last run.",
              [q("k2_job_last_run_duration_seconds", "{{job}} {{scope}}")], unit="s"),
    ],
    "The last load": [
        Panel("Rows read, produced and rejected", "Per format and record type, the last load of each format.",
              [q('sum by (format, record_type) (k2_ingest_rows_read_total{job="k2_load"})',
                 "read {{format}} {{record_type}}"),
               q('sum by (format, record_type) (k2_ingest_rows_produced_total{job="k2_load"})',
                 "produced {{format}} {{record_type}}"),
               q('sum by (format, record_type) (k2_ingest_rows_rejected_total{job="k2_load"})',
                 "rejected {{format}} {{record_type}}")], "table"),
        Panel("Rejects by reason", "Why the last load of each format quarantined rows (K2LoadRejectedRows).",
              [q('sum by (format, reason) (k2_ingest_rows_rejected_total{job="k2_load"})',
                 "{{format}} {{reason}}")], "table"),
        Panel("Files by outcome", "Files the last load of each format processed, by status.",
              [q('sum by (format, status) (k2_ingest_files_total{job="k2_load"})', "{{format}} {{status}}")],
              "table"),
    ],
    "Data quality": [
        Panel("Quality checks", "The daily load's checks on the day it last checked (1 passed, 0 failed).",
              [q("k2_quality_check_passed", "{{check}}")], "stat", width=24),
        Panel("Sequence events of the day", "Sequence classifications on the day last checked.",
              [q("k2_quality_sequence_events", "{{kind}}")], "stat"),
        Panel("Dead letters landed/s", "Rejects landing in the rejects table (from loads and the consumer).",
              [q(f'sum(rate(k2_stream_records_landed_total{{table="rejects"}}[{RATE}]))')], unit="rps"),
    ],
})  # fmt: skip

AIRFLOW = Spec("k2-airflow", "K2 Airflow", "Airflow's own metrics (StatsD, through k2 monitor): the scheduler, "
    "tasks and DAG runs.", {
    "Scheduler": [
        Panel("Scheduler heartbeats/s", "The scheduler's heartbeats (K2AirflowSchedulerDown when none for 3 min).",
              [q(f"sum(rate(airflow_scheduler_heartbeat_total[{RATE}]))")], unit="ops"),
        Panel("Airflow's health", "The airflow row of `k2 status` (scheduler, DAG processor, triggerer).",
              [q('k2_platform_component_up{component="airflow"}')], "stat"),
    ],
    "Tasks and runs": [
        Panel("Task instances finished", "Task instances finished, by DAG and final state.",
              [q("sum by (dag_id, state) (airflow_ti_finish_total)", "{{dag_id}} {{state}}")], "table"),
        Panel("Task failures", "Tasks that failed since the monitor started, by DAG and task (K2AirflowTaskFailures).",
              [q("sum by (dag_id, task_id) (airflow_ti_failures_total) or vector(0)", "{{dag_id}} {{task_id}}")]),
        Panel("DAG run duration", "Mean duration of successful runs, by DAG.",
              [q("sum by (dag_id) (airflow_dagrun_duration_success_seconds_sum) / "
                 "sum by (dag_id) (airflow_dagrun_duration_success_seconds_count)", "{{dag_id}}")], unit="s"),
        Panel("StatsD lines received", "What k2 monitor received from Airflow, by outcome.",
              [q(f"sum by (outcome) (rate(k2_monitor_statsd_lines_total[{RATE}]))", "{{outcome}}")], unit="ops"),
    ],
})  # fmt: skip

SPECS = [OVERVIEW, STREAMING, LAKE, API, LOADS, AIRFLOW]
#: Dashboards whose data only a platform running Airflow has (tests/integration/test_airflow_up.py).
NEEDS_AIRFLOW = {AIRFLOW.uid}


def _panel(spec: Panel) -> Any:
    kinds: dict[str, Any] = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel}
    builder = kinds[spec.kind]()
    builder = builder.title(spec.title).description(spec.description).datasource(DATASOURCE)
    builder = builder.height(8).span(spec.width)
    if spec.unit:
        builder = builder.unit(spec.unit)
    for ref, query in zip("ABCDEFGH", spec.queries, strict=False):
        target = prometheus.Dataquery().expr(query.expr).ref_id(ref)
        if spec.kind == "table":
            target = target.instant().format(PromQueryFormat.TABLE)
        if query.legend:
            target = target.legend_format(query.legend)
        builder = builder.with_target(target)
    return builder


def build(spec: Spec) -> dict[str, Any]:
    dashboard = (Dashboard(spec.title).uid(spec.uid).description(spec.description).tags(["k2"])
                 .refresh("30s").time("now-6h", "now").timezone("utc"))  # fmt: skip
    for name in spec.variables:
        variable = (QueryVariable(name).label(name).datasource(DATASOURCE)
                    .query(f"label_values(k2_lake_rows, {name})").multi(True).include_all(True)
                    .all_value(VARIABLES[name]))  # fmt: skip
        dashboard = dashboard.with_variable(variable)
    for title, panels in spec.rows.items():
        dashboard = dashboard.with_row(Row(title))
        for panel in panels:
            dashboard = dashboard.with_panel(_panel(panel))
    built: dict[str, Any] = _without_nulls(json.loads(json.dumps(dashboard.build(), cls=JSONEncoder)))
    return built


def _without_nulls(value: Any) -> Any:
    """The SDK writes unset options as null; Grafana wants them left out (it fills its defaults)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def render(spec: Spec) -> str:
    return json.dumps(build(spec), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for spec in SPECS:
        (OUT / f"{spec.uid}.json").write_text(render(spec))
    print(f"wrote {len(SPECS)} dashboards to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
