"""The local Airflow's environment and the demo's sample placement (no processes started)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from k2_etl.config import load_settings
from k2_etl.local.airflow import REPO, airflow_environment, airflow_home, password_file
from k2_etl.local.components import AIRFLOW_START_TIMEOUT_SECONDS, airflow, platform
from k2_etl.local.demo import SAMPLE, place_sample, sample_day, sample_symbol


@pytest.fixture(autouse=True)
def _no_airflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("AIRFLOW")]:
        monkeypatch.delenv(name)


def test_airflow_runs_k2s_dags_on_loopback_sized_for_a_laptop(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", airflow_port=18080)
    env = airflow_environment(settings)
    assert env["AIRFLOW_HOME"] == str(tmp_path / "home" / "airflow") == str(airflow_home(settings))
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO / "dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(REPO / "plugins")
    assert (env["AIRFLOW__API__HOST"], env["AIRFLOW__API__PORT"]) == ("127.0.0.1", "18080")
    assert env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:18080"  # tasks reach the execution API there
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["PATH"].startswith(str(Path(sys.executable).parent))  # standalone runs `airflow` from PATH
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env  # Airflow's default: SQLite in AIRFLOW_HOME
    assert password_file(settings) == tmp_path / "home" / "airflow" / "simple_auth_manager_passwords.json.generated"


def test_the_users_airflow_settings_win_except_where_k2_settings_decide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "mine"))
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "8")
    monkeypatch.setenv("AIRFLOW__API__PORT", "9999")
    monkeypatch.setenv("K2_AIRFLOW_DATABASE_URL", "postgresql+psycopg2://airflow:pw@127.0.0.1:5432/airflow")
    env = airflow_environment(load_settings(home=tmp_path / "home"))
    assert env["AIRFLOW_HOME"] == str(tmp_path / "mine")
    assert "AIRFLOW__CORE__PARALLELISM" not in env  # inherited as the user set it
    assert env["AIRFLOW__API__PORT"] == "8080"  # K2_AIRFLOW_PORT: where `k2 status` looks
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://airflow:pw@127.0.0.1:5432/airflow"


def test_airflow_component_is_stopped_with_sigint_given_time_and_optional(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    component = airflow(settings)
    assert component.after_init and component.startable and component.stop_signal == signal.SIGINT
    assert component.start_timeout == AIRFLOW_START_TIMEOUT_SECONDS
    assert platform(settings)[-1].name == "airflow"
    off = load_settings(home=tmp_path, airflow_enabled=False)
    assert "airflow" not in [c.name for c in platform(off)]
    assert platform(off, include_disabled=True)[-1].name == "airflow"  # `k2 down` stops it all the same


def test_sample_is_placed_as_the_daily_load_expects_it_once(tmp_path: Path) -> None:
    sample = tmp_path / "sample"
    shutil.copytree(SAMPLE, sample)
    settings = load_settings(home=tmp_path / "home")
    day = sample_day(sample).isoformat()
    assert day == "2026-11-02" and sample_symbol(sample)

    first = {p.format: p for p in place_sample(settings, sample)}
    k2_day = tmp_path / "home" / "landing" / "k2" / day
    assert first["k2"].folder == k2_day and "reference_data.csv" in first["k2"].copied  # inside the day folder
    assert (k2_day / "reference_data.csv").read_bytes() == (sample / "k2" / "reference_data.csv").read_bytes()
    assert (tmp_path / "home" / "landing" / "asx" / day / "trades" / "7001.csv").is_file()
    assert not list((tmp_path / "home" / "landing").rglob("*.part"))

    (sample / "k2" / day / "trades_ASX.csv").write_text("changed\n")  # a newer sample replaces the old copy
    again = {p.format: p for p in place_sample(settings, sample)}
    assert again["k2"].copied == ["trades_ASX.csv"] and again["k2"].unchanged == len(first["k2"].copied) - 1
    assert again["asx"].copied == [] and again["asx"].unchanged == len(first["asx"].copied)
