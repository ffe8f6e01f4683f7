"""K2's Airflow DAGs in real Airflow 3: every file imports cleanly with sane settings, and the DAGs
run (`airflow dags test`) against real tables on disk."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from pyiceberg.table import Table

from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import committed_offsets
from k2_etl.lake.progress import landed_offsets, pending_offsets
from k2_etl.lake.tables import TABLES_BY_NAME
from k2_etl.schemas import TRADE
from k2_etl.schemas.registration import check_schemas
from k2_etl.stream.consumer import Counts, StreamConsumer
from k2_etl.wire.kafka import client_config
from tests.helpers import REPO, a_trade, env_of, poll, run_k2
from tests.integration.airflow_helpers import K2_DAGS, airflow, airflow_env, python
from tests.integration.lake_helpers import batch, data_files, land_batches, trades_table
from tests.integration.query_helpers import SAMPLE, streaming_platform

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
    assert sorted(p.stem for p in (REPO / "dags").glob("*.py")) == sorted(K2_DAGS)  # a new file is listed there
    assert {dag_id: Path(d["file"]).stem for dag_id, d in dagbag["dags"].items()} == {d: d for d in K2_DAGS}


def test_every_dag_has_an_owner_tags_retries_docs_and_a_stated_catchup(dagbag: dict[str, Any]) -> None:
    for dag_id in K2_DAGS:  # each one found (an empty DagBag fails here too)
        dag = dagbag["dags"][dag_id]
        assert dag["owners"] == ["k2"], dag_id
        assert "k2" in dag["tags"], dag_id
        assert dag["retries"] >= 1, dag_id  # by default; a task retrying cannot help says retries=0 itself
        assert dag_id in dag["doc"] and len(dag["doc"]) > 200, dag_id
        assert dag["catchup"] is False or dag["schedule"] in ("@daily", "0 0 * * *"), dag_id
        assert dag["max_active_runs"] >= 1, dag_id


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
    settings = streaming_platform(platform_settings, tmp_path)
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
    env["K2_DAILY_LOAD_WAIT_SECONDS"] = "3"  # a few pokes (one a second), then the wait runs out
    rc, log = daily_load("2026-11-11T06:00:00+00:00", "2026-11-04")  # no consumer: the wait runs out
    assert rc != 0 and "not landed yet" in log, log[-3000:]
    with running_consumer(settings):
        env["K2_DAILY_LOAD_WAIT_SECONDS"] = "60"
        rc, log = daily_load("2026-11-12T06:00:00+00:00", "2026-11-04")  # run again: completes
        assert rc == 0, log[-5000:]
    ids = trade_ids()
    assert len(ids) == len(set(ids)) > len(first)  # the new day landed once, nothing twice


@contextlib.contextmanager
def running_consumer(settings: Settings, on_commit: Callable[[Counts], None] | None = None) -> Iterator[None]:
    consumer = StreamConsumer(settings)
    runner = threading.Thread(target=consumer.run, kwargs={"on_commit": on_commit})
    runner.start()
    try:
        yield
    finally:
        consumer.stop()
        runner.join(timeout=60)


DAYS = ("2026-11-02", "2026-11-03", "2026-11-04")  # the day partitions the feed writes


class TradeFeed:
    """Trades produced to the real broker in batches, as a feed sends them: each batch holds trades
    of every day of DAYS. Remembers each id sent and, per topic-partition, the offset after the
    last record delivered (what must land)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = TRADE.topic_name(settings)
        self.producer = Producer(client_config(settings))
        self.registry = SchemaRegistryClient({"url": settings.schema_registry_url})
        self.serialize = AvroSerializer(self.registry, TRADE.schema_str, conf={"auto.register.schemas": False})
        self.ids: list[str] = []
        self.ends: dict[int, int] = {}
        self.numbers: Counter[tuple[str, str]] = Counter()  # the exchange's sequence per symbol and day

    def send(self, per_day: int = 10) -> None:
        """One batch, delivered before it returns."""
        failed: list[str] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failed.append(err.str())
            else:
                partition, offset = msg.partition() or 0, msg.offset() or 0
                self.ends[partition] = max(self.ends.get(partition, 0), offset + 1)

        context = SerializationContext(self.topic, MessageField.VALUE)
        for day in DAYS:
            for i in range(per_day):
                symbol = ("BHP", "CBA", "NAB")[i % 3]
                self.numbers[symbol, day] += 1
                number = self.numbers[symbol, day]
                event_id = f"f-{day}-{symbol}-{number}"
                record = {**a_trade(), "event_id": event_id, "symbol": symbol,
                          "event_time": datetime.fromisoformat(f"{day}T01:00:00+00:00") + timedelta(seconds=number),
                          "trading_date": date.fromisoformat(day), "sequence_number": number}  # fmt: skip
                self.producer.produce(self.topic, self.serialize(record, context), symbol.encode(),
                                      on_delivery=delivered)  # fmt: skip
                self.ids.append(event_id)
        assert self.producer.flush(30) == 0 and not failed, failed

    def keep_sending(self, stop: threading.Event, errors: list[BaseException]) -> None:
        """A batch about every quarter second until ``stop`` (the feed's pace, not a synchronization)."""
        try:
            while not stop.is_set():
                self.send()
                stop.wait(0.25)
        except BaseException as exc:  # seen by the test after join
            errors.append(exc)

    def close(self) -> None:
        self.registry.close()

    def wait_landed(self, settings: Settings, timeout: float) -> None:
        """Until the trades table records, for every partition, an offset past the last record sent."""
        wanted = {self.topic: dict(self.ends)}
        poll(lambda: not pending_offsets(wanted, landed_offsets(settings, [self.topic])), timeout,
             f"the consumer to land up to {wanted}")  # fmt: skip


@dataclasses.dataclass
class TaskRun:
    state: str
    start: datetime
    end: datetime
    report: Any  # the XCom


def dag_run_of(home: Path, dag_id: str, logical_date: str) -> tuple[str, dict[str, TaskRun]]:
    """The run's state and its tasks (map index 0 of mapped ones) as Airflow's metadata database has them."""
    with contextlib.closing(sqlite3.connect(home / "airflow.db")) as db:
        [(run_id, state)] = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? AND logical_date LIKE ?", (dag_id, f"{logical_date}%")
        ).fetchall()
        reports = dict(db.execute("SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? "
                                  "AND map_index IN (-1, 0) AND key = 'return_value'", (dag_id, run_id)))  # fmt: skip
        rows = db.execute("SELECT task_id, state, start_date, end_date FROM task_instance WHERE dag_id = ? "
                          "AND run_id = ? AND map_index IN (-1, 0)", (dag_id, run_id)).fetchall()  # fmt: skip

    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)

    tasks = {task: TaskRun(task_state, at(start), at(end), json.loads(reports[task]) if task in reports else None)
             for task, task_state, start, end in rows}  # fmt: skip
    return state, tasks


def live_files(table: Table) -> dict[str, set[str]]:
    """The current snapshot's data files by partition path."""
    table.refresh()
    files: dict[str, set[str]] = {}
    for task in table.scan().plan_files():
        files.setdefault(table.spec().partition_to_path(task.file.partition, table.schema()), set()).add(
            task.file.file_path
        )
    return files


def test_k2_maintenance_while_a_stream_lands_loses_and_duplicates_nothing_and_bounds_files_and_snapshots(
    platform_settings: Settings, tmp_path: Path, airflow_home: Path, request: pytest.FixtureRequest
) -> None:
    """Issue 6: k2_maintenance runs while the real consumer lands a live feed (a commit about every
    second, the default pace). Afterwards the ids are those landed before and those sent during, once
    each; each partition's files at the start were compacted into fewer; the snapshots older than
    the retention are down to the newest few and the offsets lineage; the consumer's place is kept."""
    settings = streaming_platform(platform_settings, tmp_path, stream_batch_seconds=1.0)
    table = open_catalog(settings).load_table((settings.namespace, "trades"))
    feed = TradeFeed(settings)
    request.addfinalizer(feed.close)
    retain, retention = 2, timedelta(hours=0.0001)  # 0.36 s: all but the last few commits are old enough
    env = airflow_env(settings, airflow_home)
    env.update(K2_MAINTENANCE_RETAIN_SNAPSHOTS=str(retain),
               K2_MAINTENANCE_SNAPSHOT_RETENTION_HOURS=str(retention / timedelta(hours=1)))  # fmt: skip
    logical_date = "2026-11-27"
    commits: list[datetime] = []  # when the consumer committed a batch
    stop, errors = threading.Event(), list[BaseException]()
    sender = threading.Thread(target=feed.keep_sending, args=(stop, errors))

    def trade_ids() -> list[str]:
        table.refresh()
        ids: list[str] = table.scan(selected_fields=("event_id",)).to_arrow().column("event_id").to_pylist()
        return ids

    with running_consumer(settings, on_commit=lambda _: commits.append(datetime.now(UTC))):
        for _ in range(6):  # each batch landed before the next is sent: one more file per day partition
            feed.send()
            feed.wait_landed(settings, timeout=90)
        before = trade_ids()
        assert sorted(before) == sorted(feed.ids) and len(set(before)) == len(before) == 6 * 30
        at_start = live_files(table)
        assert sorted(at_start) == [f"event_day={day}" for day in DAYS]
        assert all(len(files) >= 6 for files in at_start.values()), {p: len(f) for p, f in at_start.items()}
        sent_before = len(feed.ids)

        sender.start()
        try:
            run = airflow(env, "dags", "test", "k2_maintenance", logical_date, "-c",
                          json.dumps({"tables": ["trades"], "min_files": 2}))  # fmt: skip
        finally:
            stop.set()
            sender.join(timeout=60)
        assert not errors and not sender.is_alive(), errors
        sent_during = feed.ids[sent_before:]
        feed.wait_landed(settings, timeout=120)

    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    state, tasks = dag_run_of(airflow_home, "k2_maintenance", logical_date)
    assert state == "success" and sorted(tasks) == ["chosen_tables", "clean_orphans", "compact", "expire"]
    assert {task.state for task in tasks.values()} == {"success"}, {t: r.state for t, r in tasks.items()}
    compacting, expiring = tasks["compact"], tasks["expire"]
    assert len(sent_during) >= 5 * 30  # the feed went on through the run...
    landing = [at for at in commits if tasks["chosen_tables"].start <= at <= tasks["clean_orphans"].end]
    assert len(landing) >= 3, (landing, tasks)  # ...and the consumer landed it while the run went on

    ids = trade_ids()  # nothing lost, nothing twice
    assert len(ids) == len(set(ids)) and set(ids) == set(before) | set(sent_during)
    assert len(ids) == len(feed.ids)

    partitions = {p["partition"]: p for p in compacting.report["partitions"]}
    assert sorted(partitions) == sorted(at_start)
    for name, files in at_start.items():
        done = partitions[name]
        assert done["outcome"] == "compacted", done
        assert done["files_before"] > len(files), done  # it rewrote files landed during the run too
        assert done["files_after"] < done["files_before"], done
        assert done["rows_after"] == done["rows_before"], done  # the feed's ids are unique: nothing dropped
    after = live_files(table)
    assert all(not files & after.get(name, set()) for name, files in at_start.items())  # every one rewritten

    expired = expiring.report
    assert expired["expired"] and expired["snapshots_after"] < expired["snapshots_before"], expired
    table.refresh()
    snapshots = table.snapshots()
    assert not {s.snapshot_id for s in snapshots} & set(expired["expired"])  # no commit beside brought one back
    # Every snapshot older than the cutoff was expired unless it was among the newest `retain`, or on
    # the lineage to the consumer's offsets (the current snapshot, down through the compaction
    # snapshots, at most one per partition, to the newest consumer snapshot). Without expiry the old
    # ones would be the 6 landed before the run, those landed since and the 3 compactions: far more.
    cutoff_ms = (expiring.start - retention).timestamp() * 1000
    old = [s for s in snapshots if s.timestamp_ms < cutoff_ms]
    assert len(old) <= retain + len(partitions) + 1, (len(old), len(snapshots), expired)
    assert committed_offsets(table, settings.stream_group) == {feed.topic: feed.ends}  # the consumer's place

    orphans = tasks["clean_orphans"].report
    assert orphans["orphans"] == 0 and orphans["removed"] == 0, orphans  # nothing young, nothing in flight
