"""One verdict per record, whichever path sees it: the same good and bad records go through
`k2 load` (as CSV lines), `k2 consume` (as Avro records another producer wrote) and the daily
quality check (as rows a writer put in the tables past the rules), and all three agree on
which records are wrong and on the field that makes them so (k2_etl.records)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2_etl.config import Settings
from k2_etl.jobs.quality import check_day
from k2_etl.lake.catalog import open_catalog
from k2_etl.schemas import QUOTE, TRADE
from k2_etl.wire.kafka import client_config
from tests.helpers import a_trade, poll
from tests.integration.ingest_helpers import load
from tests.integration.stream_helpers import ConsumerProcess, landed_counts, ready_settings, table

DAY = date(2026, 11, 25)
AT = datetime(2026, 11, 25, 0, 0, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    """One record: its values (CSV text; None is an empty side of a quote) and the field that
    makes it wrong (None: a good record)."""

    name: str
    values: dict[str, str]
    wrong: str | None


TRADE_CASES = [
    Case("a trade", {}, None),
    Case("a zero price", {"price": "0"}, "price"),
    Case("a negative size", {"size": "-5"}, "size"),
    Case("sequence number zero", {"sequence_number": "0"}, "sequence_number"),
    Case("a time before 1990", {"event_time": "1989-12-31T23:59:59Z"}, "event_time"),
    Case("no symbol", {"symbol": ""}, "symbol"),
]
QUOTE_CASES = [
    Case("a two-sided quote", {}, None),
    Case("an empty bid side with size 0", {"bid_price": "", "bid_size": "0"}, None),
    Case("a zero size beside a bid price", {"bid_size": "0"}, None),
    Case("a negative ask size", {"ask_size": "-1"}, "ask_size"),
    Case("a negative bid price", {"bid_price": "-0.5"}, "bid_price"),
    Case("neither a bid nor an ask", {"bid_price": "", "bid_size": "", "ask_price": "", "ask_size": ""}, "bid_price"),
]
TRADE_CSV = {"event_time": "2026-11-25T00:00:01Z", "symbol": "BHP", "exchange": "ASX", "price": "45.5",
             "size": "100", "currency": "AUD", "sequence_number": "1", "conditions": "", "venue": ""}  # fmt: skip
QUOTE_CSV = {"event_time": "2026-11-25T00:00:01Z", "symbol": "BHP", "exchange": "ASX", "bid_price": "45.5",
             "bid_size": "100", "ask_price": "45.6", "ask_size": "200", "currency": "AUD", "sequence_number": "1",
             "conditions": ""}  # fmt: skip


def write_csv(path: Path, base: dict[str, str], cases: list[Case]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(base))
        writer.writeheader()
        for number, case in enumerate(cases, start=1):
            writer.writerow({**base, "sequence_number": str(number), **case.values})


def as_record(record_type: str, case: Case, number: int) -> dict[str, Any]:
    """The case as an Avro record another producer could write (the CSV text typed)."""
    base = {**(TRADE_CSV if record_type == "trade" else QUOTE_CSV), "sequence_number": str(number), **case.values}
    record: dict[str, Any] = {**a_trade(), "event_id": f"{record_type}-{number}", "event_time": AT}
    if record_type == "quote":
        for column in ("price", "size", "venue", "buyer_id"):
            record.pop(column)
        for column in ("bid_price", "bid_size", "ask_price", "ask_size"):
            record[column] = Decimal(base[column]) if base[column] else None
    else:
        record["price"], record["size"] = Decimal(base["price"]), Decimal(base["size"])
    record["symbol"], record["sequence_number"] = base["symbol"], int(base["sequence_number"])
    if base["event_time"] != TRADE_CSV["event_time"]:
        record["event_time"] = datetime.fromisoformat(base["event_time"])
    return record


def test_load_consume_and_the_quality_check_give_each_record_the_same_verdict(
    own_settings: Settings, tmp_path: Path
) -> None:
    settings = ready_settings(own_settings)
    cases = {"trade": TRADE_CASES, "quote": QUOTE_CASES}
    expected = {t: {n: c.wrong for n, c in enumerate(cs, start=1)} for t, cs in cases.items()}

    # 1. k2 load: the cases as CSV lines (line n + 1 is case n)
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "trades.csv", TRADE_CSV, TRADE_CASES)
    write_csv(data / "quotes.csv", QUOTE_CSV, QUOTE_CASES)
    report = load(settings, str(data), "--format", "k2")

    # 2. k2 consume: the cases as Avro records produced straight to the topics
    producer = Producer(client_config(settings))
    offsets: dict[tuple[str, int, int], int] = {}  # (topic, partition, offset) -> case number

    def delivered(record_type: str, number: int) -> Any:
        def report_delivery(err: Any, message: Any) -> None:
            assert err is None, err
            offsets[(message.topic(), message.partition(), message.offset())] = number

        return report_delivery

    with SchemaRegistryClient({"url": settings.schema_registry_url}) as registry:
        for record_type, schema in (("trade", TRADE), ("quote", QUOTE)):
            serialize = AvroSerializer(registry, schema.schema_str, conf={"auto.register.schemas": False})
            topic = schema.topic_name(settings)
            for number, case in enumerate(cases[record_type], start=1):
                value = serialize(as_record(record_type, case, number), SerializationContext(topic, MessageField.VALUE))
                producer.produce(topic, value, b"BHP", on_delivery=delivered(record_type, number))
    assert producer.flush(30) == 0
    direct: dict[str, dict[str, list[int]]] = {}  # topic -> partition -> [first, last] offset
    for topic, partition, offset in offsets:
        span = direct.setdefault(topic, {}).setdefault(str(partition), [offset, offset])
        span[:] = [min(span[0], offset), max(span[1], offset)]

    good = {t: sum(c.wrong is None for c in cs) for t, cs in cases.items()}
    bad = sum(c.wrong is not None for cs in cases.values() for c in cs)
    want = {"trades": 2 * good["trade"], "quotes": 2 * good["quote"], "rejects": 2 * bad}
    consumer = ConsumerProcess(settings, tmp_path / "consume.log")
    try:
        poll(lambda: landed_counts(settings, list(want)) == want or None, timeout=120,
             what=f"{want} to land")  # fmt: skip
        consumer.stop()
    finally:
        consumer.kill()

    rejects = table(settings, "rejects").to_pylist()
    by_load = {t: {n: None for n in expected[t]} for t in expected}
    by_consume = {t: {n: None for n in expected[t]} for t in expected}
    for reject in rejects:
        record_type = reject["record_type"]
        assert reject["field"] is not None and reject["reason"], reject  # every reject names its field
        if reject["stage"] == "load":
            by_load[record_type][reject["line_number"] - 1] = reject["field"]
        else:
            topic, partition, offset = reject["kafka_topic"], reject["kafka_partition"], reject["kafka_offset"]
            by_consume[record_type][offsets[(topic, partition, offset)]] = reject["field"]
            assert reject["value"] is not None  # and the value it had
    assert by_load == expected
    assert by_consume == expected

    # 3. The quality check: the loaded day passes (its zero sizes beside an empty side or a price
    # included); the direct records, once a writer puts the bad ones in the tables past the rules,
    # fail on exactly the fields the other two paths named.
    loaded = check_day(settings, DAY, report["files"])
    assert loaded.ok, loaded.failures()

    catalog = open_catalog(settings)
    for record_type, name in (("trade", "trades"), ("quote", "quotes")):
        iceberg = catalog.load_table((settings.namespace, name))
        wrong = [
            as_record(record_type, case, number)
            for number, case in enumerate(cases[record_type], start=1)
            if case.wrong is not None
        ]
        iceberg.append(pa.Table.from_pylist(wrong, schema=iceberg.schema().as_arrow()))
    files = [{"file": "produced directly", "status": "ok", "rows_read": len(offsets), "rows_produced": len(offsets),
              "rows_rejected": 0, "offsets": direct}]  # fmt: skip
    checked = check_day(settings, DAY, files)
    sane = next(c for c in checked.checks if c.name == "records follow the rules")
    named = set()
    for entry in sane.detail.split("; "):  # "trades: 1 rows failing price (e.g. field price: ...)"
        table_name, said = entry.split(": ", 1)
        named.add((table_name, said.split(" rows failing ")[1].split(" ")[0]))
    wanted = {(("trades" if t == "trade" else "quotes"), field) for t, e in expected.items() for field in e.values()
              if field is not None}  # fmt: skip
    assert not sane.ok and named == wanted, sane.detail
    assert all(c.ok for c in checked.checks if c.name != "records follow the rules"), checked.failures()
