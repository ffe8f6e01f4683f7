"""The local Airflow `k2 up` starts: its environment, its login and a small REST client.

`airflow standalone` runs the scheduler (LocalExecutor), the DAG processor, the triggerer and
the API server (UI and REST API) as one process tree, with K2's ``dags/`` and ``plugins/``. Its
configuration is environment variables: the ones derived from K2 settings (where it listens,
the metadata database, the DAGs) always apply; the laptop-sized defaults (parallelism, DAGs
unpaused) apply unless the same ``AIRFLOW__*`` variable is set in the environment.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from tenacity import RetryCallState, retry, retry_if_result, stop_after_attempt, wait_random_exponential

import k2_etl
from k2_etl.config import Settings, format_host_port
from k2_etl.errors import ComponentError, UnavailableError

#: Where ``dags/`` and ``plugins/`` live: the source checkout K2 is installed from (editable).
REPO = Path(k2_etl.__file__).resolve().parents[1]
#: The user `airflow standalone` creates, with a generated password (SimpleAuthManager).
USER = "admin"
REQUEST_TIMEOUT_SECONDS = 10.0

#: Airflow settings sized for a laptop; an ``AIRFLOW__*`` variable already in the environment wins.
LAPTOP_DEFAULTS = {
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",  # K2's schedules run once `k2 up` is up
    "AIRFLOW__CORE__PARALLELISM": "4",  # LocalExecutor pre-forks this many workers (default 32: ~1.6 GB)
    "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",  # a handful of DAG files
    "AIRFLOW__API__WORKERS": "1",
    # A busy laptop (SQLite locked by the scheduler, CPU starved) answered a task's start in 6.4 s: past
    # the default 5 s the task fails and waits out its retry delay (5 min in K2's DAGs).
    "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
}


def airflow_home(settings: Settings) -> Path:
    """AIRFLOW_HOME when set, else K2_HOME/airflow: Airflow's config, metadata DB, logs, password."""
    explicit = os.environ.get("AIRFLOW_HOME")
    return Path(explicit).expanduser().resolve() if explicit else settings.home / "airflow"


def airflow_url(settings: Settings) -> str:
    return f"http://{format_host_port(settings.airflow_host, settings.airflow_port)}"


def airflow_environment(settings: Settings) -> dict[str, str]:
    """The variables `airflow standalone` needs on top of the K2_* settings the supervisor passes."""
    dags, plugins = REPO / "dags", REPO / "plugins"
    if not dags.is_dir():
        raise ComponentError(
            f"airflow: no DAGs folder at {dags}: K2's Airflow runs from a source checkout (make install); "
            "or set K2_AIRFLOW_ENABLED=false"
        )
    home = airflow_home(settings)
    env = {k: v for k, v in LAPTOP_DEFAULTS.items() if k not in os.environ}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(plugins),
        AIRFLOW__API__HOST=settings.airflow_host,
        AIRFLOW__API__PORT=str(settings.airflow_port),
        # Task processes reach the scheduler's execution API at {base_url}/execution/ (default :8080).
        AIRFLOW__API__BASE_URL=airflow_url(settings),
        # standalone starts its parts as `airflow` from PATH: this venv's, not another one.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    if "daily_load_on_no_files" not in settings.model_fields_set:
        # A laptop has no vendor feed: the scheduled run for today (no files) is skipped, not red.
        env["K2_DAILY_LOAD_ON_NO_FILES"] = "skip"
    if settings.airflow_database_url:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = settings.airflow_database_url
    if settings.monitor_port and settings.monitor_statsd_port:
        env.update({k: v for k, v in statsd_to_monitor(settings).items() if k not in os.environ})
    return env


def statsd_to_monitor(settings: Settings) -> dict[str, str]:
    """Airflow's settings that send its metrics to `k2 monitor` (docs/monitoring.md), tags as labels."""
    host = "127.0.0.1" if settings.monitor_host in ("0.0.0.0", "") else settings.monitor_host
    return {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": host,
        "AIRFLOW__METRICS__STATSD_PORT": str(settings.monitor_statsd_port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
    }


def password_file(settings: Settings) -> Path:
    configured = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    return Path(configured) if configured else airflow_home(settings) / "simple_auth_manager_passwords.json.generated"


def login(settings: Settings) -> tuple[str, str]:
    """(user, password) of the UI and REST API, from the file `airflow standalone` generated."""
    path = password_file(settings)
    try:
        passwords = json.loads(path.read_text())
        return USER, str(passwords[USER])
    except (OSError, ValueError, KeyError, TypeError):
        raise ComponentError(
            f"airflow: no generated password for {USER!r} in {path}; is the local Airflow up? (k2 up / k2 status)"
        ) from None


def _last_answer(state: RetryCallState) -> httpx.Response:
    """The last 5xx answer, once retries are spent (the caller then reports it)."""
    assert state.outcome is not None
    response: httpx.Response = state.outcome.result()
    return response


class AirflowApi:
    """Airflow's REST API (v2) as the generated admin user: a JWT from ``POST /auth/token``."""

    def __init__(self, settings: Settings) -> None:
        self.url = airflow_url(settings)
        self._settings = settings
        self._client = httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_SECONDS)

    def __enter__(self) -> AirflowApi:
        return self

    def __exit__(self, *_: object) -> None:
        self._client.close()

    def _authenticate(self) -> None:
        user, password = login(self._settings)
        response = self._send("POST", "/auth/token", json={"username": user, "password": password})
        self._client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    @retry(retry=retry_if_result(lambda r: r.status_code >= 500), stop=stop_after_attempt(6),
           wait=wait_random_exponential(multiplier=0.5, max=5), retry_error_callback=_last_answer)  # fmt: skip
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a 5xx is sent again a few times: SQLite, the default metadata database,
        answers "database is locked" while the scheduler writes."""
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UnavailableError(
                f"airflow: {method} {self.url}{path} failed ({type(exc).__name__}); is it running? (k2 status)"
            ) from None

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        """Send with a token (fetched once, again when it expires); a status not in ``ok`` raises."""
        if "Authorization" not in self._client.headers:
            self._authenticate()
        response = self._send(method, path, **kwargs)
        if response.status_code == 401:
            self._authenticate()
            response = self._send(method, path, **kwargs)
        if response.status_code not in ok:
            detail = response.text.strip().replace("\n", " ")[:300]
            raise ComponentError(f"airflow: {method} {path}: HTTP {response.status_code} {detail}")
        return response

    def wait_for_dag(self, dag_id: str, timeout: float) -> dict[str, Any]:
        """The DAG, once the DAG processor has parsed it (right after `k2 up` it may not have yet)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.request("GET", f"/api/v2/dags/{dag_id}", ok=(200, 404))
            if response.status_code == 200:
                dag: dict[str, Any] = response.json()
                return dag
            if time.monotonic() > deadline:
                errors = self.request("GET", "/api/v2/importErrors").json().get("import_errors", [])
                problem = "".join(f"; {e['filename']}: {e['stack_trace'].strip().splitlines()[-1]}" for e in errors)
                raise ComponentError(f"airflow: DAG {dag_id} not found after {timeout:g} s{problem}")
            time.sleep(1.0)
