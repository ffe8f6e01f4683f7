"""The query engine over data landed by the real pipeline (k2 load -> broker -> k2 consume -> Iceberg),
checked against plain Python on the same rows."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from k2_etl.config import Settings
from k2_etl.errors import QueryError, QueryTimeout
from k2_etl.lake.catalog import open_catalog
from k2_etl.query.engine import QueryEngine
from tests.helpers import env_of, run_k2
from tests.integration.query_helpers import (
    SlowClock,
    a_symbol,
    bars_of,
    check_prevailing_quotes,
    first_symbol,
    land,
    of_symbol,
    rows_of,
    slow_engine,
    trades_of,
    walk,
)

DAY_START = datetime(2026, 11, 1, tzinfo=UTC)
DAY_END = datetime(2026, 11, 4, tzinfo=UTC)


def test_walking_every_page_returns_every_row_once_in_order(landed: Settings) -> None:
    engine = QueryEngine(landed)
    symbol = a_symbol(landed)
    expected = trades_of(landed, symbol)
    assert len(expected) > 100
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = engine.page("trades", symbols=[symbol], start=DAY_START, end=DAY_END, limit=37, cursor=cursor)
        seen.extend(page.rows.to_pylist())
        if page.cursor is None:
            break
        cursor = page.cursor
    assert [r["event_id"] for r in seen] == [r["event_id"] for r in expected]
    assert seen == expected  # every column, exactly (prices are exact decimals)


def test_fields_and_exchange_narrow_a_page(landed: Settings) -> None:
    engine = QueryEngine(landed)
    symbol = a_symbol(landed)
    page = engine.page("trades", symbols=[symbol], start=DAY_START, end=DAY_END, exchange="CXA",
                       fields=["event_time", "price"], limit=50_000)  # fmt: skip
    expected = [r for r in trades_of(landed, symbol) if r["exchange"] == "CXA"]
    assert page.rows.column_names == ["event_time", "price"] and page.cursor is None
    assert page.rows.to_pylist() == [{"event_time": r["event_time"], "price": r["price"]} for r in expected]


def test_bars_match_an_independent_computation(landed: Settings) -> None:
    engine = QueryEngine(landed)
    symbol = a_symbol(landed)
    bars = engine.bars(symbols=[symbol], start=DAY_START, end=DAY_END, interval=timedelta(minutes=5)).rows.to_pylist()
    expected = bars_of(trades_of(landed, symbol), timedelta(minutes=5))
    assert len(expected) > 10
    assert [{k: bar[k] for k in expected[0]} for bar in bars] == expected


def test_time_travel_reads_a_past_snapshot(landed: Settings, tmp_path: Path) -> None:
    engine = QueryEngine(landed)
    trades = open_catalog(landed).load_table((landed.namespace, "trades"))
    before = trades.current_snapshot()
    assert before is not None
    data = tmp_path / "more"
    generated = run_k2(env_of(landed), "generate", "--out", str(data), "--symbols", "3", "--days", "1",
                       "--start", "2026-11-03", "--trades-per-day", "200", "--seed", "9")  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    land(landed, data)
    new_symbol = first_symbol(data / "2026-11-03")  # not in the table before: `past` has none of its trades
    now = engine.page("trades", symbols=[new_symbol], start=DAY_START, end=DAY_END, limit=50_000)
    past = engine.page("trades", symbols=[new_symbol], start=DAY_START, end=DAY_END, limit=50_000,
                       snapshot_id=before.snapshot_id)  # fmt: skip
    as_of = engine.page("trades", symbols=[new_symbol], start=DAY_START, end=DAY_END, limit=50_000,
                        as_of=datetime.fromtimestamp(before.timestamp_ms / 1000 + 0.0005, UTC))  # fmt: skip
    assert now.rows.num_rows == len(trades_of(landed, new_symbol)) > past.rows.num_rows
    assert past.rows.to_pylist() == trades_of(landed, new_symbol, before.snapshot_id)
    assert as_of.snapshot_id == before.snapshot_id and as_of.rows == past.rows


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 50_001}, "limit"),
        ({"start": DAY_END, "end": DAY_START}, "start"),
        ({"fields": ["price", "nope"]}, "fields"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"snapshot_id": 12345}, "snapshot_id"),
        ({"symbols": []}, "symbol"),
    ],
)
def test_bad_parameters_are_named(landed: Settings, arguments: dict[str, Any], parameter: str) -> None:
    engine = QueryEngine(landed)
    query: dict[str, Any] = {"symbols": ["BHP"], "start": DAY_START, "end": DAY_END, **arguments}
    with pytest.raises(QueryError) as caught:
        engine.page("trades", **query)
    assert caught.value.parameter == parameter


def test_sql_in_a_symbol_is_a_value_not_sql(landed: Settings) -> None:
    engine = QueryEngine(landed)
    for attempt in ("' OR 1=1 --", "X'); DROP TABLE trades; --", '" OR "1"="1'):
        page = engine.page("trades", symbols=[attempt], start=DAY_START, end=DAY_END)
        assert page.rows.num_rows == 0
    assert engine.page("trades", symbols=[a_symbol(landed)], start=DAY_START, end=DAY_END).rows.num_rows > 0


def test_each_trade_gets_the_quote_prevailing_at_its_time(landed: Settings) -> None:
    engine = QueryEngine(landed)
    symbol = a_symbol(landed)
    joined = engine.trades_with_quotes(symbols=[symbol], start=DAY_START, end=DAY_END, limit=50_000).rows.to_pylist()
    trades = trades_of(landed, symbol)
    assert check_prevailing_quotes(joined, trades, of_symbol(landed, "quotes", symbol)) > len(trades) // 2


def test_the_summary_of_a_trading_day_matches_an_independent_computation(landed: Settings) -> None:
    engine = QueryEngine(landed)
    symbol = a_symbol(landed)
    day = date(2026, 11, 2)
    summary = engine.summary(symbol, day)
    trades = [r for r in trades_of(landed, symbol) if r["trading_date"] == day]
    quotes = [r for r in rows_of(landed, "quotes") if r["symbol"] == symbol and r["trading_date"] == day]
    volume = sum((r["size"] for r in trades), Decimal(0))
    notional = sum((r["price"] * r["size"] for r in trades), Decimal(0))
    assert len(trades) > 100 and len(quotes) > 100
    assert {k: summary[k] for k in ("trades", "quotes", "open", "close", "high", "low", "volume")} == {
        "trades": len(trades), "quotes": len(quotes), "open": trades[0]["price"], "close": trades[-1]["price"],
        "high": max(r["price"] for r in trades), "low": min(r["price"] for r in trades), "volume": volume,
    }  # fmt: skip
    assert summary["vwap"] == (notional / volume).quantize(Decimal("0.00000001"))
    assert summary["first_trade"] == trades[0]["event_time"] and summary["last_trade"] == trades[-1]["event_time"]
    empty = engine.summary(symbol, date(2020, 1, 1))
    assert empty["trades"] == 0 and empty["quotes"] == 0 and empty["open"] is None and empty["vwap"] is None


def test_symbols_reference_and_unknown_symbols(landed: Settings) -> None:
    engine = QueryEngine(landed)
    listing = {r["symbol"]: r for r in engine.symbols().to_pylist()}
    traded: dict[str, int] = {}
    for r in rows_of(landed, "trades"):
        traded[r["symbol"]] = traded.get(r["symbol"], 0) + 1
    reference = {r["symbol"]: r for r in rows_of(landed, "reference_data")}
    assert {s: r["trades"] for s, r in listing.items() if r["trades"]} == traded
    assert set(listing) >= set(traded) | set(reference)
    some = next(iter(reference))
    assert listing[some]["name"] == reference[some]["name"]
    assert engine.reference(some).to_pylist() == [reference[some]]
    assert engine.unknown([some, "NOPE", "' OR 1=1 --"]) == ["NOPE", "' OR 1=1 --"]
    assert engine.reference("NOPE").num_rows == 0


def test_sequence_events_and_rejects_are_paged_in_order(landed: Settings) -> None:
    engine = QueryEngine(landed)
    everything = {"start": datetime(2000, 1, 1, tzinfo=UTC), "end": datetime(2100, 1, 1, tzinfo=UTC)}
    events, pages = walk(engine.sequence_events, limit=3, **everything)
    expected = sorted(rows_of(landed, "sequence_events"), key=lambda r: (r["event_time"], r["event_id"]))
    assert len(expected) >= 4 and pages > 1
    assert events == expected
    gaps, _ = walk(engine.sequence_events, kind="gap", **everything)
    assert gaps == [r for r in expected if r["kind"] == "gap"] and gaps
    rejects, _ = walk(engine.rejects, limit=1, **everything)
    assert rejects == sorted(rows_of(landed, "rejects"), key=lambda r: (r["rejected_at"], r["reject_id"]))
    assert [(r["field"], r["line_number"]) for r in rejects] == [("price", 2)], rejects
    assert "not-a-price" in rejects[0]["reason"] and "not-a-price" in rejects[0]["raw_line"], rejects


def test_snapshots_newest_first_with_what_each_did(landed: Settings) -> None:
    engine = QueryEngine(landed)
    table = open_catalog(landed).load_table((landed.namespace, "trades"))
    listed, pages = walk(engine.snapshots, table_name="trades", limit=1)
    assert pages == len(table.snapshots()) > 1
    assert [r["snapshot_id"] for r in listed] == [
        s.snapshot_id for s in sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True)
    ]
    assert listed[0]["current"] and not any(r["current"] for r in listed[1:])
    assert sum(r["added_records"] for r in listed) == listed[0]["total_records"]


def test_bars_and_trades_with_quotes_are_paged_like_trades(landed: Settings) -> None:
    engine = QueryEngine(landed)
    symbol = a_symbol(landed)
    arguments = {"symbols": [symbol], "start": DAY_START, "end": DAY_END}
    whole = engine.bars(interval=timedelta(minutes=1), limit=50_000, **arguments).rows.to_pylist()
    paged, pages = walk(engine.bars, interval=timedelta(minutes=1), limit=7, **arguments)
    assert paged == whole and pages > 2
    joined = engine.trades_with_quotes(limit=50_000, **arguments).rows.to_pylist()
    paged, pages = walk(engine.trades_with_quotes, limit=101, **arguments)
    assert paged == joined and pages > 2


@pytest.mark.parametrize("interval", [timedelta(minutes=7), timedelta(milliseconds=1500), timedelta(days=2)])
def test_intervals_must_divide_a_day(landed: Settings, interval: timedelta) -> None:
    with pytest.raises(QueryError) as caught:
        QueryEngine(landed).bars(symbols=["X"], start=DAY_START, end=DAY_END, interval=interval)
    assert caught.value.parameter == "interval"


def test_over_its_budget_a_query_returns_what_it_has_and_a_cursor_to_go_on(landed: Settings) -> None:
    symbol = a_symbol(landed)
    expected = [r["event_id"] for r in trades_of(landed, symbol)]
    first = slow_engine(landed).page("trades", symbols=[symbol], start=DAY_START, end=DAY_END, limit=50_000)
    assert first.partial and first.cursor is not None
    assert 0 < first.rows.num_rows < len(expected)  # the first UTC day of the ASX session, not the second
    rest = QueryEngine(landed).page("trades", symbols=[symbol], start=DAY_START, end=DAY_END, limit=50_000,
                                    cursor=first.cursor)  # fmt: skip
    assert not rest.partial and rest.cursor is None
    assert first.rows.column("event_id").to_pylist() + rest.rows.column("event_id").to_pylist() == expected


def test_a_query_with_nothing_within_its_budget_times_out(landed: Settings) -> None:
    engine = QueryEngine(landed, clock=SlowClock(), budget_seconds=0)
    with pytest.raises(QueryTimeout):
        engine.page("trades", symbols=[a_symbol(landed)], start=DAY_START, end=DAY_END)


def test_a_cursor_from_a_newer_snapshot_reads_on_a_process_with_older_metadata(
    landed: Settings, tmp_path: Path
) -> None:
    """Two API workers: A issues a cursor on a snapshot B's cached metadata predates. B must plan
    that snapshot with metadata that knows it (it once planned nothing: a short last page)."""
    stale = QueryEngine(landed)
    old_tables = {name: stale.table(name) for name in ("trades", "quotes")}
    data = tmp_path / "later"
    generated = run_k2(env_of(landed), "generate", "--out", str(data), "--symbols", "2", "--days", "1",
                       "--start", "2026-11-10", "--trades-per-day", "200", "--seed", "21")  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    land(landed, data)
    symbol = first_symbol(data / "2026-11-10")
    span = {"symbols": [symbol], "start": datetime(2026, 11, 9, tzinfo=UTC), "end": datetime(2026, 11, 11, tzinfo=UTC)}
    first = QueryEngine(landed).page("trades", limit=10, **span)
    assert first.cursor is not None
    for name, table in old_tables.items():  # B's cache still holds the metadata from before the load
        stale.tables._tables[name] = (time.monotonic(), table)
    rest = stale.page("trades", limit=50_000, cursor=first.cursor, **span)
    expected = [r["event_id"] for r in trades_of(landed, symbol) if span["start"] <= r["event_time"] < span["end"]]
    assert first.rows.column("event_id").to_pylist() + rest.rows.column("event_id").to_pylist() == expected
    assert len(expected) > 10 and rest.snapshot_id == first.snapshot_id
