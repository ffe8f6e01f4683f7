"""JSON text of query results: exact decimals as strings, ISO UTC times, escaped strings, nulls."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import msgspec
import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from k2_etl.query.output import json_array, json_schema

STRINGS = ["", "BHP", 'say "hi"', "back\\slash", "ünï", "x" * 50, "/data/2026-11-02/trades_ASX.csv"]
CONTROLS = ["tab\there", "line\nbreak"]


def a_table(seed: int, rows: int, strings: list[str]) -> pa.Table:
    rng = random.Random(seed)

    def maybe(value: object) -> object:
        return None if rng.random() < 0.2 else value

    start = datetime(2026, 11, 2, tzinfo=UTC)
    return pa.table(
        {
            "s": pa.array([maybe(rng.choice(strings)) for _ in range(rows)], pa.string()),
            "t": pa.array(
                [maybe(start + timedelta(microseconds=rng.randrange(10**12))) for _ in range(rows)],
                pa.timestamp("us", tz="UTC"),
            ),
            "d": pa.array([maybe(date(2026, 1, 1) + timedelta(days=rng.randrange(365))) for _ in range(rows)]),
            "p": pa.array(
                [maybe(Decimal(rng.randrange(-(10**12), 10**12)) / 10**8) for _ in range(rows)], pa.decimal128(18, 8)
            ),
            "n": pa.array([maybe(rng.randrange(-(2**62), 2**62)) for _ in range(rows)], pa.int64()),
            "b": pa.array([maybe(rng.random() < 0.5) for _ in range(rows)], pa.bool_()),
            "l": pa.array(
                [maybe([rng.choice(strings) for _ in range(rng.randrange(3))]) for _ in range(rows)],
                pa.list_(pa.string()),
            ),
        }
    )


def as_json(value: object) -> object:
    """A value as the API's JSON shows it, by plain Python."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, date):
        return value.isoformat()
    return value


@pytest.mark.parametrize("rows", [1, 500, 6_001])
@pytest.mark.parametrize("seed", range(5))
def test_json_array_says_every_value_exactly(seed: int, rows: int) -> None:
    table = a_table(seed, rows, STRINGS + CONTROLS)
    expected = [{k: as_json(v) for k, v in row.items()} for row in table.to_pylist()]
    assert msgspec.json.decode(json_array(table)) == expected
    assert json_array(table) == msgspec.json.encode(expected)  # the bytes msgspec writes


def test_every_character_is_escaped_as_msgspec_escapes_it() -> None:
    """Arrow's JSON writer and msgspec escape alike: each of the first 256 code points, the line and
    paragraph separators, a byte order mark and a character outside the BMP, alone and in a list."""
    texts = [chr(i) for i in range(256)] + ["\u2028", "\u2029", "\ufeff", "\U0001f600", 'a"b\\c/']
    table = pa.table({"s": pa.array(texts, pa.string()), "l": pa.array([[t, t] for t in texts])})
    assert json_array(table) == msgspec.json.encode([{"s": t, "l": [t, t]} for t in texts])


def test_types_arrow_writes_otherwise_are_encoded_by_msgspec() -> None:
    """Arrow's writer says 1.0e16 where msgspec says 1e16, and would write a struct's decimal as a
    number: such tables keep msgspec's bytes."""
    table = pa.table(
        {"f": [1e16, 0.1, None], "st": pa.array([{"p": Decimal("1.5")}] * 3, pa.struct([("p", pa.decimal128(9, 2))]))}
    )
    assert json_array(table) == msgspec.json.encode([{"f": f, "st": {"p": Decimal("1.50")}} for f in (1e16, 0.1, None)])


def test_times_are_iso_utc_with_microseconds_and_z() -> None:
    table = pa.table({"t": pa.array([datetime(2026, 11, 2, 23, 0, 12, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))})
    assert json_array(table) == b'[{"t":"2026-11-02T23:00:12.000000Z"}]'
    assert json_array(table.slice(0, 0)) == b"[]"


@pytest.mark.parametrize("rows", [500, 6_001])
def test_json_schema_describes_what_json_array_writes(rows: int) -> None:
    """The API's response schemas are made of json_schema: every value written validates (formats
    checked), and a value of another column's type does not."""
    table = a_table(7, rows, STRINGS + CONTROLS)
    validator = Draft202012Validator(
        {"type": "object", "properties": {f.name: json_schema(f.type, f.nullable) for f in table.schema},
         "required": table.column_names}, format_checker=FormatChecker()
    )  # fmt: skip
    for row in msgspec.json.decode(json_array(table)):
        assert not list(validator.iter_errors(row)), row
    wrong = {"t": "2026-11-02", "d": "2026-11-02T00:00:00Z", "p": 1.5, "n": "1", "b": "true", "l": "x", "s": 1}
    for column, value in wrong.items():
        assert not validator.is_valid({**msgspec.json.decode(json_array(table.slice(0, 1)))[0], column: value}), column
    assert not Draft202012Validator(json_schema(pa.decimal128(18, 8), nullable=False)).is_valid(None)
