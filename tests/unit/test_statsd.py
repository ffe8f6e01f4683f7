"""k2 monitor's StatsD receiver (pure logic: lines in, Prometheus exposition out)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from k2_etl.monitor.statsd import MAX_SERIES, StatsdMetrics


def samples(metrics: StatsdMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(metrics)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def test_counters_gauges_and_timers_with_influxdb_tags_become_labelled_series() -> None:
    metrics = StatsdMetrics()
    metrics.ingest(b"airflow.ti_failures,dag_id=k2_daily_load,task_id=load:1|c\nairflow.scheduler_heartbeat:1|c")
    metrics.ingest(b"airflow.ti_failures,dag_id=k2_daily_load,task_id=load:1|c|@0.5")  # sampled: counts 2
    metrics.ingest(b"airflow.executor.open_slots:4|g\nairflow.executor.open_slots:-1|g")
    metrics.ingest(b"airflow.dagrun.duration.success,dag_id=k2_daily_load:2500|ms")
    found = samples(metrics)
    tags = (("dag_id", "k2_daily_load"), ("task_id", "load"))
    assert found[("airflow_ti_failures_total", tags)] == 3
    assert found[("airflow_scheduler_heartbeat_total", ())] == 1
    assert found[("airflow_executor_open_slots", ())] == 3
    run = (("dag_id", "k2_daily_load"),)
    assert found[("airflow_dagrun_duration_success_seconds_count", run)] == 1
    assert found[("airflow_dagrun_duration_success_seconds_sum", run)] == 2.5
    assert found[("airflow_dagrun_duration_success_seconds_bucket", (*run, ("le", "1.0")))] == 0
    assert found[("airflow_dagrun_duration_success_seconds_bucket", (*run, ("le", "5.0")))] == 1


def test_sets_and_malformed_lines_are_counted_not_kept() -> None:
    metrics = StatsdMetrics()
    metrics.ingest(b"airflow.users:alice|s\nnot statsd at all\nairflow.x:abc|c\nairflow.y,broken:1|c")
    assert samples(metrics) == {}


def test_no_packet_can_make_the_exposition_invalid() -> None:
    """What would break /metrics (and so every K2 metric of the monitor) is refused line by line."""
    metrics = StatsdMetrics()
    metrics.ingest(b"airflow.q:1|c")
    bad = [b",a=b:1|c", b"airflow.neg:-5|c", b"airflow.n,__name__=x:1|c", b"airflow.t,le=1:5|ms",
           b"airflow.q_total:1|g", b"airflow.q:1|g", b"airflow.inf:inf|g", b"airflow.r:1|c|@0",
           b"airflow.d,a=1,a=2:1|c", b"k2_lake_rows:1|g", b"9airflow:1|c"]  # fmt: skip
    for line in bad:
        metrics.ingest(line)
    found = samples(metrics)  # parses: the exposition is valid
    assert found == {("airflow_q_total", ()): 1.0}


def test_series_beyond_the_limit_are_dropped() -> None:
    metrics = StatsdMetrics()
    metrics.ingest("\n".join(f"airflow.m,id={i}:1|c" for i in range(MAX_SERIES + 5)).encode())
    metrics.ingest(b"airflow.m,id=0:1|c")  # a series already kept still counts
    found = samples(metrics)
    assert len(found) == MAX_SERIES
    assert found[("airflow_m_total", (("id", "0"),))] == 2
