"""Id keys and the in-memory part of deduplication (the table side is tested end to end)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from pyiceberg.table.snapshots import Operation, Summary

from k2_etl.stream.dedup import IdIndex, keys
from tests.unit.fakes import FakeTable


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def test_md5_ids_become_their_16_bytes_and_others_their_text() -> None:
    ids = [md5(str(i)) for i in range(100)]
    packed = keys(ids)
    assert packed.dtype == np.dtype("S16")
    assert [bytes(k).ljust(16, b"\0").hex() for k in packed.tolist()] == ids
    digest = [hashlib.md5(t.encode(), usedforsecurity=False).digest().rstrip(b"\0") for t in ("e1", "z" * 32)]
    assert keys(["e1", "z" * 32]).tolist() == digest  # other ids: the MD5 of their text (one width for all)
    mixed = keys(["e1", ids[0]])  # a hex id is the same key whatever its batch holds
    assert mixed.tolist()[1] == packed.tolist()[0]


def id_rows(ids: list[str]) -> pa.Table:
    """A table's event ids (what the index scans for)."""
    return pa.table({"event_id": pa.array(ids, pa.string())})


def rows(*ids: str, day: int = 1) -> pa.Table:
    time = datetime(2026, 10, day, 12, tzinfo=UTC)
    return pa.table({"event_id": list(ids), "event_time": pa.array([time] * len(ids), pa.timestamp("us", "UTC"))})


def ids(table: pa.Table) -> list[str]:
    return table.column("event_id").to_pylist()


def fresh_ids(index: IdIndex, batch: pa.Table) -> list[str]:
    return ids(batch.filter(pa.array(index.fresh(batch))))


def test_fresh_drops_ids_the_table_or_the_batch_already_has() -> None:
    held = [md5(f"old{i}") for i in range(1000)]
    table = FakeTable(id_rows(held))
    index = IdIndex(table, "event_id", "event_time")  # type: ignore[arg-type]
    batch = rows(held[5], md5("new1"), md5("new1"), md5("new2"), held[999])
    assert fresh_ids(index, batch) == [md5("new1"), md5("new2")]
    assert table.scans == 1  # one day: loaded once
    index.add(rows(md5("new1"), md5("new2")))
    assert fresh_ids(index, rows(md5("new1"), md5("new3"))) == [md5("new3")]
    assert table.scans == 1
    index.fresh(rows(md5("x"), day=2))
    assert table.scans == 2  # another day is another scope
    index.clear()
    assert fresh_ids(index, rows(held[0])) == []
    assert table.scans == 3  # cleared: reloaded from the table


class FakeSnapshot:
    def __init__(self, snapshot_id: int, parent: int | None, operation: Operation) -> None:
        self.snapshot_id, self.parent_snapshot_id = snapshot_id, parent
        self.summary = Summary(operation=operation)


class FakeHistory(FakeTable):
    """A table whose snapshots are appended to by the test."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(id_rows(ids))
        self.snapshots: dict[int, FakeSnapshot] = {}
        self.current: FakeSnapshot | None = None

    def commit(self, operation: Operation) -> None:
        parent = self.current.snapshot_id if self.current else None
        self.current = FakeSnapshot(len(self.snapshots) + 1, parent, operation)
        self.snapshots[self.current.snapshot_id] = self.current

    def current_snapshot(self) -> FakeSnapshot | None:
        return self.current

    def snapshot_by_id(self, snapshot_id: int) -> FakeSnapshot | None:
        return self.snapshots.get(snapshot_id)


def test_sync_keeps_the_ids_across_appends_and_forgets_them_after_anything_else() -> None:
    table = FakeHistory([md5("a")])
    table.commit(Operation.APPEND)
    index = IdIndex(table, "event_id", "event_time")  # type: ignore[arg-type]
    index.sync()
    assert fresh_ids(index, rows(md5("a"))) == [] and table.scans == 1
    table.commit(Operation.APPEND)
    table.commit(Operation.APPEND)
    index.sync()
    assert fresh_ids(index, rows(md5("a"))) == [] and table.scans == 1  # appends: the ids held stay
    table.commit(Operation.OVERWRITE)  # a rollback removed "a"
    table.commit(Operation.APPEND)
    table.rows = id_rows([])
    index.sync()
    assert fresh_ids(index, rows(md5("a"))) == [md5("a")] and table.scans == 2  # reloaded: "a" lands again
    index.sync()
    table.current = FakeSnapshot(99, None, Operation.APPEND)  # the last snapshot seen left the lineage
    index.sync()
    index.fresh(rows(md5("b")))
    assert table.scans == 3
