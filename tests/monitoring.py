"""What the monitoring tests share: K2's dashboards and rules read the way Grafana and Prometheus
read them (the committed JSON files and rule files), their queries with the dashboard variables
substituted, and the metric names they use."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from k2_etl.monitoring import rule_files
from tests.helpers import REPO

GRAFANA = REPO / "docker" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
#: Grafana's built-in variables, as a test substitutes them (Prometheus here scrapes every second).
BUILT_INS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


def generator() -> ModuleType:
    """docker/grafana/dashboards.py (not a package: loaded from its path, once)."""
    name = "k2_dashboards"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, GRAFANA / "dashboards.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass(frozen=True)
class PanelQuery:
    uid: str  # the dashboard's
    dashboard: str
    panel: str
    expr: str  # variables substituted

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel}: {self.expr}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panel_queries(airflow: bool | None = None) -> Iterator[PanelQuery]:
    """Every query of every panel of the committed dashboards, variables substituted (each
    dashboard variable by its "All" value, Grafana's built-ins by :data:`BUILT_INS`); ``airflow``:
    only the dashboards that need a running Airflow (True) or only the others (False)."""
    for path in dashboard_files():
        dashboard = json.loads(path.read_text())
        if airflow is not None and (dashboard["uid"] in generator().NEEDS_AIRFLOW) != airflow:
            continue
        values = {f"${v['name']}": v["allValue"] for v in dashboard.get("templating", {}).get("list", [])}
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name, value in sorted({**BUILT_INS, **values}.items(), key=lambda kv: -len(kv[0])):
                    expr = expr.replace(name, value)
                assert "$" not in expr, f"{path.name} / {panel['title']}: a variable left in {expr}"
                yield PanelQuery(dashboard["uid"], dashboard["title"], panel["title"], expr)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for path in rule_files() for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]  # fmt: skip


#: PromQL words that look like metric names but are not.
_NOT_METRICS = {
    "sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "rate", "increase", "deriv", "irate", "delta", "changes", "histogram_quantile", "label_replace",
    "absent", "vector", "time", "day_of_week", "min_over_time", "max_over_time", "le", "bool", "offset", "clamp_min",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (identifiers not inside braces, quotes or a
    by/without list, and not functions or keywords)."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b", text))
    return {n for n in names if n not in _NOT_METRICS and not re.fullmatch(r"\d+[smhd]?", n)}


def airflow_metric(name: str) -> bool:
    """A series Airflow sends (StatsD, through k2 monitor): only a platform running Airflow has it."""
    return name.startswith("airflow_")


def prometheus_query(url: str, expr: str) -> list[dict[str, Any]]:
    """The series an instant query of the Prometheus at ``url`` returns (an error fails the test)."""
    import httpx

    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result
