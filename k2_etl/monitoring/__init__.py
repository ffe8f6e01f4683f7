"""Prometheus's side of K2: the scrape jobs, the alert rules (``rules/*.yml``, package data, so an
installed K2 carries them) and the configuration of the local Prometheus `k2 up` starts.

The compose stack's ``docker/prometheus/prometheus.yml`` names the same jobs and mounts the same
rule files (a unit test compares them), so an alert written once fires in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from k2_etl.config import Settings, format_host_port

RULES_DIR = Path(__file__).parent / "rules"

#: Every scrape job, in both the compose stack and the local platform. Rules and dashboards select
#: targets by these names.
CONSUMER_JOB, API_JOB, MONITOR_JOB, PUSHGATEWAY_JOB, PROMETHEUS_JOB = (
    "k2-consumer", "k2-api", "k2-monitor", "pushgateway", "prometheus",
)  # fmt: skip
JOBS = (CONSUMER_JOB, API_JOB, MONITOR_JOB, PUSHGATEWAY_JOB, PROMETHEUS_JOB)


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def _targets(settings: Settings) -> dict[str, list[str]]:
    """Each job's targets on the local platform, from the settings (none for a part that is off)."""
    found = {
        CONSUMER_JOB: [format_host_port(settings.stream_metrics_host, settings.stream_metrics_port)]
        if settings.stream_metrics_port
        else [],
        API_JOB: [format_host_port(settings.api_host, settings.api_port)],
        MONITOR_JOB: [format_host_port(settings.monitor_host, settings.monitor_port)] if settings.monitor_port else [],
        PUSHGATEWAY_JOB: [],
        PROMETHEUS_JOB: [format_host_port("127.0.0.1", settings.prometheus_port)],
    }
    if settings.pushgateway_url:
        parts = urlsplit(settings.pushgateway_url)
        found[PUSHGATEWAY_JOB] = [
            format_host_port(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        ]
    return found


def local_config(settings: Settings) -> dict[str, Any]:
    """The local Prometheus's configuration: K2's jobs scraping this platform, K2's rules."""
    interval = f"{settings.prometheus_scrape_seconds:g}s"
    jobs: list[dict[str, Any]] = []
    for job, targets in _targets(settings).items():
        entry: dict[str, Any] = {"job_name": job, "static_configs": [{"targets": targets}]}
        if job == PUSHGATEWAY_JOB:
            entry["honor_labels"] = True  # keep each push's job and grouping labels
            if urlsplit(settings.pushgateway_url).scheme == "https":
                entry["scheme"] = "https"
        jobs.append(entry)
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files()],
        "scrape_configs": jobs,
    }
