"""Appends with offsets on a real Iceberg table: resume points, fencing, several groups."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.table import Table

from k2_etl.bootstrap import init_platform
from k2_etl.config import Settings
from k2_etl.lake import cleanup
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import Fenced, append_with_offsets, committed_offsets, recorded_topic_ids, unchanged_since
from tests.helpers import a_trade


@pytest.fixture
def trades(own_settings: Settings) -> Table:
    init_platform(own_settings)
    return open_catalog(own_settings).load_table((own_settings.namespace, "trades"))


def rows(table: Table, *ids: str) -> pa.Table:
    return pa.Table.from_pylist([{**a_trade(), "event_id": i} for i in ids], schema=table.schema().as_arrow())


def test_offsets_resume_and_a_stale_batch_is_fenced(trades: Table) -> None:
    assert committed_offsets(trades, "g") == {}
    append_with_offsets(trades, rows(trades, "a", "b"), "g", {"t": {0: None, 1: None}}, {"t": {0: 10, 1: 5}})
    assert committed_offsets(trades, "g") == {"t": {0: 10, 1: 5}}
    # the new owner of partition 1 commits from 5 to 8 ...
    append_with_offsets(trades, rows(trades, "c"), "g", {"t": {1: 5}}, {"t": {1: 8}})
    # ... so the old owner, who still thinks partition 1 is at 5, is fenced and writes nothing
    snapshots = len(trades.snapshots())
    with pytest.raises(Fenced, match=r"t\[1\] is at offset 8 in the table, not 5"):
        append_with_offsets(trades, rows(trades, "stale"), "g", {"t": {0: 10, 1: 5}}, {"t": {0: 12, 1: 7}})
    trades.refresh()
    assert len(trades.snapshots()) == snapshots
    assert sorted(trades.scan().to_arrow().column("event_id").to_pylist()) == ["a", "b", "c"]
    assert committed_offsets(trades, "g") == {"t": {0: 10, 1: 8}}


def test_groups_keep_their_own_offsets_and_maintenance_snapshots_are_skipped(trades: Table) -> None:
    append_with_offsets(trades, rows(trades, "a"), "g1", {"t": {0: None}}, {"t": {0: 3}})
    append_with_offsets(trades, rows(trades, "b"), "g2", {"t": {0: None}}, {"t": {0: 7}})
    trades.append(rows(trades, "c"))  # another writer (say, maintenance) records no offsets
    assert committed_offsets(trades, "g1") == {"t": {0: 3}}
    assert committed_offsets(trades, "g2") == {"t": {0: 7}}


def test_a_commit_that_conflicts_is_checked_again_so_a_stale_batch_is_fenced_not_landed_twice(
    trades: Table, own_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consumer A checks the table (partition 0 at 1), then, before its commit lands, consumer B
    commits the same batch. A's commit conflicts; retried with the check, A is fenced."""
    append_with_offsets(trades, rows(trades, "x-1"), "g", {"t": {0: None}}, {"t": {0: 1}})
    other = open_catalog(own_settings).load_table((own_settings.namespace, "trades"))
    append = cleanup.append

    def b_commits_first(table: Table, *args: Any) -> None:
        monkeypatch.setattr(cleanup, "append", append)  # once
        append_with_offsets(other, rows(other, "x-2"), "g", {"t": {0: 1}}, {"t": {0: 2}})
        append(table, *args)

    monkeypatch.setattr(cleanup, "append", b_commits_first)
    with pytest.raises(Fenced, match=r"t\[0\] is at offset 2 in the table, not 1"):
        append_with_offsets(trades, rows(trades, "x-2"), "g", {"t": {0: 1}}, {"t": {0: 2}})
    trades.refresh()
    assert sorted(trades.scan().to_arrow().column("event_id").to_pylist()) == ["x-1", "x-2"]
    assert committed_offsets(trades, "g") == {"t": {0: 2}}


def test_offsets_belong_to_one_life_of_a_topic(trades: Table) -> None:
    """A topic created again (new id) starts at offset 0: the old life's offsets are void for it,
    its first append replaces them, and fencing compares against the current life only."""
    append_with_offsets(trades, rows(trades, "a"), "g", {"t": {0: None, 1: None}}, {"t": {0: 500, 1: 700}}, {"t": "A"})
    append_with_offsets(trades, rows(trades, "u"), "g", {"u": {0: None}}, {"u": {0: 9}}, {"u": "U"})
    assert committed_offsets(trades, "g") == {"t": {0: 500, 1: 700}, "u": {0: 9}}  # whatever their life
    assert committed_offsets(trades, "g", {"t": "A", "u": "U"}) == {"t": {0: 500, 1: 700}, "u": {0: 9}}
    assert committed_offsets(trades, "g", {"t": "B"}) == {"u": {0: 9}}  # t's offsets are of another life
    assert recorded_topic_ids(trades, "g") == {"t": "A", "u": "U"}
    with pytest.raises(Fenced, match=r"t\[0\] is at offset None in the table, not 500"):  # void: nothing recorded
        append_with_offsets(trades, rows(trades, "b"), "g", {"t": {0: 500}}, {"t": {0: 3}}, {"t": "B"})
    append_with_offsets(trades, rows(trades, "b"), "g", {"t": {0: None}}, {"t": {0: 3}}, {"t": "B"})
    assert committed_offsets(trades, "g", {"t": "B", "u": "U"}) == {"t": {0: 3}, "u": {0: 9}}  # partition 1 gone
    assert recorded_topic_ids(trades, "g") == {"t": "B", "u": "U"}
    assert committed_offsets(trades, "g", {"t": "A"}) == {"u": {0: 9}}


def test_unchanged_since_is_when_each_offset_was_first_recorded(trades: Table) -> None:
    append_with_offsets(trades, rows(trades, "a"), "g", {"t": {0: None, 1: None}}, {"t": {0: 1, 1: 1}}, {"t": "A"})
    first = trades.current_snapshot()
    append_with_offsets(trades, rows(trades, "b"), "g", {"t": {0: 1}}, {"t": {0: 2}}, {"t": "A"})
    second = trades.current_snapshot()
    trades.append(rows(trades, "c"))  # a writer that records no offsets (maintenance) changes nothing
    assert first is not None and second is not None
    since = unchanged_since(trades, "g", {"t": "A"})
    assert since == {"t": {0: second.timestamp_ms, 1: first.timestamp_ms}}
    assert unchanged_since(trades, "g", {"t": "B"}) == {}  # nothing in that life
