"""The stack's Prometheus configuration and the local one `k2 up` writes, checked by Prometheus's
own promtool (Debian's `prometheus` package, 2.42; the compose stack runs 3.7, whose configuration
these files also are): both valid, with K2's rule files, and the same scrape jobs. The rules
themselves: test_alert_rules.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from k2_etl.config import load_settings
from k2_etl.monitoring import JOBS, RULES_DIR, local_config, rule_files
from tests.compose import resolved
from tests.helpers import REPO

PROMTOOL = shutil.which("promtool")
CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
RULES_TARGET = "/etc/k2-rules"  # where the stack mounts K2's rules (outside the read-only config folder)
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool: apt-get install --no-install-recommends prometheus (.ci/run does)"
)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def as_mounted(tmp_path: Path) -> Path:
    """The stack's /etc/prometheus: its config, and K2's rules where the compose file mounts them."""
    folder = tmp_path / "etc-prometheus"
    folder.mkdir()
    (tmp_path / "k2-rules").symlink_to(RULES_DIR)
    assert RULES_TARGET in CONFIG.read_text()
    (folder / "prometheus.yml").write_text(CONFIG.read_text().replace(RULES_TARGET, str(tmp_path / "k2-rules")))
    return folder / "prometheus.yml"


def test_the_stacks_prometheus_config_is_valid_with_k2s_rules(tmp_path: Path) -> None:
    result = check_config(as_mounted(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_files())} rule files found" in result.stdout, result.stdout
    mounts = resolved()["services"]["prometheus"]["volumes"]
    assert any(m["source"] == str(RULES_DIR) and m["target"] == RULES_TARGET for m in mounts), mounts


def test_the_local_prometheus_config_is_valid_with_k2s_rules(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(local_config(load_settings(home=tmp_path))))
    result = check_config(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_files())} rule files found" in result.stdout, result.stdout


def test_the_stack_and_the_local_prometheus_scrape_the_same_jobs(tmp_path: Path) -> None:
    stack = [job["job_name"] for job in yaml.safe_load(CONFIG.read_text())["scrape_configs"]]
    local = [job["job_name"] for job in local_config(load_settings(home=tmp_path))["scrape_configs"]]
    assert sorted(stack) == sorted(local) == sorted(JOBS)
    honoring = {j["job_name"] for j in yaml.safe_load(CONFIG.read_text())["scrape_configs"] if j.get("honor_labels")}
    assert honoring == {"pushgateway"}  # a push's job label is the batch job's, not the gateway's


def test_a_broken_prometheus_config_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus.yml"
    broken.write_text(CONFIG.read_text().replace("type: A", "type: AAAAX", 1))
    result = check_config(broken)
    assert result.returncode != 0 and "AAAAX" in result.stdout + result.stderr, result.stdout + result.stderr
