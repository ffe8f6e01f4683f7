"""The symbols K2 knows (any trade, quote or reference row names them) and their reference data.

Why an index: the API answers 404 for a symbol nothing names, which must not cost a scan per
request. The known symbols and their listing are kept, recomputed in the background at least
every SYMBOLS_REFRESH_SECONDS when the tables moved, and on a miss at most every
SYMBOLS_RETRY_SECONDS (a new symbol is found quickly).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyiceberg.table import Table

from k2_etl.query import sql
from k2_etl.query.planning import EPOCH, Planner
from k2_etl.query.runner import Runner
from k2_etl.query.tables import TableCache

log = logging.getLogger(__name__)
SYMBOLS_REFRESH_SECONDS = 60.0  # the known symbols are recomputed at least this often...
SYMBOLS_RETRY_SECONDS = 2.0  # ...and on a miss, at most this often (a new symbol is found quickly)
SYMBOL_TABLES = ("trades", "quotes", "reference_data")  # a symbol any of them names is known
_SYMBOL_TYPES = pa.schema(
    [("symbol", pa.string()), ("exchanges", pa.list_(pa.string())), ("trades", pa.int64()),
     ("first_trade", pa.timestamp("us", tz="UTC")), ("last_trade", pa.timestamp("us", tz="UTC"))]
)  # fmt: skip
EXCHANGE_COLUMNS = pa.schema([("exchange", pa.string()), ("time_zone", pa.string()), ("symbols", pa.int64())])
SYMBOL_COLUMNS = pa.schema(
    [("symbol", pa.string()), ("name", pa.string()), ("isin", pa.string()), ("currency", pa.string()),
     ("exchanges", pa.list_(pa.string())), ("trades", pa.int64()), ("first_trade", pa.timestamp("us", tz="UTC")),
     ("last_trade", pa.timestamp("us", tz="UTC"))]
)  # fmt: skip


class SymbolIndex:
    """Thread-safe; refreshes with the tables it reads (:meth:`TableCache.follow`)."""

    def __init__(self, tables: TableCache, planner: Planner, runner: Runner) -> None:
        self.tables = tables
        self.planner = planner
        self.runner = runner
        self._lock = threading.Lock()
        self._rescan_lock = threading.Lock()
        self._symbols: tuple[float, frozenset[str], pa.Table, tuple[int | None, ...]] | None = None
        tables.follow(self.refresh_if_due)

    def symbols(self, *, refresh: bool = False) -> pa.Table:
        """Every symbol with trades (exchanges, count, first and last trade) or reference data
        (name, ISIN, currency): scanned at most every SYMBOLS_REFRESH_SECONDS."""
        return self._known(refresh=refresh)[1]

    def unknown(self, symbols: Sequence[str]) -> list[str]:
        """The symbols no trade, quote or reference row names (the API answers 404 for them)."""
        known = self._known()[0]
        missing = [s for s in symbols if s not in known]
        if missing:  # perhaps landed since the last scan: look at the catalog itself, rescan if it moved
            self.tables.refresh(SYMBOL_TABLES)
            known = self._known(refresh=True)[0]
        return [s for s in symbols if s not in known]

    def exchanges(self, symbols: Sequence[str]) -> set[str]:
        """The exchanges the symbols have trades on (as of the last scan)."""
        listing = self._known()[1]
        wanted = set(symbols)
        return {e for s, es in zip(listing["symbol"].to_pylist(), listing["exchanges"].to_pylist(), strict=True)
                if s in wanted for e in es or ()}  # fmt: skip

    def exchange_listing(self, zones: Mapping[str, str]) -> pa.Table:
        """Every exchange with trades or a declared time zone (``zones``): the zone (null: none
        declared, its days are UTC days) and how many symbols trade on it."""
        listing = self._known()[1]
        counts = Counter(e for es in listing["exchanges"].to_pylist() for e in es or ())
        names = sorted(set(counts) | set(zones))
        return pa.table({"exchange": names, "time_zone": [zones.get(n) for n in names],
                         "symbols": [counts.get(n, 0) for n in names]}, schema=EXCHANGE_COLUMNS)  # fmt: skip

    def reference(self, symbol: str) -> pa.Table:
        table = self.tables.table("reference_data")
        snapshot = table.current_snapshot()
        columns = [f.name for f in table.schema().fields]
        if snapshot is None:
            return table.schema().as_arrow().empty_table()
        plan = self.planner.files(
            table, snapshot, EPOCH, datetime.max.replace(tzinfo=UTC), [symbol], time_column="ingest_time"
        )
        if not plan.files:
            return table.schema().as_arrow().empty_table()
        relation, source = plan.reading()
        statement = sql.REFERENCE.format(columns=sql.column_list(columns), relation=relation)
        return self.runner.run(statement, {**source, "symbol": symbol})

    def refresh_if_due(self) -> None:
        """Rescan when the listing is SYMBOLS_REFRESH_SECONDS old (the refresher's round)."""
        with self._lock:
            symbols = self._symbols
        if symbols is not None and time.monotonic() - symbols[0] >= SYMBOLS_REFRESH_SECONDS:
            try:
                self._known(refresh=True)
            except Exception:
                log.warning("could not refresh the known symbols", exc_info=True)

    def _known(self, *, refresh: bool = False) -> tuple[frozenset[str], pa.Table]:
        """The known symbols and the listing; a rescan runs one at a time (concurrent misses wait
        for it and find it done), only when the tables moved, at most every few seconds."""
        with self._lock:
            cached = self._symbols
        if cached is not None and not refresh:
            return cached[1], cached[2]
        with self._rescan_lock:
            return self._rescan_if_due(refresh)

    def _rescan_if_due(self, refresh: bool) -> tuple[frozenset[str], pa.Table]:
        with self._lock:
            cached = self._symbols
        snapshots = tuple(_snapshot_id(self.tables.table(name)) for name in SYMBOL_TABLES)
        if cached is not None:
            age = time.monotonic() - cached[0]
            if not refresh or cached[3] == snapshots or age < SYMBOLS_RETRY_SECONDS:
                return cached[1], cached[2]  # unchanged tables; a miss rescans at most every few seconds
        traded = _SYMBOL_TYPES.empty_table()
        seen: set[str] = set()
        for name in SYMBOL_TABLES:
            table = self.tables.table(name)
            snapshot = table.current_snapshot()
            if snapshot is None:
                continue
            relation, source = self.planner.whole(table, snapshot)
            if not source:
                continue
            if name == "trades":
                traded = self.runner.run(sql.SYMBOLS_TRADED.format(relation=relation), source)
                seen.update(traded.column("symbol").to_pylist())
            else:
                found = self.runner.run(sql.SYMBOLS_SEEN.format(relation=relation), source)
                seen.update(found.column("symbol").to_pylist())
        listing = self._symbol_listing(traded, seen)
        with self._lock:
            self._symbols = (time.monotonic(), frozenset(seen), listing, snapshots)
        return self._symbols[1], listing

    def _symbol_listing(self, traded: pa.Table, seen: set[str]) -> pa.Table:
        reference: dict[str, dict[str, Any]] = {}
        table = self.tables.table("reference_data")
        snapshot = table.current_snapshot()
        if snapshot is not None:
            relation, source = self.planner.whole(table, snapshot)
            if source:
                for row in self.runner.run(sql.REFERENCE_ALL.format(relation=relation), source).to_pylist():
                    reference[row["symbol"]] = row  # the latest validity wins
        by_symbol = {row["symbol"]: row for row in traded.to_pylist()}
        rows = []
        for symbol in sorted(seen):
            ref = reference.get(symbol, {})
            trade = by_symbol.get(symbol, {})
            rows.append({"symbol": symbol, "name": ref.get("name"), "isin": ref.get("isin"),
                         "currency": ref.get("currency"), "exchanges": trade.get("exchanges") or [],
                         "trades": trade.get("trades", 0), "first_trade": trade.get("first_trade"),
                         "last_trade": trade.get("last_trade")})  # fmt: skip
        return pa.Table.from_pylist(rows, SYMBOL_COLUMNS)


def _snapshot_id(table: Table) -> int | None:
    snapshot = table.current_snapshot()
    return snapshot.snapshot_id if snapshot is not None else None
