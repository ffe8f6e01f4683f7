"""The stack's Prometheus files, checked by Prometheus's own promtool (Debian's `prometheus`
package, 2.42; the compose stack runs 3.7, whose configuration these files also are).
The rules, dashboards and their `promtool test rules` come with the observability work."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

PROMTOOL = shutil.which("promtool")
CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool: apt-get install --no-install-recommends prometheus (.ci/run does)"
)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_the_stacks_prometheus_config_is_valid() -> None:
    result = check_config(CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_prometheus_config_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus.yml"
    broken.write_text(CONFIG.read_text().replace("type: A", "type: AAAAX", 1))
    result = check_config(broken)
    assert result.returncode != 0 and "AAAAX" in result.stdout + result.stderr, result.stdout + result.stderr
