"""Benchmark Airflow's overhead on the daily load: the bundled sample day through
`airflow dags test k2_daily_load`, against the same steps run by hand in this process.

Same broker and registry; each run gets fresh topics, tables and landing folder with the sample
day in it, and its own consumer (started just before the clock, in both cases). By hand: find the
day's files, check the schemas, load them, poll until the tables record the offsets produced
(every second, as the DAG's sensor is told to here), run the quality checks. Airflow: one
`airflow dags test` process (its metadata database migrated beforehand, not timed), which parses
the DAG, runs the five tasks and reschedules the sensor. Runs alternate, 3 of each.

Goal (issue 6): the DAG's wall time minus the by-hand time <= 30 s.

    .venv/bin/python bench/airflow_bench.py
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import save_result
from k2_etl.bootstrap import init_platform
from k2_etl.config import Settings, load_settings
from k2_etl.ingest.landing import day_files, load_day
from k2_etl.jobs.quality import check_day
from k2_etl.lake.progress import landed_offsets, pending_offsets, wanted_offsets
from k2_etl.local.components import broker, registry
from k2_etl.local.supervisor import start, stop
from k2_etl.schemas.registration import check_schemas, register_schemas
from k2_etl.stream.consumer import StreamConsumer
from tests.helpers import REPO, free_port
from tests.integration.airflow_helpers import airflow, airflow_env

DAY = date(2026, 11, 2)
SAMPLE = REPO / "data" / "sample" / "k2"
RUNS = 3


def fresh(base: Settings, folder: Path) -> Settings:
    settings = load_settings(
        home=folder / "home", landing=folder / "landing", kafka_bootstrap=base.kafka_bootstrap,
        schema_registry_url=base.schema_registry_url, topic_prefix=f"b{uuid.uuid4().hex[:8]}.",
        stream_session_timeout_seconds=6, stream_max_poll_interval_seconds=7, stream_metrics_port=0,
    )  # fmt: skip
    init_platform(settings)
    register_schemas(settings)
    day = folder / "landing" / "k2" / DAY.isoformat()
    shutil.copytree(SAMPLE / DAY.isoformat(), day)
    shutil.copy(SAMPLE / "reference_data.csv", day)
    return settings


def by_hand(settings: Settings) -> None:
    files = day_files(settings, DAY)
    assert all(c.state == "registered" for c in check_schemas(settings))
    loaded = load_day(settings, DAY, files)
    assert loaded.ok
    wanted = wanted_offsets(f["offsets"] for f in loaded.files)
    deadline = time.monotonic() + 300
    while pending_offsets(wanted, landed_offsets(settings, wanted)):
        assert time.monotonic() < deadline, "not landed in 300 s"
        time.sleep(1)  # the sensor's poke interval in this benchmark
    assert check_day(settings, DAY, loaded.files).ok


def with_airflow(settings: Settings, home: Path, run: int) -> None:
    env = airflow_env(settings, home)
    env.update(K2_DAILY_LOAD_POKE_SECONDS="1", K2_DAILY_LOAD_WAIT_SECONDS="300")
    logical = datetime(2026, 12, 1 + run, 6, tzinfo=UTC).isoformat()
    done = airflow(env, "dags", "test", "k2_daily_load", logical, "-c", json.dumps({"trading_date": DAY.isoformat()}))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def timed(settings: Settings, step: Any) -> float:
    consumer = StreamConsumer(settings)
    runner = threading.Thread(target=consumer.run)
    runner.start()
    try:
        started = time.perf_counter()
        step()
        return time.perf_counter() - started
    finally:
        consumer.stop()
        runner.join(timeout=60)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="k2-bench-airflow-"))
    base = load_settings(home=work / "platform", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                         schema_registry_url=f"http://127.0.0.1:{free_port()}")  # fmt: skip
    components = [broker(base), registry(base)]
    for component in components:
        start(base, component, lambda _: None)
    try:
        home = work / "airflow"
        migrate_env = airflow_env(base, home)
        for step in (("db", "migrate"), ("dags", "reserialize")):
            done = airflow(migrate_env, *step)
            assert done.returncode == 0, done.stderr[-3000:]
        times: dict[str, list[float]] = {"by_hand": [], "airflow": []}
        for run in range(RUNS):
            hand = fresh(base, work / f"hand{run}")
            times["by_hand"].append(round(timed(hand, lambda s=hand: by_hand(s)), 2))
            dag = fresh(base, work / f"dag{run}")
            times["airflow"].append(round(timed(dag, lambda s=dag, r=run: with_airflow(s, home, r)), 2))
            print(f"run {run}: by hand {times['by_hand'][-1]} s, airflow {times['airflow'][-1]} s", flush=True)
        medians = {k: round(statistics.median(v), 2) for k, v in times.items()}
        save_result("airflow", {
            "benchmark": "airflow",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "day": DAY.isoformat(),
            "seconds": times,
            "median_seconds": medians,
            "overhead_seconds": round(medians["airflow"] - medians["by_hand"], 2),
            "goal_overhead_seconds": 30,
        })  # fmt: skip
    finally:
        for component in reversed(components):
            stop(base, component, lambda _: None)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
