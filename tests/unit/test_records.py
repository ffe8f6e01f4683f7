"""The record rules (k2_etl.records): each failing row named with its field, value and rule."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa

from k2_etl.records import problems

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def trades(**columns: list[object]) -> pa.Table:
    base: dict[str, list[object]] = {
        "event_id": ["a", "b", "c"],
        "symbol": ["BHP", "BHP", "BHP"],
        "exchange": ["ASX", "ASX", "ASX"],
        "event_time": [NOW, NOW, NOW],
        "price": [Decimal("1.5"), Decimal("2"), Decimal("3")],
        "size": [Decimal("100"), Decimal("100"), Decimal("100")],
    }
    base.update(columns)
    types = {"event_time": pa.timestamp("us", "UTC"), "price": pa.decimal128(18, 8), "size": pa.decimal128(18, 8)}
    return pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in base.items()})


def test_a_quote_needs_a_bid_or_an_ask() -> None:
    sides = {"bid_price": [Decimal("1"), None, None], "ask_price": [None, Decimal("2"), None]}
    quotes = pa.table({k: pa.array(v, pa.decimal128(18, 8)) for k, v in sides.items()})
    assert {row: str(p) for row, p in problems(quotes, "quote").items()} == {
        2: "field bid_price: null is empty, and so is ask_price (a quote needs one of them)"
    }


def test_a_clean_batch_has_no_problems() -> None:
    assert problems(trades(), "trade") == {}


def test_each_rule_names_field_value_and_why() -> None:
    found = problems(
        trades(
            symbol=["BHP", "", "BHP"],
            price=[Decimal("0"), Decimal("2"), Decimal("3")],
            event_time=[NOW, NOW, datetime(1970, 1, 2, tzinfo=UTC)],
        ),
        "trade",
    )
    assert {row: str(p) for row, p in found.items()} == {
        0: "field price: 0.00000000 is not positive",
        1: 'field symbol: "" is empty',
        2: "field event_time: 1970-01-02T00:00:00+00:00 is outside 1990-01-01 .. now + 1 day",
    }
