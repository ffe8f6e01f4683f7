"""K2's Grafana dashboards: the committed JSON is what docker/grafana/dashboards.py writes (one
source per panel query), every panel says what it is for, the compose stack's Grafana provisions
them with a data source of the uid they name, and every metric a panel or an alert reads is one K2
defines (or Prometheus's own). That the queries return data: tests/integration/test_monitoring.py."""

from __future__ import annotations

import re

import yaml
from prometheus_client import REGISTRY

import api.metrics  # noqa: F401  (registers the API's metrics)
import k2_etl.observability  # noqa: F401  (registers every other K2 metric)
from tests.compose import resolved
from tests.monitoring import (
    DASHBOARDS,
    GRAFANA,
    airflow_metric,
    alert_rules,
    dashboard_files,
    generator,
    metric_names,
    panel_queries,
)

#: Series no K2 process defines: Prometheus's own, and the outcome gauges each batch job pushes
#: (k2_etl.observability.batch_job makes them per push, in a registry of their own).
NOT_K2 = {"up", "ALERTS"}
PUSHED = {"k2_job_last_run_succeeded", "k2_job_last_success_timestamp_seconds", "k2_job_last_run_timestamp_seconds",
          "k2_job_last_run_duration_seconds"}  # fmt: skip


def _defined() -> set[str]:
    """Every sample name K2's registries expose (counters' _total, histograms' _bucket/_sum/_count)."""
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        kind = family.type
        if kind == "counter":
            names.add(f"{family.name}_total")
        if kind == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return names


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    module = generator()
    expected = {f"{spec.uid}.json": module.render(spec) for spec in module.SPECS}
    committed = {path.name: path.read_text() for path in dashboard_files()}
    assert sorted(committed) == sorted(expected), "run `make dashboards`"
    for name, text in expected.items():
        assert committed[name] == text, f"{name} differs from docker/grafana/dashboards.py: run `make dashboards`"


def test_every_panel_says_what_it_is_for_and_queries_something() -> None:
    for spec in generator().SPECS:
        assert spec.description, spec.uid
        for row, panels in spec.rows.items():
            for panel in panels:
                where = f"{spec.title} / {row} / {panel.title}"
                assert panel.description.strip() and "\n" not in panel.description, where
                assert panel.queries, where
                assert all(q.expr.strip() for q in panel.queries), where


def test_the_dashboards_are_provisioned_from_the_files() -> None:
    titles = {spec.title for spec in generator().SPECS}
    assert titles == {"K2 overview", "K2 streaming", "K2 lake health", "K2 API", "K2 loads and data quality",
                      "K2 Airflow"}  # fmt: skip
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = source["datasources"]
    assert datasource["uid"] == generator().DATASOURCE.uid and datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"  # the stack's prometheus service
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "k2.yml").read_text())["providers"][0]
    mounts = {m["target"]: m["source"] for m in resolved()["services"]["grafana"]["volumes"] if m["type"] == "bind"}
    assert mounts[provider["options"]["path"]] == str(DASHBOARDS)
    assert mounts["/etc/grafana/provisioning"] == str(GRAFANA / "provisioning")


def test_every_metric_a_panel_or_an_alert_reads_is_defined() -> None:
    """The original K2's mistake, checked statically: no query of a metric nothing defines (the
    live test then checks each has a target exposing it)."""
    defined = _defined() | NOT_K2 | PUSHED
    read = {q.panel: metric_names(q.expr) for q in panel_queries()}
    read |= {rule["alert"]: metric_names(rule["expr"]) for rule in alert_rules()}
    read = {where: {n for n in names if not airflow_metric(n)} for where, names in read.items()}  # Airflow's own
    unknown = {where: sorted(names - defined) for where, names in read.items() if names - defined}
    assert not unknown, unknown
    assert all(re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", n) for names in read.values() for n in names)


def test_the_metric_name_reader_is_not_vacuous() -> None:
    assert metric_names('sum by (table) (rate(k2_x_total{a="b"}[5m])) / on() k2_y') == {"k2_x_total", "k2_y"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(k2_z_bucket[1m]))) > 2") == {"k2_z_bucket"}
