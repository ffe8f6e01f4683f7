"""Calendar-aware bars (exchange time zones, session origins, weeks and months, per exchange or
consolidated) over trades landed by the real pipeline, against bars found in plain Python by
walking each local day's bar boundaries, across Sydney's and New York's daylight-saving changes."""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from k2_etl.config import Settings
from k2_etl.errors import QueryError
from k2_etl.query.engine import QueryEngine
from tests.integration.query_helpers import a_symbol, land, stable_order, trades_of

ZONES = {"ASX": "Australia/Sydney", "CXA": "Australia/Sydney", "XNYS": "America/New_York", "XLON": "Europe/London"}
#: Sydney's clocks go forward on Sunday 2026-10-04; New York's go back on Sunday 2026-11-01.
SPANS = {
    "K2DST": (datetime(2026, 9, 28, 10, tzinfo=UTC), datetime(2026, 10, 6, 10, tzinfo=UTC), ("ASX", "CXA")),
    "K2NYL": (datetime(2026, 10, 30, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC), ("XNYS", "XLON")),
}
START, END = datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def calendar_landed(landed: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Two symbols of this module's own: K2DST on two Sydney exchanges across Sydney's change,
    K2NYL in New York and London across New York's; a trade every 37 minutes around the clock."""
    folder = tmp_path_factory.mktemp("calendar")
    sequence: dict[tuple[str, str, date], int] = defaultdict(int)
    with (folder / "trades_calendar.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["event_time", "symbol", "exchange", "price", "size", "currency", "sequence_number",
                         "conditions", "venue"])  # fmt: skip
        for symbol, (first, last, exchanges) in SPANS.items():
            at, n = first, 0
            while at < last:
                exchange = exchanges[n % 2]
                day = at.astimezone(ZoneInfo(ZONES[exchange])).date()
                sequence[symbol, exchange, day] += 1
                price = Decimal(40) + Decimal((n * 7919) % 500) / 100
                writer.writerow([at.isoformat().replace("+00:00", "Z"), symbol, exchange, price, 10 + n % 7, "AUD",
                                 sequence[symbol, exchange, day], "", ""])  # fmt: skip
                at, n = at + timedelta(minutes=37, seconds=n % 11), n + 1
    land(landed, folder)
    return landed


def bar_start(at: datetime, zone: ZoneInfo, interval: timedelta | str, origin: timedelta) -> datetime:
    """The bar holding ``at``, found by walking boundaries: the local period (day, week from Monday,
    month from the 1st, each ``origin`` past midnight) whose start is the last at or before ``at``,
    then its bars of ``interval`` one after another."""

    def period_start(day: date) -> datetime:
        return (datetime.combine(day, time()) + origin).replace(tzinfo=zone).astimezone(UTC)

    local = at.astimezone(zone).date()
    candidates = [local + timedelta(days=d) for d in range(-40, 2)]
    if interval == "week":
        candidates = [d for d in candidates if d.weekday() == 0]
    elif interval == "month":
        candidates = [d for d in candidates if d.day == 1]
    start = max(period_start(d) for d in candidates if period_start(d) <= at)
    if isinstance(interval, str) or interval == timedelta(days=1):
        return start
    while start + interval <= at:
        start += interval
    return start


def expected_bars(
    trades: list[dict[str, Any]], zone_of: Any, interval: timedelta | str, origin: timedelta, by_exchange: bool
) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for trade in sorted(trades, key=stable_order):
        start = bar_start(trade["event_time"], ZoneInfo(zone_of(trade)), interval, origin)
        groups[start, trade["symbol"], trade["exchange"] if by_exchange else ""].append(trade)
    bars = []
    for (start, symbol, exchange), rows in sorted(groups.items()):
        volume = sum((r["size"] for r in rows), Decimal(0))
        notional = sum((r["price"] * r["size"] for r in rows), Decimal(0))
        bar = {"symbol": symbol, "bar_start": start, "open": rows[0]["price"], "high": max(r["price"] for r in rows),
               "low": min(r["price"] for r in rows), "close": rows[-1]["price"], "volume": volume,
               "trades": len(rows), "vwap": (notional / volume).quantize(Decimal("0.00000001"))}  # fmt: skip
        bars.append({**bar, "exchange": exchange} if by_exchange else bar)
    return bars


def answered(engine: QueryEngine, symbol: str, **arguments: Any) -> list[dict[str, Any]]:
    result = engine.bars(symbols=[symbol], start=START, end=END, limit=50_000, **arguments)
    assert result.cursor is None
    return result.rows.to_pylist()


@pytest.mark.parametrize(
    ("interval", "origin"),
    [(timedelta(hours=1), timedelta(0)), (timedelta(minutes=15), timedelta(0)), (timedelta(days=1), timedelta(0)),
     (timedelta(hours=1), timedelta(hours=10)), ("week", timedelta(0)), ("month", timedelta(0))],
)  # fmt: skip
def test_sydney_bars_across_the_clock_change_match_a_walk_of_local_boundaries(
    calendar_landed: Settings, interval: timedelta | str, origin: timedelta
) -> None:
    engine = QueryEngine(calendar_landed)
    trades = trades_of(calendar_landed, "K2DST")
    expected = expected_bars(trades, lambda t: "Australia/Sydney", interval, origin, by_exchange=False)
    named = answered(engine, "K2DST", interval=interval, tz="Australia/Sydney", origin=origin)
    assert named == expected
    # Both exchanges are in Sydney: consolidated bars in the exchange's zone are the same bars.
    assert answered(engine, "K2DST", interval=interval, tz="exchange", origin=origin) == expected
    if interval == timedelta(days=1):  # the 23-hour day is one bar
        starts = [b["bar_start"] for b in named]
        assert datetime(2026, 10, 3, 14, tzinfo=UTC) in starts and datetime(2026, 10, 4, 13, tzinfo=UTC) in starts
    assert sum(b["trades"] for b in named) == len(trades)


@pytest.mark.parametrize(("interval", "origin"), [(timedelta(days=1), timedelta(0)),
                                                  (timedelta(hours=1), timedelta(hours=9, minutes=30))])  # fmt: skip
def test_bars_per_exchange_are_each_in_their_exchange_s_zone(
    calendar_landed: Settings, interval: timedelta, origin: timedelta
) -> None:
    engine = QueryEngine(calendar_landed)
    trades = trades_of(calendar_landed, "K2NYL")
    expected = expected_bars(trades, lambda t: ZONES[t["exchange"]], interval, origin, by_exchange=True)
    assert answered(engine, "K2NYL", interval=interval, tz="exchange", origin=origin, by="exchange") == expected
    assert {b["exchange"] for b in expected} == {"XNYS", "XLON"}
    # One exchange asked for: its zone, its trades only.
    only = answered(engine, "K2NYL", interval=interval, tz="exchange", origin=origin, exchange="XLON")
    assert only == [{k: v for k, v in b.items() if k != "exchange"} for b in expected if b["exchange"] == "XLON"]


def test_consolidated_bars_over_exchanges_in_different_zones_are_refused_saying_which(
    calendar_landed: Settings,
) -> None:
    engine = QueryEngine(calendar_landed)
    with pytest.raises(QueryError) as refused:
        engine.bars(symbols=["K2NYL"], start=START, end=END, interval=timedelta(days=1), tz="exchange")
    assert refused.value.parameter == "tz"
    assert "XLON (Europe/London)" in refused.value.why and "XNYS (America/New_York)" in refused.value.why
    # In a zone given by name they are one market's bars again, and in UTC they are today's.
    london = answered(engine, "K2NYL", interval=timedelta(days=1), tz="Europe/London")
    trades = trades_of(calendar_landed, "K2NYL")
    assert london == expected_bars(trades, lambda t: "Europe/London", timedelta(days=1), timedelta(0), False)


def test_pages_of_bars_per_exchange_walk_every_bar_once(calendar_landed: Settings) -> None:
    engine = QueryEngine(calendar_landed)
    arguments: dict[str, Any] = {"symbols": ["K2DST", "K2NYL"], "start": START, "end": END,
                                 "interval": timedelta(hours=4), "tz": "Asia/Tokyo", "by": "exchange"}  # fmt: skip
    whole = engine.bars(limit=50_000, **arguments).rows.to_pylist()
    paged, cursor = [], None
    while True:
        page = engine.bars(limit=7, cursor=cursor, **arguments)
        paged += page.rows.to_pylist()
        cursor = page.cursor
        if cursor is None:
            break
    assert paged == whole and len(whole) > 50
    keys = [(b["bar_start"], b["symbol"], b["exchange"]) for b in whole]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_a_1d_bar_in_the_exchange_s_zone_is_the_loader_s_trading_day(landed: Settings) -> None:
    engine = QueryEngine(landed)
    symbol = a_symbol(landed)
    day = engine.summary(symbol, date(2026, 11, 2), exchange="ASX")
    (bar,) = answered(engine, symbol, interval=timedelta(days=1), tz="exchange", exchange="ASX")
    assert bar["bar_start"] == datetime(2026, 11, 1, 13, tzinfo=UTC)  # Sydney's midnight, in summer time
    assert (bar["open"], bar["close"], bar["volume"], bar["trades"], bar["vwap"]) == (
        day["open"], day["close"], day["volume"], day["trades"], day["vwap"])  # fmt: skip


def test_a_day_is_asked_by_its_date_in_the_bars_zone(calendar_landed: Settings) -> None:
    engine = QueryEngine(calendar_landed)
    sunday = date(2026, 10, 4)  # 23 hours long in Sydney
    hours = engine.bars(symbols=["K2DST"], day=sunday, start=START, end=END, interval=timedelta(hours=1),
                        tz="exchange").rows.to_pylist()  # fmt: skip
    sydney = ZoneInfo("Australia/Sydney")
    on_the_day = [t for t in trades_of(calendar_landed, "K2DST") if t["event_time"].astimezone(sydney).date() == sunday]
    assert sum(b["trades"] for b in hours) == len(on_the_day) > 30
    # One local day: the statement counts from its one start, no join; the same bars as the walk.
    assert hours == expected_bars(on_the_day, lambda t: "Australia/Sydney", timedelta(hours=1), timedelta(0), False)
    assert datetime(2026, 10, 3, 14, tzinfo=UTC) <= hours[0]["bar_start"] < hours[-1]["bar_start"]
    assert hours[-1]["bar_start"] < datetime(2026, 10, 4, 13, tzinfo=UTC)  # Sydney's midnight, after the change
    with pytest.raises(QueryError) as refused:  # per exchange in their own zones: no one day
        engine.bars(symbols=["K2NYL"], day=sunday, start=START, end=END, interval=DAY, tz="exchange", by="exchange")
    assert refused.value.parameter == "day"


def test_unknown_exchange_zones_and_bad_calendars_are_refused(landed: Settings) -> None:
    engine = QueryEngine(landed)
    symbol = a_symbol(landed)
    base: dict[str, Any] = {"symbols": [symbol], "start": START, "end": END}
    hour = timedelta(hours=1)
    for arguments, parameter in (({"interval": "fortnight"}, "interval"), ({"interval": 2 * DAY}, "interval"),
                                 ({"interval": hour, "tz": "Nowhere/City"}, "tz"),
                                 ({"interval": hour, "tz": "localtime"}, "tz"),
                                 ({"interval": hour, "tz": "exchange", "exchange": "ZZZZ"}, "tz")):  # fmt: skip
        with pytest.raises(QueryError) as refused:
            engine.bars(**base, **arguments)
        assert refused.value.parameter == parameter
