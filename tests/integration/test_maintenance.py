"""Table maintenance on real Iceberg tables: compaction (also while the real consumer streams),
snapshot expiry and orphan removal; and the `k2 compact|expire|clean-orphans` commands."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from k2_etl.config import Settings
from k2_etl.lake import maintenance
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import committed_offsets
from k2_etl.lake.maintenance import MAINTENANCE_PROPERTY, compact, expire_snapshots, remove_orphan_files
from k2_etl.lake.tables import TABLES_BY_NAME
from k2_etl.stream.consumer import Counts, StreamConsumer
from tests.helpers import env_of, run_k2
from tests.integration.iceberg_deletes import commit_deletes, position_deletes
from tests.integration.ingest_helpers import load, messages_of
from tests.integration.lake_helpers import GROUP, batch, data_files, land_batches, trades_table
from tests.integration.query_helpers import streaming_platform

TRADES = TABLES_BY_NAME["trades"]


def test_compaction_folds_small_files_drops_later_duplicates_and_keeps_the_offsets(tmp_path: Path) -> None:
    _, table = trades_table(tmp_path)
    busy = [batch(table, [f"a-{10 * b + i}" for i in range(10)]) for b in range(6)]  # day 0: 6 files
    busy.append(batch(table, ["a-3", "a-17"], price="99"))  # ids landed before, sent again: duplicates
    quiet = [batch(table, [f"q-{i}" for i in range(5)], day=1)]  # day 1: 1 file, below min_files
    land_batches(table, busy + quiet)
    before = data_files(table)
    assert sorted(before.values()) == [1, 7]

    report = compact(table, TRADES, min_files=5)

    after = data_files(table)
    assert sorted(after.values()) == [1, 1] and set(after) == set(before)
    [done] = report.partitions
    assert (done.outcome, done.files_before, done.files_after) == ("compacted", 7, 1)
    assert (done.rows_before, done.rows_after, done.duplicates_removed) == (62, 60, 2)
    assert (report.files_before, report.files_after) == (8, 2)
    rows = table.scan().to_arrow().to_pylist()
    assert len(rows) == 65 and len({r["event_id"] for r in rows}) == 65
    assert all(r["price"] == Decimal("10") for r in rows if r["event_id"] in ("a-3", "a-17"))  # the first landed
    rewritten = [r for r in rows if r["event_id"].startswith("a-")]
    assert [(r["symbol"], r["event_time"]) for r in rewritten] == sorted(
        (r["symbol"], r["event_time"]) for r in rewritten
    )
    current = table.current_snapshot()
    assert current is not None and current.summary is not None
    assert current.summary.additional_properties[MAINTENANCE_PROPERTY] == "compact"
    assert committed_offsets(table, GROUP) == {"t": {0: 8}}  # found through the compaction snapshot

    again = compact(table, TRADES, min_files=5)  # nothing left to do: a second run changes nothing
    assert again.partitions == [] and table.current_snapshot() == current


def test_expiry_keeps_the_newest_the_tagged_and_the_offsets_lineage(tmp_path: Path) -> None:
    _, table = trades_table(tmp_path)
    land_batches(table, [batch(table, [f"e-{10 * b + i}" for i in range(10)]) for b in range(6)])
    table.refresh()
    tagged = table.snapshots()[1]
    table.manage_snapshots().create_tag(tagged.snapshot_id, "audit-2026-11").commit()
    compact(table, TRADES, min_files=2)  # a maintenance snapshot on top: it records no offsets
    offsets = committed_offsets(table, GROUP)
    rows = table.scan().to_arrow().num_rows

    report = expire_snapshots(table, older_than=datetime.now(UTC) + timedelta(seconds=1), retain_last=1)

    table.refresh()
    kept = {s.snapshot_id for s in table.snapshots()}
    assert report.snapshots_before == 7 and report.snapshots_after == len(kept) == 3
    assert tagged.snapshot_id in kept  # the tag: time travel to it still works
    assert table.scan(snapshot_id=tagged.snapshot_id).to_arrow().num_rows == 20
    assert committed_offsets(table, GROUP) == offsets == {"t": {0: 6}}  # the lineage back to the offsets
    assert table.scan().to_arrow().num_rows == rows


def test_orphans_are_removed_once_old_enough_and_referenced_files_never(tmp_path: Path) -> None:
    _, table = trades_table(tmp_path)
    land_batches(table, [batch(table, [f"o-{10 * b + i}" for i in range(10)]) for b in range(6)])
    compact(table, TRADES, min_files=2)
    lists = {s.manifest_list for s in table.snapshots()}
    expire_snapshots(table, older_than=datetime.now(UTC) + timedelta(seconds=1), retain_last=1)
    table.refresh()
    unreferenced = {path.removeprefix("file://") for path in lists - {s.manifest_list for s in table.snapshots()}}
    assert len(unreferenced) == 5  # the first five appends' (the sixth holds the offsets)
    location = Path(table.location().removeprefix("file://"))
    stale, fresh = location / "data" / "crashed-writer.parquet", location / "data" / "commit-in-flight.parquet"
    stale.write_bytes(b"PAR1 left by a writer that died")
    fresh.write_bytes(b"PAR1 of a commit not landed yet")
    an_hour_ago = time.time() - 3600
    for path in location.rglob("*"):
        if path != fresh:
            os.utime(path, (an_hour_ago, an_hour_ago))
    window = datetime.now(UTC) - timedelta(minutes=30)

    dry = remove_orphan_files(table, older_than=window, dry_run=True)
    assert str(stale) in dry.removed and str(fresh) not in dry.removed and stale.exists()
    report = remove_orphan_files(table, older_than=window)

    assert not stale.exists() and fresh.exists()
    assert report.removed == dry.removed and set(report.removed) == unreferenced | {str(stale)}
    table.refresh()
    assert table.scan().to_arrow().num_rows == 60  # everything the table references is still there
    again = remove_orphan_files(table, older_than=window)
    assert again.orphans == 0


def test_compaction_beside_the_streaming_consumer_loses_and_duplicates_nothing(
    platform_settings: Settings, tmp_path: Path
) -> None:
    """The real consumer lands a load in many small commits while compaction runs again and again:
    afterwards the trades are exactly the ids produced, once each, in fewer files."""
    settings = streaming_platform(  # commits every 1 s, slower than 0.2 s: see compaction_commit_bench
        platform_settings, tmp_path, stream_batch_rows=600, stream_batch_seconds=1.0
    )
    data = tmp_path / "data"
    generated = run_k2(env_of(settings), "generate", "--out", str(data), "--symbols", "4", "--days", "2",
                       "--trades-per-day", "3000", "--quotes-per-trade", "0", "--seed", "5")  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    report = load(settings, str(data), "--format", "k2")
    produced = {m.value["event_id"] for m in messages_of(settings, report, "trades")}
    want = sum(len(messages_of(settings, report, t)) for t in ("trades", "quotes", "reference_data", "dead_letters"))
    assert len(produced) > 10_000

    consumer = StreamConsumer(settings)

    landed = [0]
    # Once, the consumer waits between two commits until a compaction has committed (a few seconds at
    # most: less than the group's poll interval), so the test always sees one land mid-stream; all
    # the other compactions race the consumer's commits (their conflicts are what is under test).
    compacted, held = threading.Event(), threading.Event()

    watched = open_catalog(settings).load_table((settings.namespace, "trades"))

    commits: list[int] = []

    def enough(counts: Counts) -> None:
        commits.append(counts.landed + counts.deduplicated - landed[0])
        landed[0] = counts.landed + counts.deduplicated
        if landed[0] >= want:
            consumer.stop()
        elif not held.is_set() and max(data_files(watched).values(), default=0) >= 3:
            held.set()  # a partition has enough files for the compaction below: it commits meanwhile
            compacted.wait(timeout=5)

    runner = threading.Thread(target=consumer.run, kwargs={"on_commit": enough})
    runner.start()
    table = open_catalog(settings).load_table((settings.namespace, "trades"))
    compacted_while_streaming = 0
    deadline = time.monotonic() + 240
    try:
        while runner.is_alive():
            assert time.monotonic() < deadline, "the consumer did not land the load in 240 s"
            table.refresh()
            done = compact(table, TRADES, min_files=3)
            if landed[0] < want:  # committed while the consumer still had records to land
                compacted_while_streaming += sum(p.outcome == "compacted" for p in done.partitions)
                if compacted_while_streaming:
                    compacted.set()
    finally:
        consumer.stop()
        runner.join(timeout=60)
    assert compacted_while_streaming >= 1
    assert len(commits) >= 10 and max(commits) <= settings.stream_batch_rows  # a backlog is landed in bounded batches

    compact(table, TRADES, min_files=2)
    ids = table.scan(selected_fields=("event_id",)).to_arrow().column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == produced  # nothing lost, nothing twice
    assert set(data_files(table).values()) == {1}  # one file per day partition
    expired = expire_snapshots(table, older_than=datetime.now(UTC) + timedelta(seconds=1), retain_last=5)
    assert expired.snapshots_after <= 5 + 1  # the newest five, and the consumer's last offsets snapshot
    ends: dict[str, dict[int, int]] = {}
    for m in messages_of(settings, report, "trades"):
        ends.setdefault(m.topic, {})[m.partition] = max(ends.get(m.topic, {}).get(m.partition, 0), m.offset + 1)
    assert committed_offsets(table, settings.stream_group) == ends  # a consumer resumes after the last record


def test_k2_compact_expire_and_clean_orphans_commands(tmp_path: Path) -> None:
    settings, table = trades_table(tmp_path)
    land_batches(table, [batch(table, [f"c-{10 * b + i}" for i in range(10)]) for b in range(5)])
    env = env_of(settings)
    compacted = run_k2(env, "compact", "--table", "trades", "--min-files", "2", "--json")
    assert compacted.returncode == 0, compacted.stderr
    [trades] = json.loads(compacted.stdout)["tables"]
    assert (trades["files_before"], trades["files_after"]) == (5, 1)
    assert trades["partitions"][0]["outcome"] == "compacted" and "trades event_day=" in compacted.stderr
    expired = run_k2(env, "expire", "--older-than-hours", "0", "--retain-last", "2")
    assert expired.returncode == 0 and "trades: 6 -> 2 snapshots (4 expired)" in expired.stdout, expired.stdout
    two_hours_ago = time.time() - 7200
    for path in Path(table.location().removeprefix("file://")).rglob("*"):
        os.utime(path, (two_hours_ago, two_hours_ago))
    too_soon = run_k2(env, "clean-orphans", "--older-than-hours", "0")
    assert too_soon.returncode == 2 and "--older-than-hours" in too_soon.stderr
    dry = run_k2(env, "clean-orphans", "--older-than-hours", "1", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    found: dict[str, Any] = {t["table"]: t for t in json.loads(dry.stdout)["tables"]}
    assert found["trades"]["orphans"] > 0 and found["trades"]["dry_run"] is True
    unknown = run_k2(env, "compact", "--table", "nope")
    assert unknown.returncode == 2 and "not K2 tables: nope" in unknown.stderr


def rewrite_with(monkeypatch: pytest.MonkeyPatch, meanwhile: Any) -> None:
    """Run ``meanwhile()`` once, after compaction has read a partition and before it commits."""
    write = maintenance._dataframe_to_data_files

    def write_then_interfere(*args: Any, **kwargs: Any) -> Any:
        written = list(write(*args, **kwargs))
        monkeypatch.setattr(maintenance, "_dataframe_to_data_files", write)
        meanwhile()
        return written

    monkeypatch.setattr(maintenance, "_dataframe_to_data_files", write_then_interfere)


def test_rows_appended_while_a_partition_is_rewritten_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, table = trades_table(tmp_path)
    land_batches(table, [batch(table, [f"r-{10 * b + i}" for i in range(10)]) for b in range(5)])
    other = open_catalog(settings).load_table((settings.namespace, "trades"))
    rewrite_with(monkeypatch, lambda: other.append(batch(other, ["late-1", "late-2"])))

    [done] = compact(table, TRADES, min_files=5).partitions

    assert done.outcome == "compacted" and (done.files_before, done.files_after) == (5, 1)
    ids = table.scan().to_arrow().column("event_id").to_pylist()
    assert len(ids) == 52 and {"late-1", "late-2"} <= set(ids)
    assert data_files(table) == {"event_day=2026-11-02": 2}  # the compacted file and the late one


def test_two_compactions_of_one_partition_one_wins_the_other_conflicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, table = trades_table(tmp_path)
    land_batches(table, [batch(table, [f"c-{10 * b + i}" for i in range(10)]) for b in range(5)])
    other = open_catalog(settings).load_table((settings.namespace, "trades"))
    inner: list[Any] = []
    rewrite_with(monkeypatch, lambda: inner.append(compact(other, TRADES, min_files=5)))

    [outer] = compact(table, TRADES, min_files=5).partitions

    assert inner[0].partitions[0].outcome == "compacted"
    assert outer.outcome.startswith("conflict: 5 of the files rewritten were removed meanwhile")
    ids = table.scan().to_arrow().column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == 50 and data_files(table) == {"event_day=2026-11-02": 1}
    written = {p.name for p in Path(table.location().removeprefix("file://")).rglob("*.parquet")}
    live = {Path(t.file.file_path).name for t in table.scan().plan_files()}
    assert len(written - live) == 5  # the five small files (the loser's output was deleted)


def test_a_partition_with_delete_files_is_skipped_and_one_deleted_from_meanwhile_conflicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, table = trades_table(tmp_path)
    land_batches(table, [batch(table, [f"d-{10 * b + i}" for i in range(10)]) for b in range(5)])
    victim = next(iter(table.scan().plan_files())).file
    other = open_catalog(settings).load_table((settings.namespace, "trades"))
    rewrite_with(monkeypatch, lambda: commit_deletes(other, [position_deletes(other, victim, [0, 1])]))

    [during] = compact(table, TRADES, min_files=5).partitions

    assert during.outcome.startswith("conflict: delete files were committed to the partition")
    table.refresh()
    assert table.scan().to_arrow().num_rows == 48  # the deleted rows stay deleted
    [after] = compact(table, TRADES, min_files=5).partitions
    assert after.outcome.startswith("skipped: the partition has delete files")
    assert data_files(table) == {"event_day=2026-11-02": 5}
