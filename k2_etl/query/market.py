"""Market-data queries: pages of trades and quotes, bars with VWAP, trades with the prevailing
quote (an as-of join), and a symbol's trading day.

Each reads a pinned snapshot (current, ``snapshot_id`` or ``as_of``), plans its files, and pages
a day at a time in a stable order (:mod:`k2_etl.query.paging`). Every statement lives in
:mod:`k2_etl.query.sql`, with bound parameters only. Prices and VWAP are exact decimals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import pyarrow as pa
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2_etl.errors import QueryError
from k2_etl.query import sql
from k2_etl.query.calendar import EXCHANGE_ZONE, BarCalendar, BarsBy, Interval, check_interval, cursor_floor, zone
from k2_etl.query.cursor import Position, after_params, resume
from k2_etl.query.paging import Result, check_limit, check_range, keyset
from k2_etl.query.planning import DAY, EPOCH, Chunk, Planner, micros
from k2_etl.query.runner import Runner
from k2_etl.query.tables import TableCache

PAGED_TABLES = ("trades", "quotes")
QUOTE_LOOKBACK = timedelta(days=1)  # how far before a range the prevailing quote is looked for
ORDER_COLUMNS = ("event_time", "sequence_number", "event_id")
EIGHT_PLACES = Decimal("0.00000001")
_PRICE = pa.decimal128(18, 8)
_BAR_TYPES = {
    "symbol": pa.string(),
    "bar_start": pa.timestamp("us", tz="UTC"),
    "open": _PRICE,
    "high": _PRICE,
    "low": _PRICE,
    "close": _PRICE,
    "volume": pa.decimal128(38, 8),
    "notional": pa.decimal128(38, 16),
    "trades": pa.int64(),
}
_BAR_TYPES_BY_EXCHANGE = {"symbol": pa.string(), "exchange": pa.string(), **_BAR_TYPES}
_KEY_SEPARATOR = "\x1f"  # a bar's cursor key: symbol, or symbol and exchange (neither holds it)
_SUMMARY_FIELDS = ("trades", "open", "high", "low", "close", "volume", "notional", "first_trade", "last_trade")
#: The columns of each answer that is not a table's own rows (the API's response schemas are made of them).
BAR_COLUMNS = pa.schema([*((n, t) for n, t in _BAR_TYPES.items() if n != "notional"), ("vwap", pa.decimal128(38, 8))])
BAR_COLUMNS_BY_EXCHANGE = BAR_COLUMNS.insert(1, pa.field("exchange", pa.string()))
TRADES_WITH_QUOTES_COLUMNS = pa.schema(
    [("event_id", pa.string()), ("symbol", pa.string()), ("exchange", pa.string()),
     ("event_time", pa.timestamp("us", tz="UTC")), ("sequence_number", pa.int64()), ("price", _PRICE),
     ("size", _PRICE), ("quote_time", pa.timestamp("us", tz="UTC")), ("bid_price", _PRICE), ("bid_size", _PRICE),
     ("ask_price", _PRICE), ("ask_size", _PRICE), ("spread", pa.decimal128(19, 8)), ("mid", pa.decimal128(21, 9))]
)  # fmt: skip
SUMMARY_COLUMNS = pa.schema(
    [("symbol", pa.string()), ("date", pa.date32()), ("exchange", pa.string()), ("trades", pa.int64()),
     ("open", _PRICE), ("high", _PRICE), ("low", _PRICE), ("close", _PRICE), ("volume", pa.decimal128(38, 8)),
     ("first_trade", pa.timestamp("us", tz="UTC")), ("last_trade", pa.timestamp("us", tz="UTC")),
     ("quotes", pa.int64()), ("vwap", pa.decimal128(38, 8)), ("snapshot_id", pa.int64())]
)  # fmt: skip


class MarketQueries:
    """Thread-safe (its parts are)."""

    def __init__(
        self,
        tables: TableCache,
        planner: Planner,
        runner: Runner,
        *,
        exchange_zones: Callable[[], Mapping[str, str]],
        exchanges_of: Callable[[Sequence[str]], set[str]],
    ) -> None:
        self.tables = tables
        self.planner = planner
        self.runner = runner
        self.exchange_zones = exchange_zones  # each exchange's time zone, for bars in tz=exchange
        self.exchanges_of = exchanges_of  # the exchanges the symbols trade on

    def page(
        self,
        table_name: str,
        *,
        symbols: Sequence[str],
        start: datetime,
        end: datetime,
        exchange: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
        fields: Sequence[str] | None = None,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
    ) -> Result:
        """One page of trades or quotes in the stable order (event time, sequence, event id)."""
        if table_name not in PAGED_TABLES:
            raise QueryError("table", table_name, f"pages are of {' or '.join(PAGED_TABLES)}")
        check_range(symbols, start, end)
        check_limit(limit)
        table = self.tables.table(table_name)
        columns = [f.name for f in table.schema().fields]  # top level (column_names lists nested ones too)
        wanted = list(dict.fromkeys(fields)) if fields else columns
        unknown = [f for f in wanted if f not in columns]
        if unknown:
            raise QueryError("fields", ",".join(unknown), f"not columns of {table_name} ({', '.join(columns)})")
        after, snapshot_id, as_of, _, (start, end) = resume(cursor, snapshot_id, as_of, (start, end))
        table, snapshot = self.tables.pinned(table_name, snapshot_id=snapshot_id, as_of=as_of)
        selected = list(dict.fromkeys([*wanted, *ORDER_COLUMNS]))
        columns_text, placeholders = sql.column_list(selected), sql.symbol_placeholders(len(symbols))
        fixed = {**sql.symbol_values(list(symbols)), "exchange": exchange}

        def step(chunk: Chunk, position: Position, remaining: int) -> tuple[str, dict[str, Any]]:
            relation, source = chunk.reading()
            return sql.PAGE.format(columns=columns_text, relation=relation, symbols=placeholders), {
                **fixed, **source, **chunk.range_params(), **after_params(position), "limit": remaining}  # fmt: skip

        result = keyset(
            self.runner,
            self.planner.chunks(table, snapshot, start, end, symbols),
            step,
            after,
            limit,
            _trade_position,
            snapshot,
            empty=lambda: table.schema().as_arrow().empty_table().select(selected),
            span=(start, end),
        )
        return replace(result, rows=result.rows.select(wanted))

    def bars(
        self,
        *,
        symbols: Sequence[str],
        start: datetime,
        end: datetime,
        interval: Interval,
        exchange: str | None = None,
        tz: str = "UTC",
        origin: timedelta = timedelta(0),
        by: BarsBy = "symbol",
        day: date | None = None,
        limit: int = 10_000,
        cursor: str | None = None,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
    ) -> Result:
        """OHLCV, VWAP and trade count per bar and symbol (and exchange, ``by="exchange"``; else
        the exchanges' trades together), in (bar, symbol, exchange) order; bars without trades are
        absent. Bars are cut in ``tz`` (a zone, or ``exchange``: the exchange's own) from
        ``origin`` past local midnight (:mod:`k2_etl.query.calendar`). ``day``: instead of
        ``start`` and ``end``, that calendar day in the bars' zone (a trading date, in tz=exchange)."""
        check_limit(limit)
        check_interval(interval)
        calendar = self._calendar(symbols, interval, exchange, tz, origin, by)
        if day is not None:
            start, end = calendar.day_bounds(day)
        check_range(symbols, start, end)
        after, snapshot_id, as_of, _, (start, end) = resume(cursor, snapshot_id, as_of, (start, end))
        table, snapshot = self.tables.pinned("trades", snapshot_id=snapshot_id, as_of=as_of)
        placeholders = sql.symbol_placeholders(len(symbols))
        fixed = {**sql.symbol_values(list(symbols)), "exchange": exchange}
        parts = {"symbols": placeholders, "exchange": "NULL::VARCHAR", "exchange_column": ""}
        if by == "exchange":
            parts.update(exchange="exchange", exchange_column="exchange, ")

        def step(chunk: Chunk, position: Position, remaining: int) -> tuple[str, dict[str, Any]]:
            lo = max(chunk.start, cursor_floor(calendar, position.time))  # whole bars: from the cursor's bar on
            relation, source = chunk.reading()
            after_symbol, _, after_exchange = position.key.partition(_KEY_SEPARATOR)
            return sql.BARS.format(relation=relation, **parts, **calendar.sql(lo, chunk.end)), {
                **fixed, **source, **calendar.params(lo, chunk.end), "start": lo, "end": chunk.end,
                "limit": remaining, "after_us": micros(position.time),
                "after_symbol": after_symbol, "after_exchange": after_exchange}  # fmt: skip

        columns = _BAR_TYPES if by == "symbol" else _BAR_TYPES_BY_EXCHANGE
        result = keyset(
            self.runner,
            calendar.chunks(self.planner.chunks(table, snapshot, start, end, symbols)),
            step,
            after,
            limit,
            _bar_position,
            snapshot,
            empty=lambda: pa.table({name: pa.array([], t) for name, t in columns.items()}),
            shape=_bar_shape,
            span=(start, end),
        )
        return replace(result, rows=_with_vwap(result.rows))

    def _calendar(
        self, symbols: Sequence[str], interval: Interval, exchange: str | None, tz: str, origin: timedelta, by: str
    ) -> BarCalendar:
        """The bars' calendar with ``tz=exchange`` resolved: to one zone when the bars are of one
        (the exchange asked for, or every exchange of consolidated bars), else to each exchange's."""
        if tz != EXCHANGE_ZONE:
            zone(tz)
            return BarCalendar(interval, tz, origin)
        known = self.exchange_zones()
        exchanges = [exchange] if exchange else sorted(self.exchanges_of(symbols))
        unknown = [e for e in exchanges if e not in known]
        if unknown:
            raise QueryError("tz", tz, f"no time zone is known for exchange {', '.join(unknown)} (the "
                                       "formats' exchange_timezones or timezone); give a zone, e.g. "
                                       "tz=Australia/Sydney")  # fmt: skip
        zones = {e: known[e] for e in exchanges}
        if len(set(zones.values())) <= 1:
            return BarCalendar(interval, next(iter(zones.values()), "UTC"), origin)
        if by == "symbol":
            trading = ", ".join(f"{e} ({z})" for e, z in zones.items())
            raise QueryError("tz", tz, f"the symbols trade in more than one time zone: {trading}; give exchange=, "
                                       "by=exchange or a zone")  # fmt: skip
        return BarCalendar(interval, EXCHANGE_ZONE, origin, zones)

    def trades_with_quotes(
        self,
        *,
        symbols: Sequence[str],
        start: datetime,
        end: datetime,
        exchange: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
        lookback: timedelta = QUOTE_LOOKBACK,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
    ) -> Result:
        """Trades with the quote prevailing at each one's time (an as-of join per symbol and
        exchange), its spread and mid, in the trades' stable order; the quote columns are null
        when no quote came within ``lookback``.

        ``snapshot_id`` is of the trades table; the quotes are read as of that snapshot's time. A
        cursor pins both snapshots, so every page joins the same quotes.
        """
        check_range(symbols, start, end)
        check_limit(limit)
        after, snapshot_id, as_of, quote_snapshot_id, (start, end) = resume(cursor, snapshot_id, as_of, (start, end))
        trades, trade_snapshot = self.tables.pinned("trades", snapshot_id=snapshot_id, as_of=as_of)
        if quote_snapshot_id is not None:
            quotes, quote_snapshot = self.tables.pinned("quotes", snapshot_id=quote_snapshot_id)
        else:
            quotes = self.tables.table("quotes")
            quote_snapshot = self._quotes_beside(quotes, trade_snapshot, snapshot_id is not None or as_of is not None)
        fixed = {**sql.symbol_values(list(symbols)), "exchange": exchange}
        placeholders = sql.symbol_placeholders(len(symbols))

        def step(chunk: Chunk, position: Position, remaining: int) -> tuple[str, dict[str, Any]]:
            trades_relation, params = chunk.reading()
            params.update(fixed, **chunk.range_params(), **after_params(position), limit=remaining,
                          quotes_start=chunk.start - lookback)  # fmt: skip
            quotes_relation = sql.NO_QUOTES
            if quote_snapshot is not None:
                plan = self.planner.files(quotes, quote_snapshot, chunk.start - lookback, chunk.end, symbols)
                if plan.files:
                    quotes_relation, source = plan.reading(prefix="quote_")
                    params.update(source)
            statement = sql.TRADES_WITH_QUOTES.format(trades=trades_relation, quotes=quotes_relation,
                                                      symbols=placeholders)  # fmt: skip
            return statement, params

        return keyset(
            self.runner,
            self.planner.chunks(trades, trade_snapshot, start, end, symbols),
            step,
            after,
            limit,
            _trade_position,
            trade_snapshot,
            empty=TRADES_WITH_QUOTES_COLUMNS.empty_table,
            related=quote_snapshot.snapshot_id if quote_snapshot is not None else None,
            span=(start, end),
        )

    def summary(
        self,
        symbol: str,
        day: date,
        *,
        exchange: str | None = None,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
    ) -> dict[str, Any]:
        """One symbol's trading day: open, high, low, close, volume, VWAP, trade and quote counts.

        The day is the trading date the loader set from the exchange's time zone (an ASX day
        starts the evening before in UTC), so the files of the UTC days around it are read.
        """
        check_range([symbol], EPOCH, EPOCH + DAY)
        start = datetime.combine(day, datetime.min.time(), UTC) - DAY
        end = start + 3 * DAY  # every zone's trading day lies within the UTC day before .. after
        deadline = self.runner.deadline()
        params = {"symbol": symbol, "exchange": exchange, "start": start, "end": end, "date": day}
        trades, trade_snapshot = self.tables.pinned("trades", snapshot_id=snapshot_id, as_of=as_of)
        row: dict[str, Any] = dict.fromkeys(_SUMMARY_FIELDS)
        row["trades"] = 0
        plan = self.planner.files(trades, trade_snapshot, start, end, [symbol]) if trade_snapshot else None
        if plan is not None and plan.files:
            relation, source = plan.reading()
            statement = sql.SUMMARY.format(relation=relation)
            row.update(self.runner.run(statement, {**params, **source}, deadline).to_pylist()[0])
        quotes = self.tables.table("quotes")
        quote_snapshot = self._quotes_beside(quotes, trade_snapshot, snapshot_id is not None or as_of is not None)
        row["quotes"] = 0
        plan = self.planner.files(quotes, quote_snapshot, start, end, [symbol]) if quote_snapshot else None
        if plan is not None and plan.files:
            relation, source = plan.reading()
            statement = sql.SUMMARY_QUOTES.format(relation=relation)
            row["quotes"] = self.runner.run(statement, {**params, **source}, deadline).column(0)[0].as_py()
        notional = row.pop("notional")
        with localcontext(prec=80):
            row["vwap"] = (notional / row["volume"]).quantize(EIGHT_PLACES) if row["volume"] else None
        snapshot = {"snapshot_id": trade_snapshot.snapshot_id if trade_snapshot else None}
        return {"symbol": symbol, "date": day, "exchange": exchange, **row, **snapshot}

    def _quotes_beside(self, quotes: Table, trade_snapshot: Snapshot | None, travelling: bool) -> Snapshot | None:
        """The snapshot of ``quotes`` read with a trades snapshot: current, or as of its time when
        travelling. Of the very table object the caller plans with (the refresher may swap the
        cached one meanwhile, whose metadata would not match the snapshot)."""
        if not travelling:
            return quotes.current_snapshot()
        if trade_snapshot is None:
            return None
        return self.tables.snapshot(quotes, as_of=datetime.fromtimestamp(trade_snapshot.timestamp_ms / 1000, UTC))


def _trade_position(row: dict[str, Any]) -> Position:
    sequence = row["sequence_number"]
    return Position(row["event_time"], -1 if sequence is None else sequence, row["event_id"])


def _bar_position(row: dict[str, Any]) -> Position:
    return Position(row["bar_start"], 0, _KEY_SEPARATOR.join(filter(None, (row["symbol"], row.get("exchange")))))


def _with_vwap(bars: pa.Table) -> pa.Table:
    """VWAP = notional / volume, exact to 8 places (Decimal division, half-even)."""
    with localcontext(prec=80):  # the quotient to 80 digits, so the rounding to 8 places is the only one
        vwap = [
            (n / v).quantize(EIGHT_PLACES) if v else None
            for n, v in zip(bars.column("notional").to_pylist(), bars.column("volume").to_pylist(), strict=True)
        ]
    return bars.drop_columns(["notional"]).append_column("vwap", pa.array(vwap, pa.decimal128(38, 8)))


def _bar_shape(rows: pa.Table) -> pa.Table:
    start_col = rows.column("bar_start").cast(pa.timestamp("us", tz="UTC"))  # DuckDB gives naive UTC
    return rows.set_column(rows.schema.get_field_index("bar_start"), "bar_start", start_col)
