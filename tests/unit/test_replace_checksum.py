"""The replay checksum: the same rows in any order, whenever read, have the same checksum."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa

from k2_etl.lake.replace import checksum
from k2_etl.lake.tables import TABLES_BY_NAME

START = datetime(2026, 11, 4, tzinfo=UTC)
END = START + timedelta(days=1)
TRADES = TABLES_BY_NAME["trades"]


def test_the_checksum_ignores_row_order_and_ingest_time_but_not_values() -> None:
    schema = TRADES.schema().as_arrow()
    rows = pa.Table.from_pylist(
        [
            {"event_id": f"id{i}", "symbol": "BHP", "exchange": "ASX", "event_time": START + timedelta(seconds=i),
             "price": 10 + i, "size": 1, "source": "f", "ingest_time": START, "conditions": [], "quality_flags": []}
            for i in range(3)
        ],
        schema=schema,
    )  # fmt: skip
    later = rows.set_column(rows.schema.get_field_index("ingest_time"), "ingest_time",
                            pa.array([END] * 3, schema.field("ingest_time").type))  # fmt: skip
    assert checksum(rows) == checksum(rows.take([2, 0, 1])) == checksum(later)
    assert checksum(rows) != checksum(rows.slice(0, 2))
    changed = rows.set_column(rows.schema.get_field_index("price"), "price",
                              pa.array([10, 11, 13], schema.field("price").type))  # fmt: skip
    assert checksum(changed) != checksum(rows) and checksum(changed).rows == 3


def test_a_code_moved_between_list_columns_or_an_empty_list_made_null_changes_the_checksum() -> None:
    schema = TABLES_BY_NAME["quotes"].schema().as_arrow()
    base = {"event_id": "q1", "symbol": "BHP", "exchange": "ASX", "event_time": START, "source": "f",
            "ingest_time": START}  # fmt: skip

    def one(conditions: list[str] | None, flags: list[str]) -> pa.Table:
        return pa.Table.from_pylist([{**base, "conditions": conditions, "quality_flags": flags}], schema=schema)

    sums = {checksum(one(c, f)) for c, f in ((["XT"], ["crossed"]), (["XT", "crossed"], []),
                                              ([], ["XT", "crossed"]), ([], []), (None, []))}  # fmt: skip
    assert len(sums) == 5
