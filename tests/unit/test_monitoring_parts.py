"""Which monitoring parts `k2 up` starts: Debian's Prometheus and Pushgateway when installed; when
not, the platform runs without them and `k2 up` says so (a missing package is no error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from k2_etl.config import load_settings
from k2_etl.local.components import not_installed, platform


def names(home: Path, **settings: object) -> list[str]:
    return [c.name for c in platform(load_settings(home=home, **settings))]


def test_installed_parts_are_started_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for binary in ("prometheus", "prometheus-pushgateway"):
        (bin_dir / binary).write_text("#!/bin/sh\n")
        (bin_dir / binary).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    settings = {"pushgateway_url": "http://127.0.0.1:9091", "airflow_enabled": False}
    order = names(tmp_path, **settings)
    assert order.index("pushgateway") < order.index("consumer") < order.index("monitor") < order.index("prometheus")
    assert not not_installed(load_settings(home=tmp_path, **settings))
    assert "prometheus" not in names(tmp_path, **settings, prometheus_enabled=False)
    assert "pushgateway" not in names(tmp_path, **{**settings, "pushgateway_url": ""})


def test_missing_packages_leave_the_parts_out_with_a_line_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing installed
    settings = load_settings(home=tmp_path, pushgateway_url="http://127.0.0.1:9091", airflow_enabled=False)
    assert {"pushgateway", "prometheus"}.isdisjoint(names(tmp_path, pushgateway_url="http://127.0.0.1:9091"))
    lines = not_installed(settings)
    assert len(lines) == 2
    assert "Debian's prometheus-pushgateway is not installed" in lines[0] and "K2_PUSHGATEWAY_URL=" in lines[0]
    assert "Debian's prometheus is not installed" in lines[1] and "K2_PROMETHEUS_ENABLED=false" in lines[1]
    # A Pushgateway elsewhere is not K2's to start: it stays a part (checked), whatever is installed here.
    assert "pushgateway" in names(tmp_path, pushgateway_url="http://pushgateway:9091")
