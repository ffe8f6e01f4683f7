"""Queries over the Iceberg tables: pyiceberg plans a snapshot's files, DuckDB reads them.

Why this split: pyiceberg prunes by partition (the day of ``event_time``) and
by the data files' column statistics (``symbol``: files are sorted by it), so
DuckDB opens only files that can hold the answer, then skips row groups by
their own statistics. Planning is cached per (table, snapshot, days,
symbols); a table's metadata is reloaded from the catalog at most every
:data:`REFRESH_SECONDS`, which is how new snapshots (the consumer commits
about every second) become visible.

Pages use keyset pagination in a stable order (event time, sequence number,
event id) and an opaque cursor that pins the snapshot: walking the pages of
one query returns every row once, in order, also while data is being landed.
Time travel: ``snapshot_id`` or ``as_of`` (the snapshot current at that time).
Every statement lives in :mod:`k2_etl.query.sql`, with bound parameters only.
"""

from __future__ import annotations

import base64
import binascii
import json
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import duckdb
import pyarrow as pa
from pyiceberg.expressions import And, GreaterThanOrEqual, In, LessThan
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2_etl.config import Settings
from k2_etl.errors import K2Error, QueryError, QueryTimeout
from k2_etl.lake.catalog import open_catalog
from k2_etl.query import sql

REFRESH_SECONDS = 1.0  # a table's metadata is at most this old
MAX_LIMIT = 50_000
PLAN_CACHE = 256  # planned file lists kept
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BEFORE_ALL = (datetime(1, 1, 2, tzinfo=UTC), -2, "")  # sorts before every row
PAGED_TABLES = ("trades", "quotes")
QUOTE_LOOKBACK = timedelta(days=1)  # how far before a range the prevailing quote is looked for
ORDER_COLUMNS = ("event_time", "sequence_number", "event_id")


@dataclass(frozen=True)
class Page:
    rows: pa.Table
    cursor: str | None  # None: this was the last page
    snapshot_id: int | None  # the snapshot read (None: the table had none at that time)


def encode_cursor(snapshot_id: int, event_time: datetime, sequence: int | None, event_id: str) -> str:
    position = {"s": snapshot_id, "t": (event_time - EPOCH) // timedelta(microseconds=1), "q": sequence, "i": event_id}
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, tuple[datetime, int, str]]:
    """(snapshot id, position after which the next page starts); QueryError when not ours."""
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        snapshot_id, micros, sequence, event_id = position["s"], position["t"], position["q"], position["i"]
        if not (isinstance(snapshot_id, int) and isinstance(micros, int) and isinstance(event_id, str)):
            raise ValueError
        if sequence is not None and not isinstance(sequence, int):
            raise ValueError
        return snapshot_id, (EPOCH + timedelta(microseconds=micros), -1 if sequence is None else sequence, event_id)
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise QueryError("cursor", cursor, "not a cursor this service issued") from None


class QueryEngine:
    """Thread-safe; one per process (a small pool of DuckDB connections)."""

    def __init__(self, settings: Settings, *, connections: int = 4, budget_seconds: float = 10.0) -> None:
        self.settings = settings
        self.budget_seconds = budget_seconds
        self._catalog = open_catalog(settings)
        self._lock = threading.Lock()
        self._tables: dict[str, tuple[float, Table]] = {}
        self._plans: OrderedDict[tuple[Any, ...], list[str]] = OrderedDict()
        self._pool: queue.SimpleQueue[duckdb.DuckDBPyConnection] = queue.SimpleQueue()
        for _ in range(connections):
            self._pool.put(duckdb.connect(config={"threads": 2}))

    # --- tables, snapshots, files ------------------------------------------------------------------
    def table(self, name: str) -> Table:
        with self._lock:
            cached = self._tables.get(name)
            if cached is not None and time.monotonic() - cached[0] < REFRESH_SECONDS:
                return cached[1]
        table = self._catalog.load_table((self.settings.namespace, name))
        with self._lock:
            self._tables[name] = (time.monotonic(), table)
        return table

    def snapshot(
        self, table: Table, *, snapshot_id: int | None = None, as_of: datetime | None = None
    ) -> Snapshot | None:
        """The snapshot a query reads; None when the table had none (an empty answer)."""
        if snapshot_id is not None:
            found = table.snapshot_by_id(snapshot_id)
            if found is None:
                raise QueryError("snapshot_id", snapshot_id, f"no such snapshot of table {table.name()[-1]}")
            return found
        if as_of is not None:
            return table.snapshot_as_of_timestamp(int(as_of.timestamp() * 1000))
        return table.current_snapshot()

    def files(
        self, table: Table, snapshot: Snapshot, start: datetime, end: datetime, symbols: Sequence[str]
    ) -> list[str]:
        """The data files of ``snapshot`` that may hold rows of ``symbols`` in [start, end)."""
        key = (table.name(), snapshot.snapshot_id, start, end, tuple(sorted(symbols)))
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
        row_filter = And(
            And(GreaterThanOrEqual("event_time", start.isoformat()), LessThan("event_time", end.isoformat())),  # type: ignore[call-arg,arg-type]
            In("symbol", set(symbols)),  # type: ignore[call-arg,arg-type]
        )
        tasks = list(table.scan(row_filter=row_filter, snapshot_id=snapshot.snapshot_id).plan_files())
        if any(task.delete_files for task in tasks):
            raise K2Error(f"table {table.name()[-1]} has delete files, which K2's query engine does not read yet")
        paths = [_local_path(task.file.file_path) for task in tasks]
        with self._lock:
            self._plans[key] = paths
            while len(self._plans) > PLAN_CACHE:
                self._plans.popitem(last=False)
        return paths

    # --- queries -----------------------------------------------------------------------------------
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
    ) -> Page:
        """One page of trades or quotes in the stable order, and the cursor of the next."""
        if table_name not in PAGED_TABLES:
            raise QueryError("table", table_name, f"pages are of {' or '.join(PAGED_TABLES)}")
        _check_range(symbols, start, end)
        if not 1 <= limit <= MAX_LIMIT:
            raise QueryError("limit", limit, f"must be between 1 and {MAX_LIMIT:,}")
        after = BEFORE_ALL
        if cursor is not None:
            snapshot_id, after = decode_cursor(cursor)
            as_of = None
        table = self.table(table_name)
        columns = [f.name for f in table.schema().fields]  # top level (column_names lists nested ones too)
        wanted = list(fields) if fields else columns
        unknown = [f for f in wanted if f not in columns]
        if unknown:
            raise QueryError("fields", ",".join(unknown), f"not columns of {table_name} ({', '.join(columns)})")
        snapshot = self.snapshot(table, snapshot_id=snapshot_id, as_of=as_of)
        selected = list(dict.fromkeys([*wanted, *ORDER_COLUMNS]))
        files = self.files(table, snapshot, start, end, symbols) if snapshot is not None else []
        if snapshot is None or not files:
            empty = table.schema().as_arrow().empty_table().select(wanted)
            return Page(empty, None, snapshot.snapshot_id if snapshot is not None else None)
        statement = sql.PAGE.format(columns=", ".join(_quoted(c) for c in selected), relation=sql.FILES)
        params = {
            "files": files,
            "symbols": list(symbols),
            "exchange": exchange,
            "start": start,
            "end": end,
            "after_time": after[0],
            "after_sequence": after[1],
            "after_id": after[2],
            "limit": limit,
        }
        rows = self._run(statement, params)
        next_cursor = None
        if rows.num_rows == limit:
            last = rows.slice(limit - 1).to_pylist()[0]
            next_cursor = encode_cursor(
                snapshot.snapshot_id, last["event_time"], last["sequence_number"], last["event_id"]
            )
        return Page(rows.select(wanted), next_cursor, snapshot.snapshot_id)

    def bars(
        self,
        *,
        symbols: Sequence[str],
        start: datetime,
        end: datetime,
        interval: timedelta,
        exchange: str | None = None,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
    ) -> pa.Table:
        """OHLCV, VWAP and trade count per symbol and bar; bars without trades are absent."""
        _check_range(symbols, start, end)
        width = interval // timedelta(microseconds=1)
        if not timedelta(seconds=1) <= interval <= timedelta(days=1) or width % 1_000_000:
            raise QueryError("interval", interval, "must be whole seconds from 1s to 1d")
        table = self.table("trades")
        snapshot = self.snapshot(table, snapshot_id=snapshot_id, as_of=as_of)
        files = self.files(table, snapshot, start, end, symbols) if snapshot is not None else []
        if not files:
            return _with_vwap(pa.table({name: pa.array([], t) for name, t in _BAR_TYPES.items()}))
        params = {"files": files, "symbols": list(symbols), "exchange": exchange, "start": start, "end": end,
                  "width_us": width}  # fmt: skip
        rows = self._run(sql.BARS.format(relation=sql.FILES), params)
        start_col = rows.column("bar_start").cast(pa.timestamp("us", tz="UTC"))  # DuckDB gives naive UTC
        return _with_vwap(rows.set_column(rows.schema.get_field_index("bar_start"), "bar_start", start_col))

    def trades_with_quotes(
        self,
        *,
        symbols: Sequence[str],
        start: datetime,
        end: datetime,
        exchange: str | None = None,
        lookback: timedelta = QUOTE_LOOKBACK,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
    ) -> pa.Table:
        """Every trade with the quote prevailing at its time (an as-of join per symbol and exchange),
        its spread and mid; the quote columns are null when no quote came within ``lookback``.

        ``snapshot_id`` is of the trades table; the quotes are read as of that snapshot's time.
        """
        _check_range(symbols, start, end)
        trades = self.table("trades")
        trade_snapshot = self.snapshot(trades, snapshot_id=snapshot_id, as_of=as_of)
        if trade_snapshot is None:
            return _TRADES_WITH_QUOTES.empty_table()
        quotes = self.table("quotes")
        when = (
            datetime.fromtimestamp(trade_snapshot.timestamp_ms / 1000, UTC)
            if snapshot_id is not None or as_of is not None
            else None
        )
        quote_snapshot = self.snapshot(quotes, as_of=when)
        trade_files = self.files(trades, trade_snapshot, start, end, symbols)
        quote_files = self.files(quotes, quote_snapshot, start - lookback, end, symbols) if quote_snapshot else []
        if not trade_files:
            return _TRADES_WITH_QUOTES.empty_table()
        quote_relation = sql.QUOTE_FILES if quote_files else sql.NO_QUOTES
        statement = sql.TRADES_WITH_QUOTES.format(trades=sql.FILES, quotes=quote_relation)
        params = {"files": trade_files, "symbols": list(symbols), "exchange": exchange, "start": start, "end": end,
                  "quotes_start": start - lookback}  # fmt: skip
        if quote_files:
            params["quote_files"] = quote_files
        return self._run(statement, params)

    # --- running -----------------------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        conn = self._pool.get()
        try:
            yield conn
        finally:
            self._pool.put(conn)

    def _run(self, statement: str, params: dict[str, Any]) -> pa.Table:
        """Run with the time budget: past it, DuckDB is interrupted and QueryTimeout raised."""
        with self._connection() as conn:
            timer = threading.Timer(self.budget_seconds, conn.interrupt)
            timer.start()
            try:
                return conn.execute(statement, params).to_arrow_table()
            except duckdb.InterruptException:
                raise QueryTimeout(f"the query ran longer than its budget of {self.budget_seconds:g} s") from None
            finally:
                timer.cancel()


_BAR_TYPES = {
    "symbol": pa.string(),
    "bar_start": pa.timestamp("us", tz="UTC"),
    "open": pa.decimal128(18, 8),
    "high": pa.decimal128(18, 8),
    "low": pa.decimal128(18, 8),
    "close": pa.decimal128(18, 8),
    "volume": pa.decimal128(38, 8),
    "notional": pa.decimal128(38, 16),
    "trades": pa.int64(),
}
EIGHT_PLACES = Decimal("0.00000001")
_PRICE = pa.decimal128(18, 8)
_TRADES_WITH_QUOTES = pa.schema(
    [("event_id", pa.string()), ("symbol", pa.string()), ("exchange", pa.string()),
     ("event_time", pa.timestamp("us", tz="UTC")), ("sequence_number", pa.int64()), ("price", _PRICE),
     ("size", _PRICE), ("quote_time", pa.timestamp("us", tz="UTC")), ("bid_price", _PRICE), ("bid_size", _PRICE),
     ("ask_price", _PRICE), ("ask_size", _PRICE), ("spread", pa.decimal128(19, 8)), ("mid", pa.decimal128(21, 9))]
)  # fmt: skip


def _with_vwap(bars: pa.Table) -> pa.Table:
    """VWAP = notional / volume, exact to 8 places (Decimal division, half-even)."""
    with localcontext(prec=80):  # the quotient to 80 digits, so the rounding to 8 places is the only one
        vwap = [
            (n / v).quantize(EIGHT_PLACES) if v else None
            for n, v in zip(bars.column("notional").to_pylist(), bars.column("volume").to_pylist(), strict=True)
        ]
    return bars.drop_columns(["notional"]).append_column("vwap", pa.array(vwap, pa.decimal128(38, 8)))


def _check_range(symbols: Sequence[str], start: datetime, end: datetime) -> None:
    if not symbols:
        raise QueryError("symbol", "", "at least one symbol is needed")
    if start.tzinfo is None or end.tzinfo is None:
        raise QueryError("start" if start.tzinfo is None else "end", start, "needs a time zone (or Z)")
    if start >= end:
        raise QueryError("start", start.isoformat(), f"must be before end {end.isoformat()}")


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'  # names come from the table's schema, quoted anyway


def _local_path(location: str) -> str:
    if location.startswith("file://"):
        return location.removeprefix("file://")
    if "://" not in location:
        return location
    raise K2Error(f"K2's query engine reads local warehouses only for now, not {location.split('://')[0]}:// files")
