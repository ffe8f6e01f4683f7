"""Batch decoding (container + DuckDB's Avro reader + conform) against fastavro-encoded records."""

from __future__ import annotations

import io
import random
from pathlib import Path

import duckdb
import fastavro
import pyarrow as pa
import pytest

from k2_etl.lake.tables import iceberg_schema
from k2_etl.schemas import QUOTE, REFERENCE_DATA, REJECT, TRADE, RecordType
from k2_etl.wire.avro_decode import BatchDecoder, Undecodable
from tests.unit.test_avro_encode import random_value


def body(schema: dict[str, object], record: dict[str, object]) -> bytes:
    """A Confluent-framed message (schema id 1) as the consumer receives it."""
    out = io.BytesIO(b"\x00\x00\x00\x00\x01")
    out.seek(5)
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def framed(values: list[bytes]) -> pa.Array:
    return pa.array(values, pa.binary())


@pytest.mark.parametrize("record", [TRADE, QUOTE, REFERENCE_DATA, REJECT], ids=lambda r: r.name)
def test_a_batch_decodes_to_exactly_the_records(record: RecordType, tmp_path: Path) -> None:
    rng = random.Random(5)
    rows = [{f["name"]: random_value(f["type"], rng) for f in record.schema["fields"]} for _ in range(700)]
    target = iceberg_schema(record).as_arrow()
    decoded = BatchDecoder(tmp_path).decode(record.schema_str, framed([body(record.schema, r) for r in rows]), target)
    assert decoded.schema == target
    assert decoded.to_pylist() == pa.Table.from_pylist(rows, schema=target).to_pylist()


def test_a_malformed_body_fails_the_batch(tmp_path: Path) -> None:
    """Each body is a block of its own, so a short one cannot borrow the next one's bytes: the read
    fails, or drops it and the count gives it away; the consumer then decodes one by one."""
    rng = random.Random(1)
    good = body(TRADE.schema, {f["name"]: random_value(f["type"], rng) for f in TRADE.schema["fields"]})
    with pytest.raises((duckdb.Error, Undecodable)):
        BatchDecoder(tmp_path).decode(TRADE.schema_str, framed([good, good[:12]]), iceberg_schema(TRADE).as_arrow())
