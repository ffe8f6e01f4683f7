"""Pure parts of table maintenance: which rows a rewrite keeps."""

from __future__ import annotations

import pyarrow as pa

from k2_etl.lake.maintenance import PartitionCompaction, first_of_each_id


def test_the_first_landed_row_of_each_id_is_kept_in_landing_order() -> None:
    rows = pa.table({"event_id": ["a", "b", "a", "c", "b", "a"], "price": [1, 2, 3, 4, 5, 6]})
    kept = first_of_each_id(rows, "event_id")
    assert kept.to_pydict() == {"event_id": ["a", "b", "c"], "price": [1, 2, 4]}


def test_rows_without_repeats_or_without_an_id_column_are_returned_as_they_are() -> None:
    rows = pa.table({"event_id": ["x", "y"], "price": [1, 2]})
    assert first_of_each_id(rows, "event_id") is rows
    assert first_of_each_id(rows, None) is rows
    empty = rows.slice(0, 0)
    assert first_of_each_id(empty, "event_id") is empty


def test_only_a_compacted_partition_counts_duplicates_removed() -> None:
    done = PartitionCompaction("event_day=2026-11-02", "compacted", 7, 100, 62, 1, 50, 60)
    refused = PartitionCompaction("event_day=2026-11-03", "conflict: gone", 7, 100, 62)
    assert (done.duplicates_removed, refused.duplicates_removed) == (2, 0)
