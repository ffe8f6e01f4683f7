"""Cursors: opaque, round-trip exactly, and anything else is refused naming the parameter."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from k2_etl.errors import QueryError
from k2_etl.query.cursor import Cursor, Position, decode_cursor, encode_cursor


def test_a_cursor_round_trips_its_snapshots_and_position() -> None:
    at = datetime(2026, 11, 2, 23, 0, 0, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(42, Position(at, 7, "abc"))) == Cursor(42, Position(at, 7, "abc"), None)
    assert decode_cursor(encode_cursor(42, Position(at, -1, "x"), 43)) == Cursor(42, Position(at, -1, "x"), 43)
    span = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, 0, 0, 0, 1, tzinfo=UTC))
    assert decode_cursor(encode_cursor(7, Position(at, 1, "k"), None, span)).span == span  # pages keep the range


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not-a-cursor",
        "eyJzIjoxfQ",  # {"s":1}
        "e30",  # {}
        "W10",  # []
        "eyJzIjoiMSIsInQiOjEsInEiOjEsImkiOiJ4In0",  # a snapshot id that is a string
        "eyJzIjp0cnVlLCJ0IjoxLCJxIjoxLCJpIjoieCJ9",  # a snapshot id that is a boolean
    ],
)
def test_anything_else_is_refused(cursor: str) -> None:
    with pytest.raises(QueryError) as caught:
        decode_cursor(cursor)
    assert caught.value.parameter == "cursor"


def cursor_of(state: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "state",
    [
        {"s": 1, "t": 1, "q": 10**130, "i": "x"},  # past int64: DuckDB could not bind it
        {"s": 1, "t": 1, "q": 1, "i": "x", "a": 5},  # half a range
        {"s": 1, "t": 1, "q": 1, "i": "x", "r": "2"},  # a related snapshot that is text
    ],
)
def test_cursors_out_of_range_are_refused(state: dict[str, object]) -> None:
    with pytest.raises(QueryError):
        decode_cursor(cursor_of(state))
