"""Data-quality checks of a day's load, once the consumer has landed it.

Checked against the source of truth rather than against itself: the records a load
produced are read back from Kafka (the offset ranges the load manifest records) and looked
up in the tables by id. So "every record landed" holds whatever was deduplicated: a record
whose id was landed before by another load is found too.

* ``counts reconcile``: per file, rows read = rows produced + rows rejected, and no file failed;
* ``every record landed``: every produced trade, quote and reference record is in its table
  by ``event_id``, every rejected row in ``rejects`` by ``reject_id``;
* ``no duplicate ids``: the trades and quotes of the days the load touched hold each id once;
* ``records follow the rules``: the load's trades and quotes follow the record rules the loader
  and the consumer apply (``k2_etl.records``: positive prices, trade sizes and sequence numbers,
  quote sizes not negative, ...). Crossed quotes are counted, not failed: they do happen in
  fast markets;
* ``sequence events`` (information): the anomalies the consumer recorded for the day, by kind.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import TopicPartition
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, GreaterThanOrEqual, LessThan

from k2_etl.config import Settings
from k2_etl.errors import UnavailableError
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.tables import TABLES_BY_RECORD, tables_by_topic
from k2_etl.observability import QUALITY_CHECK_PASSED, QUALITY_SEQUENCE_EVENTS
from k2_etl.records import NOT_EMPTY, NOT_NEGATIVE, POSITIVE, by_field, problems
from k2_etl.schemas import SEQUENCE_EVENT
from k2_etl.wire.avro_decode import Decoder
from k2_etl.wire.kafka import make_consumer
from k2_etl.wire.registry import registry_client

READ_TIMEOUT_SECONDS = 120.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class DayQuality:
    day: date
    checks: list[Check] = field(default_factory=list)
    sequence_events: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "sequence_events": self.sequence_events}  # fmt: skip


def check_day(settings: Settings, day: date, files: Sequence[Mapping[str, Any]]) -> DayQuality:
    """Check what loading ``files`` (the loader's per-file results, as ``k2 load --json`` prints
    them) put in the tables, after the consumer landed it."""
    quality = DayQuality(day)
    quality.checks.append(_reconciles(files))
    produced = read_back(settings, [f.get("offsets") or {} for f in files])
    catalog = open_catalog(settings)
    table_of = tables_by_topic(settings)
    missing: list[str] = []
    duplicates: list[str] = []
    broken: list[str] = []
    crossed = 0
    for topic, records in sorted(produced.items()):
        definition = table_of[topic]
        id_column = definition.id_column or "event_id"
        ids = {r[id_column] for r in records}
        table = catalog.load_table((settings.namespace, definition.name))
        row_filter: BooleanExpression = AlwaysTrue()
        if definition.day_column is not None:
            times = [r[definition.day_column] for r in records]
            start = datetime.combine(min(times).date(), datetime.min.time(), min(times).tzinfo)
            end = datetime.combine(max(times).date() + timedelta(days=1), datetime.min.time(), max(times).tzinfo)
            row_filter = And(GreaterThanOrEqual(definition.day_column, start.isoformat()),  # type: ignore[call-arg,arg-type]
                             LessThan(definition.day_column, end.isoformat()))  # type: ignore[call-arg,arg-type]  # fmt: skip
        record_type = definition.record.name
        checked = {id_column, *NOT_EMPTY, *POSITIVE.get(record_type, ()), *NOT_NEGATIVE.get(record_type, ()),
                   "event_time", "bid_price", "ask_price"}  # fmt: skip
        columns = [c for c in table.schema().column_names if c in checked]
        scan = table.scan(row_filter=row_filter, selected_fields=tuple(columns))
        rows = scan.to_arrow()
        held = rows.column(id_column).to_pylist()
        absent = ids - set(held)
        if absent:
            missing.append(f"{definition.name}: {len(absent):,} of {len(ids):,} (e.g. {sorted(absent)[0]})")
        if definition.day_column is not None:
            repeated = [i for i, n in Counter(held).items() if n > 1]
            if repeated:
                duplicates.append(f"{definition.name}: {len(repeated):,} ids (e.g. {sorted(repeated)[0]})")
            mine = rows.filter(pc.is_in(rows.column(id_column), pa.array(sorted(ids), rows.column(id_column).type)))
            broken.extend(_broken_rules(definition.name, mine, record_type))
            crossed += _crossed(mine)
    landed_detail = "; ".join(missing) or f"all {sum(len(r) for r in produced.values()):,} records found by id"
    quality.checks.append(Check("every record landed", not missing, landed_detail))
    quality.checks.append(Check("no duplicate ids", not duplicates, "; ".join(duplicates) or "each id once"))
    sane = f"every record follows the record rules{f'; {crossed:,} crossed quotes (bid > ask)' if crossed else ''}"
    quality.checks.append(Check("records follow the rules", not broken, "; ".join(broken) or sane))
    events = catalog.load_table((settings.namespace, TABLES_BY_RECORD[SEQUENCE_EVENT.name].name))
    on_day = EqualTo("trading_date", day.isoformat())  # type: ignore[call-arg,arg-type]
    kinds = events.scan(row_filter=on_day, selected_fields=("kind",)).to_arrow()
    quality.sequence_events = dict(sorted(Counter(kinds.column("kind").to_pylist()).items()))
    for check in quality.checks:
        QUALITY_CHECK_PASSED.labels(check.name).set(int(check.ok))
    QUALITY_SEQUENCE_EVENTS.clear()
    for kind, count in quality.sequence_events.items():
        QUALITY_SEQUENCE_EVENTS.labels(kind).set(count)
    return quality


def _reconciles(files: Sequence[Mapping[str, Any]]) -> Check:
    wrong = [f"{f['file']}: {f['status']}{' (' + f['message'] + ')' if f.get('message') else ''}"
             for f in files if f["status"] == "failed"]  # fmt: skip
    wrong += [
        f"{f['file']}: read {f['rows_read']:,} != produced {f['rows_produced']:,} + rejected {f['rows_rejected']:,}"
        for f in files
        if f["status"] != "failed" and f["rows_read"] != f["rows_produced"] + f["rows_rejected"]
    ]
    read = sum(f["rows_read"] for f in files)
    detail = "; ".join(wrong) or f"{len(files)} files, {read:,} rows read = produced + rejected"
    return Check("counts reconcile", not wrong, detail)


def _broken_rules(table: str, rows: pa.Table, record_type: str) -> list[str]:
    """What breaks the record rules (k2_etl.records: the rules the loader and the consumer apply),
    per field: a row that landed anyway was written past them."""
    failing = by_field(problems(rows, record_type))
    return [f"{table}: {len(found):,} rows failing {field} (e.g. {found[0]})" for field, found in failing.items()]


def _crossed(rows: pa.Table) -> int:
    """Quotes whose bid is above their ask (counted, not failed: they happen in fast markets)."""
    if "bid_price" not in rows.column_names or "ask_price" not in rows.column_names:
        return 0
    return pc.sum(pc.fill_null(pc.greater(rows.column("bid_price"), rows.column("ask_price")), False)).as_py() or 0


def read_back(settings: Settings, files: Iterable[Mapping[str, Mapping[str, list[int]]]]) -> dict[str, list[dict]]:
    """The records in the offset ranges (loads' manifest offsets), decoded, by topic; per
    topic-partition the span from the first range's start to the last one's end."""
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for offsets in files:
        for topic, partitions in offsets.items():
            for partition, (first, last) in partitions.items():
                key = (topic, int(partition))
                known = ranges.get(key, (first, last))
                ranges[key] = (min(known[0], first), max(known[1], last))
    produced: dict[str, list[dict]] = {}
    if not ranges:
        return produced
    consumer = make_consumer(settings, "k2-quality", **{"enable.partition.eof": False})
    consumer.assign([TopicPartition(t, p, first) for (t, p), (first, _) in ranges.items()])
    remaining = {key: last - first + 1 for key, (first, last) in ranges.items()}
    decoder = Decoder(registry_client(settings))
    deadline = time.monotonic() + READ_TIMEOUT_SECONDS
    try:
        while any(n > 0 for n in remaining.values()):
            if time.monotonic() > deadline:
                short = {f"{t}[{p}]": n for (t, p), n in remaining.items() if n > 0}
                raise UnavailableError(f"could not read back the load's records from Kafka in "
                                       f"{READ_TIMEOUT_SECONDS:g} s; still to read: {short}")  # fmt: skip
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is not None:
                    continue
                key = (str(message.topic()), int(message.partition() or 0))
                span = ranges.get(key)
                if span is None or not span[0] <= (message.offset() or 0) <= span[1]:
                    continue
                produced.setdefault(key[0], []).append(decoder.decode(message.value())[1])
                remaining[key] -= 1
    finally:
        consumer.close()
        decoder.close()
    return produced
