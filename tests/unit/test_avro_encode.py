"""The vectorized Avro encoder against fastavro: same bytes, every supported type, nulls and constants;
and the fast paths taken where the data calls for them."""

from __future__ import annotations

import io
import random
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import fastavro
import pyarrow as pa
import pytest

from k2_etl.lake.tables import iceberg_schema
from k2_etl.schemas import QUOTE, REFERENCE_DATA, TRADE, RecordType
from k2_etl.wire.avro_encode import FAST_PATHS, confluent_prefix, encode_table, varint


def fastavro_bytes(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def encoded_and_paths(table: pa.Table, schema: dict[str, Any], schema_id: int) -> tuple[list[bytes], Counter[str]]:
    """The messages of ``table``, and how many columns each fast path encoded on the way."""
    before = Counter(FAST_PATHS)
    messages = encode_table(table, schema, schema_id).to_pylist()
    return messages, FAST_PATHS - before


def random_value(avro_type: Any, rng: random.Random) -> Any:
    if isinstance(avro_type, list):
        return None if rng.random() < 0.3 else random_value(avro_type[1], rng)
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical == "decimal":
            unscaled = rng.choice([0, 1, -1, 127, 128, -129, 2**31, -(2**40), rng.randrange(-(10**17), 10**17)])
            return Decimal(unscaled).scaleb(-avro_type["scale"])
        if logical == "timestamp-micros":
            return datetime(2026, 11, 25, tzinfo=UTC).replace(microsecond=rng.randrange(10**6))
        if logical == "date":
            return date(2026, 1, 1).replace(day=rng.randrange(1, 28))
        if avro_type["type"] == "array":
            return [rng.choice(["XT", "", "Ω", "long-code-" * 10]) for _ in range(rng.randrange(0, 4))]
    if avro_type == "string":
        return rng.choice(["", "BHP", "é-ü", "x" * 300, f"{rng.random()}"])
    if avro_type == "long":
        return rng.choice([0, -1, 63, 64, -65, 2**62, -(2**63), rng.randrange(-(10**12), 10**12)])
    if avro_type == "int":
        return rng.randrange(-(2**31), 2**31)
    if avro_type == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 5)))
    raise AssertionError(avro_type)


@pytest.mark.parametrize("record", [TRADE, QUOTE, REFERENCE_DATA], ids=lambda r: r.name)
def test_random_records_encode_exactly_as_fastavro(record: RecordType) -> None:
    rng = random.Random(42)
    schema = record.schema
    rows = [{f["name"]: random_value(f["type"], rng) for f in schema["fields"]} for _ in range(500)]
    table = pa.Table.from_pylist(rows, schema=iceberg_schema(record).as_arrow())
    encoded = encode_table(table, schema, 258).to_pylist()
    for row, message in zip(rows, encoded, strict=True):
        assert message[:5] == b"\x00\x00\x00\x01\x02"
        assert message[5:] == fastavro_bytes(schema, row)


def test_constant_and_all_null_columns() -> None:
    rng = random.Random(7)
    schema = TRADE.schema
    rows = []
    for _ in range(50):
        row = {f["name"]: random_value(f["type"], rng) for f in schema["fields"]}
        row.update(source="same/file.csv", load_id=None, exchange="ASX", venue=None)
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=iceberg_schema(TRADE).as_arrow())
    messages, paths = encoded_and_paths(table, schema, 1)
    for row, message in zip(rows, messages, strict=True):
        assert message == confluent_prefix(1) + fastavro_bytes(schema, row)
    constant = [f["name"] for f in schema["fields"] if len({repr(row[f["name"]]) for row in rows}) == 1]
    assert sorted(constant) == ["exchange", "load_id", "source", "venue"]
    assert paths["constant"] == len(constant)  # each encoded once, not per row


def test_varint_edges() -> None:
    values = [0, -1, 1, 63, -64, 64, 2**63 - 1, -(2**63)]
    encoded = varint(__import__("numpy").array(values, dtype="int64")).to_pylist()
    expected = [fastavro_bytes("long", v) for v in values]  # type: ignore[arg-type]
    assert encoded == expected


def test_repetitive_columns_take_the_dictionary_path() -> None:
    rng = random.Random(3)
    schema = QUOTE.schema
    rows = []
    for i in range(5000):
        row = {f["name"]: random_value(f["type"], rng) for f in schema["fields"]}
        row.update(symbol=rng.choice(["BHP", "CBA", "WBC"]), exchange="ASX" if i % 2 else "CXA", conditions=[])
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=iceberg_schema(QUOTE).as_arrow())
    messages, paths = encoded_and_paths(table, schema, 9)
    for row, message in zip(rows, messages, strict=True):
        assert message == confluent_prefix(9) + fastavro_bytes(schema, row)
    assert paths["dictionary"] >= 2  # symbol and exchange (and the flags' items, four values)


def test_fixed_width_strings_and_sliced_columns() -> None:
    """Ids (every value the same length) are encoded as rows of a byte matrix; a slice must not shift them."""
    rng = random.Random(11)
    schema = TRADE.schema
    rows = []
    for i in range(3000):
        row = {f["name"]: random_value(f["type"], rng) for f in schema["fields"]}
        row.update(event_id=f"{i:032x}", symbol=f"S{i % 500:03d}", conditions=["XT"] if i % 97 == 0 else [])
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=iceberg_schema(TRADE).as_arrow())
    for start, length in [(0, 3000), (1234, 1500)]:
        sliced = rows[start : start + length]
        encoded, paths = encoded_and_paths(table.slice(start, length), schema, 5)
        assert encoded == [confluent_prefix(5) + fastavro_bytes(schema, row) for row in sliced]
        assert paths["fixed_width"] >= 2  # event_id and symbol (500 symbols: too many for a dictionary)
