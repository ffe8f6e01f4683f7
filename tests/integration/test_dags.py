"""K2's Airflow DAGs in real Airflow 3: every file imports cleanly with sane settings, and the DAGs
run (`airflow dags test`) against real tables on disk."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from k2_etl.bootstrap import init_platform
from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.tables import TABLES_BY_NAME
from k2_etl.schemas import TRADE
from k2_etl.schemas.registration import check_schemas, register_schemas
from k2_etl.stream.consumer import StreamConsumer
from tests.helpers import REPO, env_of, run_k2
from tests.integration.airflow_helpers import airflow, airflow_env, python
from tests.integration.lake_helpers import batch, data_files, land_batches, trades_table
from tests.integration.query_helpers import SAMPLE, streaming_settings

pytestmark = pytest.mark.integration

DAG_FILES = sorted(p.stem for p in (REPO / "dags").glob("*.py"))

INSPECT = """
import json, warnings
warnings.simplefilter("always")
from airflow.dag_processing.dagbag import DagBag
bag = DagBag()  # examples are off in the environment (AIRFLOW__CORE__LOAD_EXAMPLES)
print(json.dumps({
    "errors": bag.import_errors,
    "warnings": {k: [str(w) for w in v] for k, v in bag.captured_warnings.items()},
    "dags": {d.dag_id: {
        "file": d.fileloc, "owners": sorted({t.owner for t in d.tasks}), "tags": sorted(d.tags),
        "retries": (d.default_args or {}).get("retries", 0), "doc": d.doc_md or "", "catchup": d.catchup,
        "schedule": str(d.schedule), "max_active_runs": d.max_active_runs,
        "tasks": sorted(t.task_id for t in d.tasks)} for d in bag.dags.values()},
}))
"""


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings, _ = trades_table(tmp_path_factory.mktemp("dagbag"))
    env = airflow_env(settings, tmp_path_factory.mktemp("airflow"))
    result = python(env, INSPECT)
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def test_every_dag_file_imports_without_errors_or_warnings(dagbag: dict[str, Any]) -> None:
    assert dagbag["errors"] == {} and dagbag["warnings"] == {}
    assert sorted(Path(d["file"]).stem for d in dagbag["dags"].values()) == DAG_FILES


def test_every_dag_has_an_owner_tags_retries_docs_and_a_stated_catchup(dagbag: dict[str, Any]) -> None:
    for dag_id, dag in dagbag["dags"].items():
        assert dag["owners"] == ["k2"], dag_id
        assert "k2" in dag["tags"], dag_id
        assert dag["retries"] >= 1, dag_id  # by default; a task retrying cannot help says retries=0 itself
        assert dag_id in dag["doc"] and len(dag["doc"]) > 200, dag_id
        assert dag["catchup"] is False or dag["schedule"] in ("@daily", "0 0 * * *"), dag_id
        assert dag["max_active_runs"] >= 1, dag_id


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow home with its metadata database migrated and K2's DAGs serialized (for CLI runs)."""
    home = tmp_path_factory.mktemp("airflow")
    settings, _ = trades_table(tmp_path_factory.mktemp("k2"))
    env = airflow_env(settings, home)
    for step in (("db", "migrate"), ("dags", "reserialize")):
        done = airflow(env, *step)
        assert done.returncode == 0, done.stderr[-3000:]
    return home


def test_k2_maintenance_compacts_expires_and_cleans_every_table(tmp_path: Path, airflow_home: Path) -> None:
    settings, table = trades_table(tmp_path)
    land_batches(table, [batch(table, [f"m-{10 * b + i}" for i in range(10)]) for b in range(3)])
    assert data_files(table) == {"event_day=2026-11-02": 3}  # below the default min_files (5): conf decides
    env = airflow_env(settings, airflow_home)
    env.update(K2_MAINTENANCE_RETAIN_SNAPSHOTS="1", K2_MAINTENANCE_SNAPSHOT_RETENTION_HOURS="0.0001")

    run = airflow(env, "dags", "test", "k2_maintenance", "2026-11-26", "-c", json.dumps({"min_files": 2}))

    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    assert data_files(table) == {"event_day=2026-11-02": 1}
    table.refresh()
    assert len(table.snapshots()) == 2  # the newest (compaction) and the one holding the offsets
    assert table.scan().to_arrow().num_rows == 30
    log = run.stdout + run.stderr
    assert "compact trades:" in log and "expire trades:" in log and "clean_orphans trades:" in log
    assert all(f"compact {name}:" in log for name in TABLES_BY_NAME)


def test_k2_schema_registration_registers_and_fails_naming_an_incompatible_field(
    platform_settings: Settings, tmp_path: Path, airflow_home: Path
) -> None:
    def settings_of(name: str) -> Settings:
        return load_settings(home=tmp_path / name, kafka_bootstrap=platform_settings.kafka_bootstrap,
                             schema_registry_url=platform_settings.schema_registry_url,
                             topic_prefix=f"t{uuid.uuid4().hex[:8]}.")  # fmt: skip

    fresh = settings_of("fresh")
    run = airflow(airflow_env(fresh, airflow_home), "dags", "test", "k2_schema_registration", "2026-11-25")
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    assert {c.state for c in check_schemas(fresh)} == {"registered"}

    broken = settings_of("broken")  # its trades subject holds a schema K2's trade.avsc cannot read
    without_price = json.loads(TRADE.schema_str)
    without_price["fields"] = [f for f in without_price["fields"] if f["name"] != "price"]
    with SchemaRegistryClient({"url": broken.schema_registry_url}) as client:
        client.register_schema(TRADE.subject(broken), Schema(json.dumps(without_price), "AVRO"))
    run = airflow(airflow_env(broken, airflow_home), "dags", "test", "k2_schema_registration", "2026-11-26")
    log = run.stdout + run.stderr
    assert run.returncode != 0 and "failed" in log.lower()
    assert "price" in log and TRADE.subject(broken) in log and "nothing was registered" in log
    assert {c.state for c in check_schemas(broken) if c.record_type != "trade"} == {"new"}  # all or nothing


def test_k2_daily_load_loads_a_day_once_fails_clearly_without_files_and_completes_when_cleared(
    platform_settings: Settings, tmp_path: Path, airflow_home: Path
) -> None:
    settings = streaming_settings(platform_settings, tmp_path)
    init_platform(settings)
    register_schemas(settings)
    day = tmp_path / "landing" / "k2" / "2026-11-02"
    shutil.copytree(SAMPLE / "2026-11-02", day)
    shutil.copy(SAMPLE / "reference_data.csv", day)
    env = airflow_env(settings, airflow_home)
    env.update(K2_DAILY_LOAD_POKE_SECONDS="1", K2_DAILY_LOAD_WAIT_SECONDS="60")

    def daily_load(logical: str, trading: str) -> tuple[int, str]:
        conf = json.dumps({"trading_date": trading})
        run = airflow(env, "dags", "test", "k2_daily_load", logical, "-c", conf)
        return run.returncode, run.stdout + run.stderr

    def trade_ids() -> list[str]:
        table = open_catalog(settings).load_table((settings.namespace, "trades"))
        return table.scan(selected_fields=("event_id",)).to_arrow().column("event_id").to_pylist()

    with running_consumer(settings):
        rc, log = daily_load("2026-11-02T06:00:00+00:00", "2026-11-02")
        assert rc == 0, log[-5000:]
        assert "ok   every record landed" in log and "landed:" in log
        first = trade_ids()
        assert len(first) > 100 and len(first) == len(set(first))

        rc, log = daily_load("2026-11-09T06:00:00+00:00", "2026-11-02")  # the same day again
        assert rc == 0, log[-5000:]
        assert "skipped" in log and sorted(trade_ids()) == sorted(first)

    rc, log = daily_load("2026-11-10T06:00:00+00:00", "2026-11-03")
    assert rc != 0 and "no files for 2026-11-03" in log, log[-3000:]

    later = tmp_path / "later"
    generated = run_k2(env_of(settings), "generate", "--out", str(later), "--symbols", "2", "--days", "1",
                       "--start", "2026-11-04", "--trades-per-day", "300", "--seed", "4")  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    shutil.copytree(later / "2026-11-04", tmp_path / "landing" / "k2" / "2026-11-04")
    env["K2_DAILY_LOAD_WAIT_SECONDS"] = "8"
    rc, log = daily_load("2026-11-11T06:00:00+00:00", "2026-11-04")  # no consumer: the wait runs out
    assert rc != 0 and "not landed yet" in log, log[-3000:]
    with running_consumer(settings):
        env["K2_DAILY_LOAD_WAIT_SECONDS"] = "60"
        rc, log = daily_load("2026-11-12T06:00:00+00:00", "2026-11-04")  # run again: completes
        assert rc == 0, log[-5000:]
    ids = trade_ids()
    assert len(ids) == len(set(ids)) > len(first)  # the new day landed once, nothing twice


@contextlib.contextmanager
def running_consumer(settings: Settings) -> Iterator[None]:
    consumer = StreamConsumer(settings)
    runner = threading.Thread(target=consumer.run)
    runner.start()
    try:
        yield
    finally:
        consumer.stop()
        runner.join(timeout=60)
