"""Run real Airflow 3 (its CLI, in subprocesses) against K2's dags/ and plugins/.

Each test session gets its own AIRFLOW_HOME with a SQLite metadata database, so nothing is
written to ~/airflow and Airflow's configuration never leaks into the test process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from k2_etl.config import Settings
from tests.helpers import REPO, env_of

BIN = Path(sys.executable).parent
#: K2's DAGs, each in the file of dags/ named after it: the tests fail when Airflow finds fewer (or none).
K2_DAGS = ("k2_daily_load", "k2_maintenance", "k2_replay", "k2_schema_registration")


def airflow_env(settings: Settings, home: Path) -> dict[str, str]:
    """The environment of an Airflow process that sees K2's DAGs and plugins and ``settings``."""
    env = env_of(settings)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # Airflow starts `airflow` from PATH
    )
    return env


def airflow(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def python(env: dict[str, str], code: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``env`` (Airflow reads its configuration at import)."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=REPO)  # fmt: skip
