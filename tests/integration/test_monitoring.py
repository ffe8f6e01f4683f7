"""The monitoring, live: `k2 up` with its Prometheus scraping the platform every second (K2's rules,
K2's scrape jobs), the sample day through the daily load's steps, a load with rejects, the
maintenance commands and some API queries. Then:

* every query of every dashboard panel returns a series through Prometheus's HTTP API (a panel
  that returns nothing fails the test with its title);
* every metric a rule reads is exposed by a target, and every job a rule names is a job Prometheus
  scrapes or a batch job pushes (the original K2's alerts could never fire: they named a job no one
  scraped);
* faults are seen: the reject alert fires after the load with rejects; a consumer that runs and says
  healthy but lands for another group fires the stalled alert; a stopped consumer fires the
  consumer-down alert; each within a bounded wait, and each resolves once the fault is repaired.

The tests of this file share one platform and run in order (the faults last).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.local.components import consumer
from k2_etl.local.supervisor import stop
from k2_etl.monitoring import JOBS
from tests.helpers import local_platform_env, poll, quiet, run_k2
from tests.monitoring import airflow_metric, alert_rules, metric_names, panel_queries, prometheus_query

pytestmark = pytest.mark.skipif(
    not (shutil.which("prometheus") and shutil.which("prometheus-pushgateway")),
    reason="needs Debian's prometheus and prometheus-pushgateway (.ci/run installs them)",
)

HEADER = '"event_time","symbol","exchange","price","size","currency","sequence_number","conditions","venue"\n'
ALERT_WAIT_SECONDS = 120.0  # the longest `for:` tested is 30 s, plus the stall time, passes and scrapes


class Platform:
    def __init__(self, env: dict[str, str], settings: Settings, folder: Path) -> None:
        self.env, self.settings, self.folder = env, settings, folder
        self.prometheus = f"http://127.0.0.1:{settings.prometheus_port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        return prometheus_query(self.prometheus, expr)

    def alerts(self, state: str = "firing") -> dict[str, list[dict[str, str]]]:
        answer = httpx.get(f"{self.prometheus}/api/v1/alerts", timeout=10).json()
        found: dict[str, list[dict[str, str]]] = {}
        for alert in answer["data"]["alerts"]:
            if alert["state"] == state:
                found.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return found

    def start_consumer(self) -> None:
        """`k2 up` again, which starts the stopped consumer (its exit code says the platform is not
        healthy yet while the records wait: that is the point)."""
        up = run_k2(self.env, "up")
        assert "consumer: started" in up.stdout, up.stdout + up.stderr

    def load(self, name: str, rows: list[str]) -> dict[str, Any]:
        path = self.folder / name
        path.write_text(HEADER + "".join(row + "\n" for row in rows))
        result = run_k2(self.env, "load", str(path), "--format", "k2", "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        assert "not pushed" not in result.stderr, result.stderr  # the Pushgateway took its metrics
        report: dict[str, Any] = json.loads(result.stdout)
        return report


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    folder = tmp_path_factory.mktemp("monitoring")
    env = local_platform_env(
        folder / "home", airflow_enabled="false", ingest_metrics_port="0",
        prometheus_scrape_seconds="1", monitor_interval_seconds="1", stream_stall_seconds="4",
        stream_session_timeout_seconds="6", stream_max_poll_interval_seconds="7",
    )  # fmt: skip
    settings = load_settings(**{k.removeprefix("K2_").lower(): v for k, v in env.items() if k.startswith("K2_")})
    here = Platform(env, settings, folder)
    try:
        up = run_k2(env, "up")
        assert up.returncode == 0, up.stderr + up.stdout
        # The consumer's counters scraped at 0 before anything lands: an alert on their increase
        # (K2SequenceGaps) then sees the gaps; a first sample already holding them has no increase.
        poll(lambda: here.query('k2_stream_sequence_missing_total{table="trades"}') or None, 60,
             "Prometheus to scrape the consumer before the load", every=0.5)  # fmt: skip
        demo = run_k2(env, "demo", "--json", timeout=300)  # load, wait until landed, check: as the DAG does
        assert demo.returncode == 0, demo.stderr + demo.stdout
        assert json.loads(demo.stdout)["quality"]["ok"] is True
        rejected = here.load("trades_rejects.csv", ["2026-11-02T01:00:00Z,MONA,ASX,10.5,100,AUD,1,,",
                                                    "2026-11-02T01:00:01Z,MONA,ASX,-3,100,AUD,2,,"])  # fmt: skip
        assert rejected["totals"]["rows_rejected"] == 1, rejected
        for command in ("compact", "expire", "clean-orphans"):
            result = run_k2(env, command)
            assert result.returncode == 0 and "not pushed" not in result.stderr, result.stderr
        api = f"http://127.0.0.1:{settings.api_port}"
        for path in ("/v1/trades?symbol=BWVH&start=2026-11-02&end=2026-11-03", "/v1/symbols", "/health"):
            assert httpx.get(f"{api}{path}", timeout=30).status_code == 200, path
        yield here
    finally:
        run_k2(env, "down")


def test_every_dashboard_panel_query_returns_a_series(platform: Platform) -> None:
    """(The Airflow dashboard's: test_airflow_up.py, which runs Airflow.)"""
    queries = list(panel_queries(airflow=False))
    assert len(queries) > 50

    def empty() -> list[str]:
        return [str(q) for q in queries if not platform.query(q.expr)]

    try:
        poll(lambda: not empty() or None, 60, "every panel's query to return a series", every=2)
    except AssertionError:
        pytest.fail("panels whose query returns nothing:\n" + "\n".join(empty()))


def test_the_table_health_gauges_say_what_the_tables_hold(platform: Platform) -> None:
    """The monitor's numbers against the table read by pyiceberg here (rows and files), after a
    pass that saw the table as it is now (nothing lands meanwhile: every load has landed)."""
    table = open_catalog(platform.settings).load_table((platform.settings.namespace, "trades"))
    rows, files = len(table.scan().to_arrow()), len(table.inspect.files())

    def seen() -> bool:
        found = {s["metric"]["__name__"]: float(s["value"][1])
                 for s in platform.query('{__name__=~"k2_lake_rows|k2_lake_data_files", table="trades"}')}  # fmt: skip
        return found == {"k2_lake_rows": rows, "k2_lake_data_files": files}

    poll(seen, 30, f"k2_lake_rows {rows} and k2_lake_data_files {files} for trades", every=1)
    worst = platform.query('k2_lake_partition_data_files_max{table="trades"}')
    assert 1 <= float(worst[0]["value"][1]) <= files


def test_freshness_counts_from_when_a_load_produced_not_from_the_event_time(platform: Platform) -> None:
    """The sample day's events are weeks old; its records were produced seconds before they landed
    (the k2-produced-ms header on one record in 64): every batch's freshness is under a minute."""
    count = platform.query('k2_stream_freshness_seconds_count{table="trades"}')
    within = platform.query('k2_stream_freshness_seconds_bucket{table="trades",le="60.0"}')
    assert count and float(count[0]["value"][1]) >= 1
    assert float(within[0]["value"][1]) == float(count[0]["value"][1]), (within, count)


def test_every_series_and_job_a_rule_names_exists(platform: Platform) -> None:
    scraped = {t["labels"]["job"] for t in httpx.get(f"{platform.prometheus}/api/v1/targets", timeout=10)
               .json()["data"]["activeTargets"]}  # fmt: skip
    assert scraped == set(JOBS)
    pushed = {s["metric"]["job"] for s in platform.query("k2_job_last_run_timestamp_seconds")}
    assert {"k2_load", "k2_day_quality", "k2_compact", "k2_expire", "k2_clean_orphans"} <= pushed
    for rule in alert_rules():
        for name in {n for n in metric_names(rule["expr"]) - {"ALERTS"} if not airflow_metric(n)}:  # (Airflow's:
            # test_airflow_up.py)
            found = platform.query(f'count by (job) ({{__name__="{name}"}})')
            assert found, f"{rule['alert']} reads {name}, which no target exposes"
        for job in _jobs_named(rule["expr"]):
            assert job in scraped | pushed, f"{rule['alert']} names job {job!r}, which nothing scrapes or pushes"


def _jobs_named(expr: str) -> set[str]:
    import re

    jobs = set()
    for op, value in re.findall(r'job\s*(=~|=)\s*"([^"]*)"', expr):
        jobs |= set(value.split("|")) if op == "=~" else {value}
    return jobs


def test_a_healthy_platform_fires_only_what_its_data_calls_for(platform: Platform) -> None:
    """Nothing about the platform's health fires; the data's own faults do: the fixture's load had a
    reject, and the sample day has sequence gaps (the quality checks counted them)."""
    gaps = platform.query('k2_quality_sequence_events{kind="gap"} > 0')
    assert gaps, "the sample day's gaps"
    expected = {"K2LoadRejectedRows", "K2SequenceGaps"}

    def unexpected() -> dict[str, Any]:
        """Alerts firing or pending (about to fire) that the data does not call for."""
        found = {**platform.alerts("pending"), **platform.alerts("firing")}
        return {name: labels for name, labels in found.items() if name not in expected}

    # (polled: on a busy machine one slow health check makes an alert pending for a pass)
    try:
        poll(lambda: not unexpected() or None, 30, "no alert but the data's", every=1)
    except AssertionError:
        pytest.fail(f"alerts a healthy platform should not raise: {unexpected()}")
    try:  # (a rule fires at its first evaluation after the scrape that shows it)
        poll(lambda: set(platform.alerts()) == expected or None, 30, "the data's alerts firing", every=1)
    except AssertionError:
        pytest.fail(f"firing: {platform.alerts()}, expected {expected}")
    assert not unexpected(), unexpected()


def test_a_load_with_rejects_is_seen_by_the_reject_panel_and_alert(platform: Platform) -> None:
    reasons = platform.query('sum by (format, reason) (k2_ingest_rows_rejected_total{job="k2_load"}) > 0')
    assert [r["metric"]["format"] for r in reasons] == ["k2"], reasons
    firing = poll(lambda: platform.alerts().get("K2LoadRejectedRows"), 30, "K2LoadRejectedRows firing", every=1)
    assert [a["format"] for a in firing] == ["k2"]


def test_a_consumer_landing_for_another_group_fires_the_stalled_alert(platform: Platform) -> None:
    """The consumer runs and says healthy (so K2ConsumerDown stays quiet) but lands for another
    group: what loads produce never lands for the platform's group."""
    settings = platform.settings
    stop(settings, consumer(settings), quiet)
    log = (platform.folder / "other-group.log").open("w")
    env = {**platform.env, "K2_STREAM_GROUP": "k2-monitoring-other"}
    k2 = Path(sys.executable).with_name("k2")
    other = subprocess.Popen([str(k2), "consume"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        platform.load("trades_stall.csv", [f"2026-11-02T02:00:0{i}Z,MONB,ASX,11.5,100,AUD,{i + 1},," for i in range(5)])
        stalled = poll(lambda: platform.alerts().get("K2ConsumerStalled"), ALERT_WAIT_SECONDS,
                       "K2ConsumerStalled firing", every=1)  # fmt: skip
        assert {a["topic"] for a in stalled} == {f"{settings.topic_prefix}trades"}, stalled
        assert "K2ConsumerDown" not in platform.alerts()  # it is up: only the landed offsets tell
    finally:
        other.terminate()
        other.wait(timeout=60)
        log.close()
    platform.start_consumer()  # the platform's group again: it lands the file
    poll(lambda: "K2ConsumerStalled" not in platform.alerts() or None, ALERT_WAIT_SECONDS,
         "K2ConsumerStalled resolved once the consumer lands", every=1)  # fmt: skip


def test_a_stopped_consumer_fires_the_consumer_down_alert(platform: Platform) -> None:
    settings = platform.settings
    stop(settings, consumer(settings), quiet)
    poll(lambda: platform.alerts().get("K2ConsumerDown"), ALERT_WAIT_SECONDS, "K2ConsumerDown firing", every=1)
    assert platform.query('k2_platform_component_up{component="consumer"} == 0')  # the monitor agrees
    platform.start_consumer()
    poll(lambda: "K2ConsumerDown" not in platform.alerts() or None, ALERT_WAIT_SECONDS,
         "K2ConsumerDown resolved once the consumer runs", every=1)  # fmt: skip
