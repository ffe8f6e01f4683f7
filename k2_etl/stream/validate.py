"""Checks on decoded records: what a well-formed Avro record can still get wrong.

The batch loader validates CSV text before it produces anything; other
producers write to the topics too, so the consumer checks the values that
would make a row wrong in every query: empty keys, prices and sizes that are
not positive, event times outside any plausible range. A failing record goes
to the dead letters with the field, value and rule. Vectorized: a clean batch
costs a few Arrow compute calls per rule.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=1)

NOT_EMPTY = ("event_id", "symbol", "exchange")
POSITIVE = {"trade": ("price", "size", "sequence_number"), "quote": ("bid_price", "ask_price", "sequence_number")}
NOT_NEGATIVE = {"quote": ("bid_size", "ask_size")}


def _shown(value: object) -> str:
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        return value.isoformat()
    return json.dumps(value)


def problems(batch: pa.Table, record_type: str) -> dict[int, str]:
    """Row index -> why it is invalid (the first rule it fails), for the rows that fail any."""
    found: dict[int, str] = {}

    def flag(failing: pa.ChunkedArray | pa.Array, column: str, rule: str) -> None:
        mask = pc.fill_null(failing, False).to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(mask).tolist():
            if row not in found:
                found[row] = f"field {column}: {_shown(batch.column(column)[row].as_py())} {rule}"

    columns = set(batch.column_names)
    for column in NOT_EMPTY:
        if column in columns:
            values = batch.column(column)
            flag(pc.or_(pc.is_null(values), pc.equal(pc.utf8_length(values), 0)), column, "is empty")
    for column in POSITIVE.get(record_type, ()):
        if column in columns:
            flag(pc.less_equal(batch.column(column), 0), column, "is not positive")
    for column in NOT_NEGATIVE.get(record_type, ()):
        if column in columns:
            flag(pc.less(batch.column(column), 0), column, "is negative")
    if "event_time" in columns:
        times = batch.column("event_time")
        latest = datetime.now(UTC) + FUTURE_SLACK
        outside = pc.or_(
            pc.less(times, pa.scalar(EARLIEST, times.type)), pc.greater(times, pa.scalar(latest, times.type))
        )
        flag(outside, "event_time", f"is outside {EARLIEST:%Y-%m-%d} .. now + 1 day")
    return found
