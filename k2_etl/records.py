"""What makes a market-data record right, said once: the value rules, and the reject record
that says why a record was not.

Every path that accepts records applies the same rules: the loader's SQL to vendor CSV text
(``ingest/sql.py`` reads its signs and bounds from here), the consumer to records any producer
wrote (:func:`problems`, vectorized over Arrow), replay to the records it lands again, and the
daily quality check to what landed (:func:`problems` again). A record one path accepts, no
other path refuses.

The rules:

* ``event_id``, ``symbol`` and ``exchange`` are not empty.
* Trades: ``price`` and ``size`` are positive.
* Quotes: ``bid_price`` and ``ask_price`` are positive where present (a quote has no price on
  an empty side; vendor CSV files spell an empty side as a price of 0, which the loader stores
  as no price), and a quote has at least one of them. ``bid_size`` and ``ask_size`` are not
  negative: exchange quote files carry a size of 0 beside an empty side, and venues publish
  price levels of zero size (implied or indicative quotes). A negative size is never right.
* ``sequence_number`` is positive: exchange feeds number messages from 1, and the loader
  numbers from 1 the files that carry no sequence numbers.
* ``event_time`` lies between 1990-01-01 and a day after now (no market data is older; a
  later time is a clock or time-zone error).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2_etl.schemas import REJECT

EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=1)
NOT_EMPTY = ("event_id", "symbol", "exchange")
POSITIVE: dict[str, tuple[str, ...]] = {
    "trade": ("price", "size", "sequence_number"),
    "quote": ("bid_price", "ask_price", "sequence_number"),
}
NOT_NEGATIVE: dict[str, tuple[str, ...]] = {"quote": ("bid_size", "ask_size")}
ONE_OF: dict[str, tuple[str, str]] = {"quote": ("bid_price", "ask_price")}  # at least one present
EMPTY_SIDE_PRICES: dict[str, tuple[str, ...]] = {"quote": ("bid_price", "ask_price")}  # 0 in a CSV: no side
#: What the consumer says of a record's sequence number, per exchange, symbol and trading day
#: (the ``kind`` of a sequence_events row). The type lets mypy check every literal kind in the code.
SequenceKind = Literal["in_order", "gap", "out_of_order", "reset", "duplicate"]
SEQUENCE_KINDS: tuple[SequenceKind, ...] = get_args(SequenceKind)
#: Kafka header a load puts on every 64th record of each block: when it produced the block (epoch
#: ms, as text). The consumer's freshness is measured from it (a record's Kafka timestamp is its
#: event time, which for a file of yesterday's trades says nothing of the pipeline's speed).
PRODUCED_AT_HEADER = "k2-produced-ms"
MAX_RAW_LINE = 10_000  # characters of a rejected CSV line kept in its reject record

Sign = Literal["positive", "not_negative"]


def sign_of(record_type: str, column: str) -> Sign | None:
    """The sign rule of ``column`` in records of ``record_type``, if it has one."""
    if column in POSITIVE.get(record_type, ()):
        return "positive"
    if column in NOT_NEGATIVE.get(record_type, ()):
        return "not_negative"
    return None


def latest_event_time(now: datetime | None = None) -> datetime:
    """The latest plausible event time (now plus a day's slack)."""
    return (now or datetime.now(UTC)) + FUTURE_SLACK


def _shown(value: object) -> str:
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        return value.isoformat()
    return json.dumps(value)


@dataclass(frozen=True)
class Problem:
    """Why a record is wrong: the field, its value as shown to people, and the rule it breaks."""

    field: str
    value: str
    rule: str

    def __str__(self) -> str:
        return f"field {self.field}: {self.value} {self.rule}"


def problems(batch: pa.Table, record_type: str) -> dict[int, Problem]:
    """Row index -> why it is invalid (the first rule it fails), for the rows that fail any.

    Columns the batch lacks are not checked (an older writer schema): what a record does not
    say cannot be wrong. A clean batch costs a few Arrow compute calls per rule.
    """
    found: dict[int, Problem] = {}

    def flag(failing: pa.ChunkedArray | pa.Array, column: str, rule: str) -> None:
        mask = pc.fill_null(failing, False).to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(mask).tolist():
            if row not in found:
                found[row] = Problem(column, _shown(batch.column(column)[row].as_py()), rule)

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
    if record_type in ONE_OF and set(ONE_OF[record_type]) <= columns:
        first, second = ONE_OF[record_type]
        neither = pc.and_(pc.is_null(batch.column(first)), pc.is_null(batch.column(second)))
        flag(neither, first, f"is empty, and so is {second} (a {record_type} needs one of them)")
    if "event_time" in columns:
        times = batch.column("event_time")
        latest = latest_event_time()
        outside = pc.or_(
            pc.less(times, pa.scalar(EARLIEST, times.type)), pc.greater(times, pa.scalar(latest, times.type))
        )
        flag(outside, "event_time", f"is outside {EARLIEST:%Y-%m-%d} .. now + 1 day")
    return found


def by_field(problems_found: dict[int, Problem]) -> dict[str, list[Problem]]:
    """:func:`problems`'s answer by the field each row fails on (its problems, in row order)."""
    fields: dict[str, list[Problem]] = {}
    for _, problem in sorted(problems_found.items()):
        fields.setdefault(problem.field, []).append(problem)
    return dict(sorted(fields.items()))


# --- reject records: one shape whichever path rejected ----------------------------------------------
def load_reject(
    path: Path,
    record_type: str,
    line_number: int,
    raw: str,
    code: str,
    detail: str,
    column: str | None,
    load_id: str,
) -> dict[str, Any]:
    """The reject record of a CSV line the loader refused. Its id is the file and line (a load of the
    same file again rejects the same ids); ``_code`` is the reason's code, counted by the loader
    and not written."""
    return {
        "_code": code,
        "reject_id": _reject_id(f"{path.resolve()}|{line_number}"),
        "rejected_at": datetime.now(UTC),
        "stage": "load",
        "record_type": record_type,
        "reason": f"{path.name} line {line_number}: {detail}",
        "field": column,
        "value": None,
        "source": str(path),
        "line_number": line_number,
        "raw_line": raw[:MAX_RAW_LINE],
        "kafka_topic": None,
        "kafka_partition": None,
        "kafka_offset": None,
        "raw_bytes": None,
        "headers": None,
        "load_id": load_id,
    }


def consume_reject(
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    reason: str | Problem,
    record_type: str | None,
) -> dict[str, Any]:
    """The reject record of a Kafka message the consumer refused (its bytes and headers kept as
    they were; the field and value when a record rule refused it). Its id is the message's
    position: a message read twice is rejected once."""
    shown = {k: base64.b64encode(v).decode() for k, v in headers}
    load_id = next((v.decode(errors="replace") for k, v in headers if k == "k2-load-id" and v), None)
    return {
        "reject_id": _reject_id(f"{topic}|{partition}|{offset}"),
        "rejected_at": datetime.now(UTC),
        "stage": "consume",
        "record_type": record_type,
        "reason": f"{topic}[{partition}] offset {offset}: {reason}",
        "field": reason.field if isinstance(reason, Problem) else None,
        "value": reason.value if isinstance(reason, Problem) else None,
        "source": topic,
        "line_number": None,
        "raw_line": None,
        "kafka_topic": topic,
        "kafka_partition": partition,
        "kafka_offset": offset,
        "raw_bytes": value,
        "headers": json.dumps(shown, sort_keys=True) if shown else None,
        "load_id": load_id,
    }


def _reject_id(position: str) -> str:
    return hashlib.md5(position.encode(), usedforsecurity=False).hexdigest()


@functools.cache
def _reject_schema() -> Any:
    """Parsed at the first reject, not at import: the API imports this module for its constants."""
    return fastavro.parse_schema(REJECT.schema)


def encode_reject(prefix: bytes, reject: dict[str, Any]) -> bytes:
    """A reject record as a Kafka message value: the Confluent ``prefix`` (magic byte and schema id)
    and the record in Avro (keys starting with ``_`` are not part of it)."""
    buffer = io.BytesIO()
    buffer.write(prefix)
    fastavro.schemaless_writer(buffer, _reject_schema(), reject)
    return buffer.getvalue()
