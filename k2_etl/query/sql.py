"""Every SQL statement K2's queries run, in one place.

DuckDB runs them over the Parquet files pyiceberg planned for a snapshot
(``read_parquet($files)``): the fastest of the options measured on this
machine (PLATFORM-NOTES: 25 ms for a symbol-day page against 42 ms through
the iceberg extension). Keeping the statements here, each taking only bound
parameters, is what lets another engine (Trino's Iceberg connector on the
same catalog) replace DuckDB later: the relation is the only engine-specific
part.

User input never becomes SQL text: values are ``$parameters``; the only text
substituted is the column list, chosen from the table's own schema.
"""

from __future__ import annotations

# The relation of a table's planned files. union_by_name: files written before a column was
# added (schema evolution appends columns only) read it as null.
FILES = "read_parquet($files, union_by_name := true)"

#: Trades or quotes of some symbols in [start, end), one page in the stable order
#: (event time, sequence number, event id), after the cursor's position.
PAGE = """
    SELECT {columns}
    FROM {relation}
    WHERE symbol IN (SELECT unnest($symbols))
      AND ($exchange IS NULL OR exchange = $exchange)
      AND event_time >= $start AND event_time < $end
      AND (event_time, coalesce(sequence_number, -1), event_id) > ($after_time, $after_sequence, $after_id)
    ORDER BY event_time, coalesce(sequence_number, -1), event_id
    LIMIT $limit
"""

#: OHLCV bars of fixed width ($width_us microseconds, aligned to the epoch) per symbol; buckets
#: without trades are absent. Notional and volume stay exact decimals: VWAP is their quotient,
#: taken in Python with Decimal (DuckDB divides decimals as doubles).
BARS = """
    SELECT symbol,
           make_timestamp((epoch_us(event_time) // $width_us) * $width_us) AS bar_start,
           arg_min(price, (event_time, coalesce(sequence_number, -1), event_id)) AS open,
           max(price) AS high,
           min(price) AS low,
           arg_max(price, (event_time, coalesce(sequence_number, -1), event_id)) AS close,
           sum(size::DECIMAL(38, 8)) AS volume,
           sum(price::DECIMAL(38, 8) * size::DECIMAL(38, 8)) AS notional,
           count(*) AS trades
    FROM {relation}
    WHERE symbol IN (SELECT unnest($symbols))
      AND ($exchange IS NULL OR exchange = $exchange)
      AND event_time >= $start AND event_time < $end
    GROUP BY ALL
    ORDER BY symbol, bar_start
"""
