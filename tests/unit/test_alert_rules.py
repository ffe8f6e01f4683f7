"""K2's alert rules under `promtool test rules`: every alert fires on the fault it names and is
silent on the healthy series before it; `promtool check rules` accepts the file; every alert has a
runbook.

The promtool test file is written from :data:`CASES` (series and expectations, here) and the rule
file itself (the expected annotations are its templates with the case's labels filled in), so a
rule's text is written once.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from k2_etl.monitoring import rule_files
from tests.helpers import REPO

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool: `make install` (or .ci/run) installs Debian's prometheus"
)


@dataclass(frozen=True)
class Case:
    """One alert's test: ``series`` (promtool expanding notation) with a fault starting part way;
    nothing fires at ``quiet_at`` (healthy), the alert fires at ``fires_at`` with ``labels``."""

    alert: str
    series: dict[str, str]
    quiet_at: str
    fires_at: str
    labels: list[dict[str, str]] = field(default_factory=lambda: [{}])
    interval: str = "15s"


def _histogram(name: str, labels: str, fast: list[str], slow: list[str], phases: tuple[str, str]) -> dict[str, str]:
    """Buckets of a histogram whose observations fall in the ``fast`` buckets during the first phase
    and in the ``slow`` ones only (above them) during the second."""
    healthy, faulty = phases
    series = {}
    for le in fast:
        series[f'{name}_bucket{{{labels},le="{le}"}}'] = f"0+10x{healthy} {int(healthy) * 10}+0x{faulty}"
    for le in slow:
        series[f'{name}_bucket{{{labels},le="{le}"}}'] = f"0+10x{int(healthy) + int(faulty)}"
    return series


CASES = [
    Case("K2ConsumerDown", {'up{job="k2-consumer",instance="c1:9400"}': "1x8 0x8"}, "2m", "3m15s"),
    Case("K2ApiDown", {'up{job="k2-api",instance="a1:8000"}': "1x8 0x8"}, "2m", "4m"),
    Case(
        "K2MonitorDown",
        {'up{job="k2-monitor",instance="m:9104"}': "1x8 0x16"},
        "2m",
        "5m",
        [{"job": "k2-monitor", "instance": "m:9104"}],
    ),
    Case(  # scraped, but its passes stopped at 300 s (a hung catalog call): stuck is down too
        "K2MonitorDown",
        {
            'k2_monitor_last_pass_timestamp_seconds{job="k2-monitor",instance="m:9104"}': "0+15x20 300x40",
            'k2_monitor_interval_seconds{job="k2-monitor",instance="m:9104"}': "15x60",
            # a batch job's push of the gauge (never pushed now; if it were, it must not count)
            'k2_monitor_last_pass_timestamp_seconds{job="k2_load",scope="k2"}': "0x60",
        },
        "4m",
        "10m",
        [{"job": "k2-monitor", "instance": "m:9104"}],
    ),
    Case(
        "K2DependencyUnreachable",
        {
            'k2_platform_component_up{component="registry",job="k2-monitor"}': "1x8 0x8",
            'k2_stream_dependency_up{dependency="catalog",job="k2-consumer"}': "1x8 0x8",
            'k2_platform_component_up{component="api",job="k2-monitor"}': "1x8 0x8",
        },  # not a dependency
        "2m",
        "4m",
        [{"component": "registry", "job": "k2-monitor"}, {"dependency": "catalog", "job": "k2-consumer"}],
    ),
    Case(
        "K2ComponentUnhealthy",
        {
            'k2_platform_component_up{component="api",job="k2-monitor"}': "1x8 0x16",
            'k2_platform_component_up{component="landed",job="k2-monitor"}': "0x24",  # K2ConsumerStalled's
            'k2_platform_component_up{component="broker",job="k2-monitor"}': "1x24",
        },
        "2m",
        "5m",
        [{"component": "api", "job": "k2-monitor"}],
    ),
    Case(
        "K2ConsumerStalled",
        {
            'k2_lake_unlanded_stalled{topic="k2.trades",partition="0"}': "0x8 1x8",
            'k2_lake_unlanded_stalled{topic="k2.trades",partition="1"}': "0x16",
        },
        "2m",
        "3m15s",
        [{"topic": "k2.trades", "partition": "0"}],
    ),
    Case(
        "K2ConsumerLagGrowing",
        {
            'k2_stream_lag_messages{topic="k2.quotes",partition="0"}': "500x20 20000+1000x60",
            'k2_stream_lag_messages{topic="k2.trades",partition="0"}': "500x80",
        },
        "5m",
        "17m",
        [{"topic": "k2.quotes"}],
    ),
    Case(
        "K2FreshnessSlow",
        {
            **_histogram("k2_stream_freshness_seconds", 'table="trades"', ["1", "2"], ["5", "+Inf"], ("40", "80")),
            'k2_stream_freshness_seconds_count{table="trades"}': "0+10x120",
            # a small load's two slow batches: too few to say the stream is slow
            'k2_stream_freshness_seconds_bucket{table="quotes",le="2"}': "0x120",
            'k2_stream_freshness_seconds_bucket{table="quotes",le="5"}': "0x40 2x80",
            'k2_stream_freshness_seconds_bucket{table="quotes",le="+Inf"}': "0x40 2x80",
            'k2_stream_freshness_seconds_count{table="quotes"}': "0x40 2x80",
        },
        "9m",
        "26m",
        [{"table": "trades"}],
    ),
    Case(
        "K2CommitFailures",
        {'k2_stream_commit_failures_total{table="trades"}': "0x20 0+2x40"},
        "4m",
        "13m",
        [{"table": "trades"}],
    ),
    Case(
        "K2BatchesFenced",
        {'k2_stream_fenced_batches_total{table="quotes"}': "0x20 0+1x40"},
        "4m",
        "10m",
        [{"table": "quotes"}],
    ),
    Case(
        "K2DeadLetters",
        {'k2_stream_records_rejected_total{table="trades"}': "0x20 1x20"},
        "4m",
        "6m",
        [{"table": "trades"}],
    ),
    Case(
        "K2SequenceGaps",
        {'k2_stream_sequence_missing_total{table="trades"}': "0x20 3x20"},
        "4m",
        "6m",
        [{"table": "trades"}],
    ),
    Case(
        "K2LoadRejectedRows",
        {
            'k2_ingest_rows_rejected_total{job="k2_load",format="k2",record_type="trades",reason="price"}': "0x8 2x8",
            'k2_ingest_rows_rejected_total{job="k2_load",format="asx",record_type="trades",reason="price"}': "0x16",
        },
        "1m",
        "3m",
        [{"format": "k2"}],
    ),
    Case(
        "K2LoadFailed",
        {
            'k2_job_last_run_succeeded{job="k2_load",scope="k2"}': "1x8 0x8",
            'k2_job_last_run_succeeded{job="k2_compact",scope="all"}': "0x16",
        },  # not a load
        "1m",
        "3m",
        [{"job": "k2_load", "scope": "k2"}],
    ),
    # Epoch 0 is a Thursday 00:00 UTC. The last daily load passed its checks then: Friday 04:00 is
    # 28 hours later on a weekday (day_of_week 5).
    Case(
        "K2DailyLoadMissing",
        {'k2_job_last_success_timestamp_seconds{job="k2_day_quality"}': "0x400"},
        "27h",
        "28h30m",
        interval="5m",
    ),
    Case(
        "K2QualityCheckFailed",
        {
            'k2_quality_check_passed{check="no duplicate ids",job="k2_day_quality"}': "1x8 0x8",
            'k2_quality_check_passed{check="every record landed",job="k2_day_quality"}': "1x16",
        },
        "1m",
        "3m",
        [{"check": "no duplicate ids", "job": "k2_day_quality"}],
    ),
    Case(
        "K2ApiErrors",
        {
            'k2_api_requests_total{endpoint="trades",method="GET",status="200"}': "0+100x80",
            'k2_api_requests_total{endpoint="trades",method="GET",status="500"}': "0x40 0+10x40",
            'k2_api_requests_total{endpoint="trades",method="GET",status="429"}': "0+20x80",
        },
        "9m",
        "19m30s",
    ),
    Case(
        "K2ApiSlow",
        _histogram("k2_api_request_duration_seconds", 'endpoint="trades"', ["0.5", "2.5"], ["5", "+Inf"], ("40", "80")),
        "9m",
        "26m",
    ),
    Case("K2ApiRateLimiting", {"k2_api_rate_limited_total": "0x40 0+30x80"}, "9m", "25m"),
    Case("K2ApiOverloaded", {'k2_api_overloaded_total{endpoint="/v1/trades"}': "0x40 0+60x80"}, "9m", "25m"),
    Case(
        "K2CompactionBehind",
        {
            'k2_lake_partition_data_files_max{table="trades"}': " ".join(
                ["50 300 550 800 1050 1300 1550 1800 2050 2300 2550 2800"] * 3
            )
            + " 3000x48"
        },
        "2h55m",
        "5h30m",
        [{"table": "trades"}],
        interval="5m",
    ),
    Case(
        "K2TooManySnapshots",
        {'k2_lake_snapshots{table="trades"}': "20000x12 40000x24", 'k2_lake_snapshots{table="quotes"}': "20000x36"},
        "55m",
        "110m",
        [{"table": "trades"}],
        interval="5m",
    ),
]

CASES += [
    Case(
        "K2AirflowSchedulerDown",
        {"airflow_scheduler_heartbeat_total": "0+3x20 60x20"},  # a heartbeat every 5 s, then none
        "4m",
        "9m",
    ),
    Case(  # Airflow up (k2 monitor's check) but its heartbeats stop reaching the monitor (the series goes)
        "K2AirflowSchedulerDown",
        {
            "airflow_scheduler_heartbeat_total": "0+3x8",
            'k2_platform_component_up{component="airflow",job="k2-monitor"}': "1x40",
        },
        "2m",
        "9m",  # the series is stale (absent) 5 min after its last sample, then 1 min of for:
    ),
    Case(
        "K2AirflowTaskFailures",
        {
            # the first failure: the StatsD series starts at 1
            'airflow_ti_failures_total{dag_id="k2_daily_load",task_id="load"}': "_x100 1x20",
            'airflow_ti_failures_total{dag_id="k2_daily_load",task_id="check_quality"}': "1x100 2x20",  # again
            'airflow_ti_failures_total{dag_id="k2_maintenance",task_id="compact"}': "0x120",
        },
        "20m",
        "26m",
        [{"dag_id": "k2_daily_load", "task_id": "check_quality"}, {"dag_id": "k2_daily_load", "task_id": "load"}],
    ),
]

#: k2_daily_load runs Monday to Friday at 06:00 UTC. Its last pass was Friday 06:00 (30 h after
#: epoch): nothing fires on Saturday noon (60 h), Sunday night (95 h) or Monday 09:00 (105 h); by
#: Monday 10:30 (106.5 h: 76.5 h later) Monday's run is missing.
FRIDAY = 'k2_job_last_success_timestamp_seconds{job="k2_day_quality"}'
WEEKEND = [Case("K2DailyLoadMissing", {FRIDAY: "108000x1600"}, quiet, "106h30m", interval="5m")
           for quiet in ("60h", "95h", "105h")]  # fmt: skip

#: What a healthy platform has whatever the case: every scrape job up (the down alerts fire on an
#: absent job too). A case's own series of the same name replace these.
HEALTHY = ('up{job="k2-consumer",instance="c1:9400"}', 'up{job="k2-api",instance="a1:8000"}',
           'up{job="k2-monitor",instance="m:9104"}')  # fmt: skip
#: promtool evaluates every rule at the file's interval up to a test's last time: cases that span
#: hours go to a file evaluated every 5 minutes (their rules' `for:` is 15 minutes or more).
EVALUATION_INTERVALS = ("15s", "5m")

_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def _seconds(duration: str) -> int:
    return sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([dhms])", duration))


def _rules() -> dict[str, dict[str, Any]]:
    rules = {}
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules[rule["alert"]] = rule
    return rules


def _render(template: str, labels: dict[str, str]) -> str:
    """The rules' templates use only ``{{ $labels.name }}`` (a label a series lacks renders empty)."""
    rendered = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)
    assert "{{" not in rendered, f"a template this test cannot render: {template}"
    return rendered


def _test_group(case: Case, rule: dict[str, Any]) -> dict[str, Any]:
    expected = []
    for labels in case.labels:
        expected.append({
            "exp_labels": {**labels, **rule.get("labels", {})},
            "exp_annotations": {k: _render(v, labels) for k, v in rule.get("annotations", {}).items()},
        })  # fmt: skip
    every = sorted(_rules())
    samples = _seconds(case.fires_at) // _seconds(case.interval) + 4
    series = {**{name: f"1x{samples}" for name in HEALTHY}, **case.series}  # a case's own replace these
    return {
        "interval": case.interval,
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [
            # healthy: none of K2's alerts fires (not only the one under test)
            *({"eval_time": case.quiet_at, "alertname": name, "exp_alerts": []} for name in every),
            {"eval_time": case.fires_at, "alertname": case.alert, "exp_alerts": expected},
        ],
    }


def _promtool_test(tmp_path: Path, rule_paths: list[Path], cases: list[Case], rules: dict[str, Any]) -> str:
    """Run promtool on ``cases``, one file per evaluation interval; the output of a failure, or ''."""
    failures = []
    for every in EVALUATION_INTERVALS:
        mine = [c for c in cases if (c.interval == "15s") == (every == "15s")]
        if not mine:
            continue
        spec = {"rule_files": [str(p) for p in rule_paths], "evaluation_interval": every,
                "tests": [_test_group(case, rules[case.alert]) for case in mine]}  # fmt: skip
        path = tmp_path / f"k2-alerts-{every}.test.yml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        result = subprocess.run([str(PROMTOOL), "test", "rules", str(path)], capture_output=True, text=True,
                                check=False, timeout=300)  # fmt: skip
        if result.returncode != 0:
            failures.append(result.stdout[-6000:] + result.stderr[-3000:])
    return "\n".join(failures)


def test_every_alert_has_a_case_and_a_runbook() -> None:
    rules = _rules()
    assert sorted(rules) == sorted({c.alert for c in CASES})
    for name, rule in rules.items():
        runbook = rule["annotations"]["runbook_url"]
        assert runbook == f"docs/runbooks/{name}.md", name
        page = (REPO / runbook).read_text()
        assert page.startswith(f"# {name}\n"), runbook
        for heading in ("## What it means", "## Confirm it", "## Fix it"):
            assert heading in page, f"{runbook} lacks {heading!r}"
        assert "k2 " in page.split("## Confirm it")[1].split("## Fix it")[0], f"{runbook}: confirm with a k2 command"
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run([str(PROMTOOL), "check", "rules", *map(str, rule_files())], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_each_alert_fires_on_its_fault_and_is_silent_when_healthy(tmp_path: Path) -> None:
    failures = _promtool_test(tmp_path, rule_files(), [*CASES, *WEEKEND], _rules())
    assert not failures, failures


@needs_promtool
def test_a_broken_rule_fails_its_test(tmp_path: Path) -> None:
    """The promtool test is not vacuous: a consumer-down rule that waits too long fails it."""
    broken = tmp_path / "k2-alerts.yml"
    text = rule_files()[0].read_text()
    assert "        for: 30s\n" in text
    broken.write_text(text.replace("        for: 30s\n", "        for: 10m\n", 1))
    rules = {r["alert"]: r for g in yaml.safe_load(broken.read_text())["groups"] for r in g["rules"] if "alert" in r}
    failures = _promtool_test(tmp_path, [broken], [CASES[0]], rules)
    assert "K2ConsumerDown" in failures, failures
