"""Cursors: opaque, round-trip exactly, and anything else is refused naming the parameter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from k2_etl.errors import QueryError
from k2_etl.query.engine import Cursor, Position, decode_cursor, encode_cursor


def test_a_cursor_round_trips_its_snapshots_and_position() -> None:
    at = datetime(2026, 11, 2, 23, 0, 0, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(42, Position(at, 7, "abc"))) == Cursor(42, Position(at, 7, "abc"), None)
    assert decode_cursor(encode_cursor(42, Position(at, -1, "x"), 43)) == Cursor(42, Position(at, -1, "x"), 43)


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
