"""Replays and rollbacks on the real platform: generated days loaded from the landing folder and
landed by the real consumer; replayed from Kafka and from the landing files; a load rolled back
while the consumer runs, then loaded again."""

from __future__ import annotations

import csv
import io
import json
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from pyiceberg.expressions import EqualTo, GreaterThanOrEqual

from k2_etl.config import Settings
from k2_etl.errors import ConfigError
from k2_etl.ingest.generate import generate
from k2_etl.ingest.landing import day_files, load_day
from k2_etl.jobs.replay import replay
from k2_etl.jobs.rollback import rollback
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import committed_offsets
from k2_etl.lake.maintenance import MAINTENANCE_PROPERTY
from k2_etl.lake.progress import landed_offsets, pending_offsets, wanted_offsets
from k2_etl.lake.replace import Checksum, ReplaceError, range_checksum
from k2_etl.lake.tables import TABLES_BY_NAME
from k2_etl.stream.consumer import StreamConsumer
from tests.helpers import env_of, poll, run_k2
from tests.integration.airflow_helpers import airflow, airflow_env
from tests.integration.query_helpers import land_everything, streaming_platform

DAYS = [date(2026, 11, 3), date(2026, 11, 4), date(2026, 11, 5)]
START = datetime(2026, 11, 4, tzinfo=UTC)  # the replayed range: one UTC day in the middle
END = START + timedelta(days=1)
TRADES, QUOTES = TABLES_BY_NAME["trades"], TABLES_BY_NAME["quotes"]


@pytest.fixture(scope="module")
def landed_days(platform_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Three generated trading days in the landing folder, loaded day by day and landed."""
    home = tmp_path_factory.mktemp("replay")
    settings = streaming_platform(platform_settings, home)
    generated = home / "generated"
    generate(generated, symbols=6, days=len(DAYS), start=DAYS[0], trades_per_day=400, seed=7)
    files = []
    for day in DAYS:
        folder = home / "landing" / "k2" / day.isoformat()
        shutil.copytree(generated / day.isoformat(), folder)
        shutil.copy(generated / "reference_data.csv", folder)
        loaded = load_day(settings, day, day_files(settings, day))
        assert loaded.ok, loaded.to_dict()
        files += loaded.files
    land_everything(settings, files)
    return settings


def _table(settings: Settings, name: str):  # type: ignore[no-untyped-def]
    return open_catalog(settings).load_table((settings.namespace, name))


def _outside(settings: Settings, name: str) -> list[Checksum]:
    """Checksums of everything but the replayed range (the days before and after it)."""
    table, definition = _table(settings, name), TABLES_BY_NAME[name]
    far = timedelta(days=30)
    return [range_checksum(table, definition, START - far, START), range_checksum(table, definition, END, END + far)]


@pytest.mark.parametrize(("name", "source"), [("trades", "kafka"), ("quotes", "landing")])
def test_a_replay_of_a_day_replaces_it_with_identical_rows_and_leaves_the_other_days(
    landed_days: Settings, name: str, source: str
) -> None:
    settings = landed_days
    table = _table(settings, name)
    offsets = committed_offsets(table, settings.stream_group)
    outside = _outside(settings, name)
    before = range_checksum(table, TABLES_BY_NAME[name], START, END)
    assert before.rows > 100 and all(c.rows > 100 for c in outside)  # the range and its neighbours hold rows

    report = replay(settings, name, START, END, source=source)  # type: ignore[arg-type]

    replaced = report.replaced
    assert replaced is not None and not replaced.dry_run
    assert replaced.before == before and replaced.identical, replaced.to_dict()
    assert (replaced.ids_added, replaced.ids_changed) == (0, 0)
    assert replaced.files_replaced >= 1 and replaced.snapshot_after != replaced.snapshot_before
    table.refresh()
    assert range_checksum(table, TABLES_BY_NAME[name], START, END) == before
    assert _outside(settings, name) == outside
    snapshot = table.current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    assert snapshot.summary.additional_properties[MAINTENANCE_PROPERTY] == "replay"
    assert committed_offsets(table, settings.stream_group) == offsets  # nothing will be landed again
    assert report.records_in_range == before.rows + report.duplicates
    if source == "landing":
        assert len(report.files) >= 2 and all("/landing/k2/" in f for f in report.files)


def test_a_replay_from_kafka_restores_rows_lost_from_the_table_and_a_dry_run_changes_nothing(
    landed_days: Settings,
) -> None:
    settings = landed_days
    table = _table(settings, "trades")
    original = range_checksum(table, TRADES, START, END)
    symbol = _a_symbol(table)
    of_symbol = EqualTo("symbol", symbol)  # type: ignore[call-arg,arg-type]
    victims = table.scan(row_filter=of_symbol, selected_fields=("event_id", "event_time")).to_arrow().to_pylist()
    lost = [r["event_id"] for r in victims if START <= r["event_time"] < END]
    assert lost
    table.delete(of_symbol)  # rows gone, by accident
    damaged = range_checksum(table, TRADES, START, END)
    assert damaged.rows < original.rows

    dry = replay(settings, "trades", START, END, source="kafka", dry_run=True)

    assert dry.replaced is not None and dry.replaced.dry_run
    assert (dry.replaced.before, dry.replaced.after) == (damaged, original)
    table.refresh()
    assert range_checksum(table, TRADES, START, END) == damaged  # the dry run changed nothing

    report = replay(settings, "trades", START, END, source="kafka")

    assert report.replaced is not None and report.replaced.ids_added >= len(set(lost))
    table.refresh()
    assert range_checksum(table, TRADES, START, END) == original


def test_a_replay_that_would_remove_rows_fails_and_changes_nothing(landed_days: Settings, tmp_path: Path) -> None:
    settings = landed_days
    table = _table(settings, "trades")
    before = table.current_snapshot()
    folder = settings.landing / "k2" / DAYS[1].isoformat()  # type: ignore[operator]
    moved = tmp_path / "trades_ASX.csv"
    shutil.move(folder / "trades_ASX.csv", moved)  # a vendor file moved away: the source lacks its rows
    try:
        with pytest.raises(ReplaceError, match=r"the source lacks .* rows the range holds \(e\.g\. id \w+"):
            replay(settings, "trades", START, END, source="landing")
    finally:
        shutil.move(moved, folder / "trades_ASX.csv")
    table.refresh()
    assert table.current_snapshot() == before


def test_replay_refuses_tables_and_ranges_it_cannot_replay(landed_days: Settings) -> None:
    with pytest.raises(ConfigError, match="choose from trades, quotes"):
        replay(landed_days, "reference_data", START, END)
    with pytest.raises(ConfigError, match="must be before"):
        replay(landed_days, "trades", END, START)
    with pytest.raises(ConfigError, match="source 'ftp'"):
        replay(landed_days, "trades", START, END, source="ftp")  # type: ignore[arg-type]


def test_k2_replay_cli_prints_the_checksums_as_json_and_names_bad_arguments(landed_days: Settings) -> None:
    env = env_of(landed_days)
    done = run_k2(env, "replay", "--table", "quotes", "--start", "2026-11-04", "--end", "2026-11-05", "--dry-run",
                  "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    replaced = json.loads(done.stdout)["replaced"]
    assert replaced["dry_run"] and replaced["identical"] and replaced["before"]["rows"] > 100
    bad = run_k2(env, "replay", "--table", "quotes", "--start", "yesterday", "--end", "2026-11-05")
    assert bad.returncode == 2 and "--start='yesterday'" in bad.stderr
    wrong = run_k2(env, "rollback", "0123")
    assert wrong.returncode == 2 and "no load '0123'" in wrong.stderr


@pytest.fixture
def streaming(landed_days: Settings) -> Iterator[StreamConsumer]:
    consumer = StreamConsumer(landed_days)
    runner = threading.Thread(target=consumer.run)
    runner.start()
    yield consumer
    consumer.stop()
    runner.join(timeout=60)


def _late_trades(settings: Settings, day: date, name: str, shift: int, price: str | None = None) -> Path:
    """A file of 40 of the day's ASX trades with sequence numbers moved by ``shift`` (other ids),
    optionally another price, and one row the load rejects."""
    folder = settings.landing / "k2" / day.isoformat()  # type: ignore[operator]
    rows = list(csv.DictReader(io.StringIO((folder / "trades_ASX.csv").read_text())))[:40]
    for row in rows:
        row["sequence_number"] = str(int(row["sequence_number"]) + shift)
        row["price"] = price or row["price"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    writer.writerow({**rows[0], "price": "-1"})
    (folder / name).write_text(out.getvalue())
    return folder / name


def _load_and_land(settings: Settings, day: date, path: Path, *, force: bool = False) -> dict:
    [result] = load_day(settings, day, {"k2": [path]}, force=force).files
    wanted = wanted_offsets([result["offsets"]])
    poll(lambda: not pending_offsets(wanted, landed_offsets(settings, wanted)), timeout=120, what="landed")
    return result


def _ids(table) -> list[str]:  # type: ignore[no-untyped-def]
    table.refresh()
    return list(table.scan(selected_fields=("event_id",)).to_arrow().column("event_id").to_pylist())


def test_a_rolled_back_load_leaves_the_rest_stays_gone_and_can_be_loaded_again(
    landed_days: Settings, streaming: StreamConsumer
) -> None:
    settings = landed_days
    trades = _table(settings, "trades")
    ids_before = set(_ids(trades))
    day = DAYS[1]
    extra = _late_trades(settings, day, "trades_LATE.csv", 1_000_000)
    try:
        result = _load_and_land(settings, day, extra)
        trades.refresh()
        of_load = trades.scan(row_filter=EqualTo("load_id", result["load_id"]), selected_fields=("event_id",))
        landed_ids = set(of_load.to_arrow().column("event_id").to_pylist())
        assert len(landed_ids) == 40 and not landed_ids & ids_before

        rejects = _table(settings, "rejects")
        assert len(rejects.scan(row_filter=EqualTo("load_id", result["load_id"])).to_arrow()) == 1
        reports = {r.table: r for r in rollback(settings, result["load_id"])}

        assert {name: r.rows_removed for name, r in reports.items()} == {"trades": 40, "rejects": 1}
        report = reports["trades"]
        rejects.refresh()
        assert len(rejects.scan(row_filter=EqualTo("load_id", result["load_id"])).to_arrow()) == 0
        assert report.snapshot_before_load is not None
        trades.refresh()
        at_before = trades.scan(snapshot_id=report.snapshot_before_load, selected_fields=("event_id",))
        assert set(at_before.to_arrow().column("event_id").to_pylist()) == ids_before
        now = _ids(trades)
        assert set(now) == ids_before and len(now) == len(ids_before)
        topic = TRADES.record.topic_name(settings)
        offsets = committed_offsets(trades, settings.stream_group)[topic]
        assert all(offsets[int(p)] > last for p, (_, last) in result["offsets"][topic].items())  # not re-landed

        replayed = replay(settings, "trades", START - timedelta(days=1), END)  # Kafka still has the load's records
        assert replayed.rolled_back == 40 and replayed.replaced is not None and replayed.replaced.ids_changed == 0
        ids_before = set(_ids(trades))  # (it added back rows an earlier test deleted on the 3rd)
        assert not ids_before & landed_ids
        skipped = load_day(settings, day, {"k2": [extra]}).files
        assert skipped[0]["status"] == "skipped" and "rolled back" in skipped[0]["message"]

        _load_and_land(settings, day, extra, force=True)  # the consumer still runs: it must take them again
        now = _ids(trades)
        assert set(now) == ids_before | landed_ids and len(now) == len(ids_before) + 40
    finally:
        extra.unlink(missing_ok=True)


def test_rolling_back_a_bad_load_after_its_correction_keeps_the_corrected_rows(
    landed_days: Settings, streaming: StreamConsumer
) -> None:
    """The correction (same ids, other prices) was loaded first: the consumer dropped its records as
    duplicates of the bad load's. Rolling the bad load back puts the correction's rows in."""
    settings = landed_days
    trades = _table(settings, "trades")
    ids_before = set(_ids(trades))
    day = DAYS[2]
    bad = _late_trades(settings, day, "trades_BAD.csv", 2_000_000, price="999.99")
    fixed = _late_trades(settings, day, "trades_FIXED.csv", 2_000_000)
    try:
        bad_load = _load_and_land(settings, day, bad)
        _load_and_land(settings, day, fixed)
        of_bad = EqualTo("load_id", bad_load["load_id"])  # type: ignore[call-arg,arg-type]
        trades.refresh()
        assert set(trades.scan(row_filter=of_bad).to_arrow().column("price").to_pylist()) == {Decimal("999.99")}

        [report] = rollback(settings, bad_load["load_id"], tables=["trades"], dry_run=True)
        assert (report.rows_removed, report.rows_restored) == (40, 40) and report.snapshot_after is None
        [report] = rollback(settings, bad_load["load_id"], tables=["trades"])

        assert (report.rows_removed, report.rows_restored) == (40, 40)
        now = _ids(trades)
        assert len(now) == len(set(now)) == len(ids_before) + 40
        late = trades.scan(row_filter=GreaterThanOrEqual("sequence_number", 2_000_000)).to_arrow()  # type: ignore[call-arg,arg-type]
        assert late.num_rows == 40 and Decimal("999.99") not in late.column("price").to_pylist()
        assert set(late.column("load_id").to_pylist()) == {_load_id_of(settings, fixed)}
    finally:
        bad.unlink(missing_ok=True)
        fixed.unlink(missing_ok=True)


def _load_id_of(settings: Settings, path: Path) -> str:
    trades = _table(settings, "trades")
    of_file = EqualTo("source", str(path))  # type: ignore[call-arg,arg-type]
    return str(trades.scan(row_filter=of_file, limit=1).to_arrow().column("load_id")[0].as_py())


def test_rollback_names_an_unknown_load(landed_days: Settings) -> None:
    with pytest.raises(ConfigError, match="no load 'nosuchload' in the load manifest"):
        rollback(landed_days, "nosuchload")


def _a_symbol(table) -> str:  # type: ignore[no-untyped-def]
    return str(table.scan(selected_fields=("symbol",), limit=1).to_arrow().column("symbol")[0].as_py())


def test_the_k2_replay_dag_logs_the_checksums_and_replaces_the_range(landed_days: Settings, airflow_home: Path) -> None:
    settings = landed_days
    env = airflow_env(settings, airflow_home)
    quotes = _table(settings, "quotes")
    before = range_checksum(quotes, QUOTES, START, END)
    snapshot = quotes.current_snapshot()
    conf = {"table": "quotes", "start": "2026-11-04", "end": "2026-11-05", "source": "kafka"}

    dry = airflow(env, "dags", "test", "k2_replay", "2026-11-26", "-c", json.dumps({**conf, "dry_run": True}))

    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-5000:]
    assert f"checksum before: {before}" in dry.stdout + dry.stderr
    assert f"checksum would be: {before} (identical)" in dry.stdout + dry.stderr
    quotes.refresh()
    assert quotes.current_snapshot() == snapshot

    run = airflow(env, "dags", "test", "k2_replay", "2026-11-27", "-c", json.dumps(conf))

    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert f"checksum before: {before}" in log and f"checksum after: {before} (identical)" in log
    quotes.refresh()
    assert quotes.current_snapshot() != snapshot
    assert range_checksum(quotes, QUOTES, START, END) == before

    wrong = airflow(env, "dags", "test", "k2_replay", "2026-11-28", "-c", json.dumps({**conf, "end": "2026-11-01"}))
    assert wrong.returncode != 0 and "must be before" in wrong.stdout + wrong.stderr
