"""`make run` as a new user runs it: `k2 up` with the local Airflow, `k2 schemas register`, `k2 demo`.

Real processes on a temp K2_HOME: Airflow standalone with K2's DAGs unpaused, the sample day's
k2_daily_load run green, its data through the REST API, and `k2 down` leaving nothing behind.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.helpers import free_port, local_platform_env, poll, processes_of, run_k2
from tests.integration.airflow_helpers import K2_DAGS
from tests.monitoring import airflow_metric, alert_rules, metric_names, panel_queries, prometheus_query


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = local_platform_env(
        tmp_path / "home",
        airflow_port=str(free_port()),
        ingest_metrics_port="0",
        daily_load_poke_seconds="2",  # the sensor looks every 2 s, not 30
        prometheus_scrape_seconds="2",
    )
    for name in [n for n in env if n.startswith("AIRFLOW")]:  # the developer's Airflow stays out
        del env[name]
    # Airflow's log servers listen on fixed ports (8793/8794): free ones, beside a developer's `make run`.
    env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(free_port())
    env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
    yield env
    run_k2(env, "down")


class Airflow:
    """Airflow's REST API as the generated admin (independent of k2's own client)."""

    def __init__(self, url: str, home: Path) -> None:
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        token = httpx.post(f"{url}/auth/token", json={"username": "admin", "password": password}, timeout=10)
        assert token.status_code == 201, token.text
        self.client = httpx.Client(base_url=url, timeout=10,
                                   headers={"Authorization": f"Bearer {token.json()['access_token']}"})  # fmt: skip

    def send(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON of a 200 answer. A 5xx is asked again (SQLite, Airflow's default metadata
        database, answers "database is locked" while the scheduler writes); anything else fails."""

        def answered() -> httpx.Response:
            response = self.client.request(method, path, **kwargs)
            if response.status_code >= 500:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:200]}")
            return response

        response = poll(answered, timeout=60, what=f"{method} {path} answered")
        assert response.status_code == 200, response.text
        return response.json()

    def get(self, path: str) -> Any:
        return self.send("GET", path)


@pytest.mark.timeout(600)
def test_up_runs_airflow_and_demo_runs_the_sample_day_green(
    env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    home = Path(env["K2_HOME"]).resolve()
    url = f"http://127.0.0.1:{env['K2_AIRFLOW_PORT']}"

    up = run_k2(env, "up", timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "airflow: started" in up.stdout and f"Airflow UI: {url}   login: admin / " in up.stdout
    assert up.stdout.index("api: started") < up.stdout.index("airflow: started")

    def airflow_status() -> dict[str, Any]:
        return {c["name"]: c for c in json.loads(run_k2(env, "status", "--json").stdout)["components"]}["airflow"]

    # (polled: on a loaded machine a health request can miss its 2 s timeout right after the start)
    status = poll(lambda: (s := airflow_status())["healthy"] and s, timeout=60, what="k2 status: airflow healthy")
    assert status["state"] == "running", status
    assert (home / "airflow" / "airflow.db").is_file()  # AIRFLOW_HOME under K2_HOME, SQLite

    airflow = Airflow(url, home / "airflow")
    request.addfinalizer(airflow.client.close)

    def parsed() -> dict[str, Any] | None:
        dags = {d["dag_id"]: d for d in airflow.get("/api/v2/dags")["dags"]}
        return dags if dags.keys() >= set(K2_DAGS) else None

    dags = poll(parsed, timeout=120, what="the DAG processor to parse K2's DAGs")
    assert not any(dags[dag_id]["is_paused"] for dag_id in K2_DAGS)  # unpaused at creation
    assert airflow.send("PATCH", "/api/v2/dags/k2_daily_load", json={"is_paused": True})["is_paused"]  # (demo unpauses)

    assert run_k2(env, "schemas", "register").returncode == 0
    demo = run_k2(env, "demo", "--json", "--timeout", "360", timeout=420)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "airflow: unpaused k2_daily_load" in demo.stderr
    result = json.loads(demo.stdout)
    assert result["day"] == "2026-11-02" and result["run"]["state"] == "success"
    landing = home / "landing"
    assert (landing / "k2" / "2026-11-02" / "reference_data.csv").is_file()  # beside the day in the sample
    assert (landing / "asx" / "2026-11-02" / "company_info.csv").is_file()
    run = airflow.get("/api/v2/dags/k2_daily_load/dagRuns/k2_sample__2026-11-02")
    assert run["state"] == "success" and run["conf"] == {"trading_date": "2026-11-02"}
    tasks = airflow.get("/api/v2/dags/k2_daily_load/dagRuns/k2_sample__2026-11-02/taskInstances")
    assert {t["task_id"]: t["state"] for t in tasks["task_instances"]} == dict.fromkeys(
        ["find_files", "check_schemas", "load", "wait_landed", "check_quality"], "success"
    )

    # Airflow's own metrics (StatsD to k2 monitor) reached Prometheus: every panel of the Airflow
    # dashboard has data, and every Airflow series a rule reads exists.
    prometheus = f"http://127.0.0.1:{env['K2_PROMETHEUS_PORT']}"
    queries = list(panel_queries(airflow=True))
    read = {n for rule in alert_rules() for n in metric_names(rule["expr"]) if airflow_metric(n)}
    assert queries and read >= {"airflow_scheduler_heartbeat_total", "airflow_ti_failures_total"}

    def missing() -> list[str]:
        return [str(q) for q in queries if not prometheus_query(prometheus, q.expr)] + [
            name for name in sorted(read - {"airflow_ti_failures_total"})  # no task failed: none sent
            if not prometheus_query(prometheus, name)
        ]  # fmt: skip

    try:
        poll(lambda: not missing() or None, 90, "Airflow's metrics in Prometheus", every=2)
    except AssertionError:
        pytest.fail("no series for:\n" + "\n".join(missing()))

    def succeeded() -> float:  # the run's five tasks, as their StatsD (UDP, then a scrape) arrives
        finished = prometheus_query(prometheus, 'sum by (state) (airflow_ti_finish_total{dag_id="k2_daily_load"})')
        return {s["metric"]["state"]: float(s["value"][1]) for s in finished}.get("success", 0.0)

    poll(lambda: succeeded() >= 5 or None, 60, "the run's five task successes in airflow_ti_finish_total", every=1)

    summary = httpx.get(result["query"], timeout=30)  # the k2-format sample, through the REST API
    assert summary.status_code == 200, summary.text
    assert summary.json()["trades"] > 100
    explorer = httpx.get(result["explorer"], timeout=30)  # the address `k2 demo` prints for people
    assert explorer.status_code == 200 and "K2 explorer" in explorer.text
    api = f"http://127.0.0.1:{env['K2_API_PORT']}"
    bhp = httpx.get(f"{api}/v1/summary/BHP/2026-11-02", timeout=30).json()  # the asx-format sample
    assert bhp["trades"] == 300

    # A backfill over the sample's week (the scheduler creates the runs): the sample day's files are
    # skipped as loaded, the days without files are skipped (K2_DAILY_LOAD_ON_NO_FILES=skip locally).
    airflow.send("POST", "/api/v2/backfills", json={
        "dag_id": "k2_daily_load", "from_date": "2026-11-02T00:00:00Z", "to_date": "2026-11-03T12:00:00Z",
        "reprocess_behavior": "completed", "max_active_runs": 1, "dag_run_conf": {}})  # fmt: skip

    def backfilled() -> list[dict[str, Any]] | None:
        runs = airflow.get(
            "/api/v2/dags/k2_daily_load/dagRuns",
        )["dag_runs"]
        mine = [r for r in runs if r["run_type"] == "backfill"]
        return mine if len(mine) == 2 and all(r["state"] in ("success", "failed") for r in mine) else None

    runs = poll(backfilled, timeout=300, what="the backfill's two runs to finish")
    assert {r["logical_date"][:10]: r["state"] for r in runs} == {"2026-11-02": "success", "2026-11-03": "success"}
    assert httpx.get(f"{api}/v1/summary/BHP/2026-11-02", timeout=30).json()["trades"] == 300  # loaded once

    again = run_k2(env, "demo", timeout=120)  # a second `make run`
    assert again.returncode == 0, again.stdout + again.stderr
    assert "file(s) already there" in again.stdout and "copied" not in again.stdout
    assert "k2_sample__2026-11-02 was triggered before; it is success" in again.stdout

    assert {p.pid for p in processes_of(home)} >= {status["pid"]}  # the check below can see them
    down = run_k2(env, "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert "airflow: stopped" in down.stdout

    def none_left() -> bool:
        left = processes_of(home)
        if left:
            raise RuntimeError("; ".join(f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in left))
        return True

    poll(none_left, timeout=10, what="every process of the platform to exit")  # none outlives `k2 down`
    assert not list((home / "run").glob("*.pid"))
    assert os.path.exists(home / "logs" / "airflow.log")


@pytest.mark.skipif(
    "TEST_POSTGRES_URL" not in os.environ,
    reason="needs a PostgreSQL server: set TEST_POSTGRES_URL (.ci/run starts one and sets it)",
)
@pytest.mark.timeout(300)
def test_airflow_metadata_database_on_postgres(env: dict[str, str]) -> None:
    """K2_AIRFLOW_DATABASE_URL puts Airflow's metadata in Postgres (a new database, dropped after)."""
    admin = sa.create_engine(os.environ["TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT")
    name = f"k2_airflow_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # name is generated above, not input
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        env["K2_AIRFLOW_DATABASE_URL"] = url
        up = run_k2(env, "up", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "airflow: started" in up.stdout
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            jobs = conn.execute(sa.text("SELECT count(*) FROM job WHERE job_type = 'SchedulerJob'")).scalar()
        engine.dispose()
        assert {"dag", "dag_run", "task_instance"} <= tables and jobs
        assert not (Path(env["K2_HOME"]) / "airflow" / "airflow.db").exists()
        assert "airflow: stopped" in run_k2(env, "down", timeout=120).stdout
    finally:
        run_k2(env, "down", timeout=120)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
