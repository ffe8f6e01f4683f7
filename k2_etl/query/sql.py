"""Every SQL statement K2's queries run, in one place.

DuckDB runs them over the Parquet files K2 planned for a snapshot
(``read_parquet($files)``): the fastest of the options measured on this
machine (bench/results/api.json: 20 ms for a symbol-day page against 27 ms
through the iceberg extension). A snapshot with delete files is read through
the iceberg extension instead (:func:`relation`). Keeping the statements
here, each taking only bound parameters, is what lets another engine (Trino's
Iceberg connector on the same catalog) replace DuckDB later: the relation is
the only engine-specific part.

User input never becomes SQL text: values are ``$parameters``; the only text
substituted is the column list, chosen from the table's own schema, and the
names of the symbol parameters (``$symbol_0, $symbol_1, ...``: an IN list of
parameters is a constant filter DuckDB pushes into the Parquet scan and checks
against row-group statistics; ``IN (SELECT unnest($list))`` is a join it is not).
"""

from __future__ import annotations

from collections.abc import Iterable


def symbol_placeholders(count: int) -> str:
    """``$symbol_0, ..., $symbol_<count-1>`` for an ``IN ({symbols})``; values from :func:`symbol_values`."""
    return ", ".join(f"$symbol_{i}" for i in range(count))


def symbol_values(symbols: list[str]) -> dict[str, str]:
    return {f"symbol_{i}": symbol for i, symbol in enumerate(symbols)}


def column_list(columns: Iterable[str]) -> str:
    """``"a", "b"`` for a ``SELECT {columns}``: names come from the table's schema, quoted anyway."""
    return ", ".join('"' + column.replace('"', '""') + '"' for column in columns)


def relation(scan: bool, prefix: str = "") -> str:
    """What a statement reads one table's snapshot from; ``prefix`` names the parameters of the
    second table of a join (``quote_``).

    - The planned data files (``$files``). union_by_name: files written before a column was added
      (schema evolution appends columns only) read it as null.
    - ``scan``: the snapshot has delete files (merge-on-read deletes and updates by Spark, Trino or
      Flink; K2 itself only rewrites files). DuckDB's iceberg extension reads the snapshot of the
      metadata file (``$metadata``, ``$snapshot_id``) and applies its position and equality deletes
      by sequence number, as the Iceberg spec says; K2 does not reimplement that.
    """
    if scan:
        return f"iceberg_scan(${prefix}metadata, snapshot_from_id := ${prefix}snapshot_id)"
    return f"read_parquet(${prefix}files, union_by_name := true)"


#: Trades or quotes of some symbols in [start, end), one page in the stable order
#: (event time, sequence number, event id), after the cursor's position.
PAGE = """
    SELECT {columns}
    FROM {relation}
    WHERE symbol IN ({symbols})
      AND ($exchange IS NULL OR exchange = $exchange)
      AND event_time >= $start AND event_time < $end
      AND (event_time, coalesce(sequence_number, -1), event_id) > ($after_time, $after_sequence, $after_id)
    ORDER BY event_time, coalesce(sequence_number, -1), event_id
    LIMIT $limit
"""

#: OHLCV bars per symbol (and exchange, when bars are per exchange: {exchange} is `exchange`, else
#: NULL), after the cursor's (bar, symbol, exchange), in that order; buckets without trades are
#: absent. {bar} is the start of a trade's bar in epoch microseconds, {zone} and {anchors} what it
#: needs in a time zone (:meth:`k2_etl.query.calendar.BarCalendar.sql`).
#: Notional and volume stay exact decimals: VWAP is their quotient, taken in Python with Decimal
#: (DuckDB divides decimals as doubles).
BARS = """
    WITH timed AS (
        SELECT symbol, exchange, price, size, event_time, sequence_number, event_id{zone}
        FROM {relation}
        WHERE symbol IN ({symbols})
          AND ($exchange IS NULL OR exchange = $exchange)
          AND event_time >= $start AND event_time < $end
    ),
    bars AS (
        SELECT symbol,
               {exchange} AS exchange,
               {bar} AS bar_us,
               arg_min(price, (event_time, coalesce(sequence_number, -1), event_id)) AS open,
               max(price) AS high,
               min(price) AS low,
               arg_max(price, (event_time, coalesce(sequence_number, -1), event_id)) AS close,
               sum(size::DECIMAL(38, 8)) AS volume,
               sum(price::DECIMAL(38, 8) * size::DECIMAL(38, 8)) AS notional,
               count(*) AS trades
        FROM timed{anchors}
        GROUP BY ALL
    )
    SELECT symbol, {exchange_column}make_timestamp(bar_us) AS bar_start, open, high, low, close, volume, notional,
           trades
    FROM bars
    WHERE (bar_us, symbol, coalesce(exchange, '')) > ($after_us, $after_symbol, $after_exchange)
    ORDER BY bar_us, symbol, exchange
    LIMIT $limit
"""

#: One symbol's trading day (by the trading date the loader set from the exchange's time zone;
#: rows landed without one fall back to the UTC date): OHLC, volume, notional, count, first/last.
SUMMARY = """
    SELECT count(*) AS trades,
           arg_min(price, (event_time, coalesce(sequence_number, -1), event_id)) AS open,
           max(price) AS high,
           min(price) AS low,
           arg_max(price, (event_time, coalesce(sequence_number, -1), event_id)) AS close,
           sum(size::DECIMAL(38, 8)) AS volume,
           sum(price::DECIMAL(38, 8) * size::DECIMAL(38, 8)) AS notional,
           min(event_time) AS first_trade,
           max(event_time) AS last_trade
    FROM {relation}
    WHERE symbol = $symbol AND ($exchange IS NULL OR exchange = $exchange)
      AND event_time >= $start AND event_time < $end
      AND coalesce(trading_date, CAST(event_time AS DATE)) = $date
"""

#: The quotes of one symbol's trading day (same day rule as SUMMARY).
SUMMARY_QUOTES = """
    SELECT count(*) AS quotes
    FROM {relation}
    WHERE symbol = $symbol AND ($exchange IS NULL OR exchange = $exchange)
      AND event_time >= $start AND event_time < $end
      AND coalesce(trading_date, CAST(event_time AS DATE)) = $date
"""

#: Every symbol with trades: its exchanges, trade count and first/last trade.
SYMBOLS_TRADED = """
    SELECT symbol, list(DISTINCT exchange ORDER BY exchange) AS exchanges, count(*) AS trades,
           min(event_time) AS first_trade, max(event_time) AS last_trade
    FROM {relation}
    GROUP BY symbol
"""

#: Every symbol with quotes or reference data (the symbols a query may name).
SYMBOLS_SEEN = "SELECT DISTINCT symbol FROM {relation}"

#: Every symbol's reference data, oldest validity first (for the listing: the latest wins).
REFERENCE_ALL = """
    SELECT symbol, name, isin, currency FROM {relation}
    ORDER BY valid_from NULLS FIRST, ingest_time, event_id
"""

#: A symbol's reference data, oldest validity first.
REFERENCE = """
    SELECT {columns} FROM {relation}
    WHERE symbol = $symbol
    ORDER BY valid_from NULLS FIRST, ingest_time, event_id
"""

#: Sequence anomalies in [start, end) of their record's event time, after the cursor, in
#: (event time, event id) order; symbols, exchange and kind narrow them when given.
SEQUENCE_EVENTS = """
    SELECT {columns} FROM {relation}
    WHERE event_time >= $start AND event_time < $end
      AND ($symbols IS NULL OR list_contains($symbols, symbol))
      AND ($exchange IS NULL OR exchange = $exchange)
      AND ($kind IS NULL OR kind = $kind)
      AND (event_time, event_id) > ($after_time, $after_id)
    ORDER BY event_time, event_id
    LIMIT $limit
"""

#: Rejected rows and messages (the quarantine) in [start, end) of their rejection time, after the
#: cursor, in (rejected_at, reject_id) order; stage and record type narrow them when given, and
#: $symbol to the rows whose raw line has it as a field (rows that could not be read have no
#: symbol to match; consumed messages that failed have no line).
REJECTS = """
    SELECT {columns} FROM {relation}
    WHERE rejected_at >= $start AND rejected_at < $end
      AND ($stage IS NULL OR stage = $stage)
      AND ($record_type IS NULL OR record_type = $record_type)
      AND ($symbol IS NULL OR list_contains(
            list_transform(string_split_regex(raw_line, '[,;|\t]'), f -> trim(f, '" ')), $symbol))
      AND (rejected_at, reject_id) > ($after_time, $after_id)
    ORDER BY rejected_at, reject_id
    LIMIT $limit
"""

#: Every trade of some symbols in [start, end) with the quote prevailing at its time: the last
#: quote of its symbol and exchange at or before it, by (event time, sequence number, event id);
#: a quote at the same instant as a trade counts as before it. Quotes are read from $quotes_start
#: (a lookback before start). The prevailing quote is taken whole (a one-sided quote leaves that
#: side null, not an older price). Mid and spread stay exact decimals.
TRADES_WITH_QUOTES = """
    WITH quotes AS (
        SELECT symbol, exchange, event_time, coalesce(sequence_number, -1) AS seq, event_id, 0 AS side,
               {{'quote_time': event_time, 'bid_price': bid_price, 'bid_size': bid_size,
                 'ask_price': ask_price, 'ask_size': ask_size}} AS quote
        FROM {quotes}
        WHERE symbol IN ({symbols}) AND ($exchange IS NULL OR exchange = $exchange)
          AND event_time >= $quotes_start AND event_time < $end
    ),
    trades AS (
        SELECT symbol, exchange, event_time, coalesce(sequence_number, -1) AS seq, event_id, 1 AS side,
               price, size, sequence_number
        FROM {trades}
        WHERE symbol IN ({symbols}) AND ($exchange IS NULL OR exchange = $exchange)
          AND event_time >= $start AND event_time < $end
          AND (event_time, coalesce(sequence_number, -1), event_id) > ($after_time, $after_sequence, $after_id)
    ),
    merged AS (
        SELECT *, last_value(quote IGNORE NULLS) OVER (
                   PARTITION BY symbol, exchange ORDER BY event_time, side, seq, event_id
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS prevailing
        FROM (SELECT * FROM quotes UNION ALL BY NAME SELECT * FROM trades)
    )
    SELECT event_id, symbol, exchange, event_time, sequence_number, price, size,
           prevailing.quote_time AS quote_time,
           prevailing.bid_price AS bid_price, prevailing.bid_size AS bid_size,
           prevailing.ask_price AS ask_price, prevailing.ask_size AS ask_size,
           prevailing.ask_price - prevailing.bid_price AS spread,
           (prevailing.bid_price + prevailing.ask_price) * 0.5 AS mid
    FROM merged
    WHERE side = 1
    ORDER BY event_time, seq, event_id
    LIMIT $limit
"""

#: The quotes relation when a range has no quote files: no rows, the columns the join reads.
NO_QUOTES = """(SELECT NULL::VARCHAR AS symbol, NULL::VARCHAR AS exchange, NULL::TIMESTAMPTZ AS event_time,
    NULL::BIGINT AS sequence_number, NULL::VARCHAR AS event_id, NULL::DECIMAL(18, 8) AS bid_price,
    NULL::DECIMAL(18, 8) AS bid_size, NULL::DECIMAL(18, 8) AS ask_price, NULL::DECIMAL(18, 8) AS ask_size
    WHERE false)"""
