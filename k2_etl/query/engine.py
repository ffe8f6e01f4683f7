"""Queries over the Iceberg tables: K2 plans a snapshot's files, DuckDB reads them.

:class:`QueryEngine` is the one entry point (the API, ``k2 query`` and the benchmarks use it,
one per process); it composes parts of one job each:

- :mod:`~k2_etl.query.tables`: the table metadata cache, its refresher thread, pinning the
  snapshot a query reads (current, ``snapshot_id``, ``as_of``);
- :mod:`~k2_etl.query.planning`: the manifest index and the pruning of data files by day
  partition and column bounds;
- :mod:`~k2_etl.query.runner`: the DuckDB connections and the time budget;
- :mod:`~k2_etl.query.cursor` and :mod:`~k2_etl.query.paging`: opaque cursors and keyset pages;
- the queries: :mod:`~k2_etl.query.market` (trades, quotes, bars, trades with quotes, a day's
  summary), :mod:`~k2_etl.query.symbols` (known symbols, reference data),
  :mod:`~k2_etl.query.audit` (sequence events, rejects, snapshots).

Callers outside the package import from here: the names below are the query package's public
face, whichever module defines them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from k2_etl.config import Settings
from k2_etl.formats import exchange_zones
from k2_etl.query.audit import SNAPSHOT_COLUMNS, AuditQueries
from k2_etl.query.market import (
    BAR_COLUMNS_BY_EXCHANGE,
    SUMMARY_COLUMNS,
    TRADES_WITH_QUOTES_COLUMNS,
    MarketQueries,
)
from k2_etl.query.paging import MAX_LIMIT, MAX_SYMBOLS, Result
from k2_etl.query.planning import Planner
from k2_etl.query.runner import Runner
from k2_etl.query.symbols import EXCHANGE_COLUMNS, SYMBOL_COLUMNS, SymbolIndex
from k2_etl.query.tables import TableCache

__all__ = [
    "BAR_COLUMNS_BY_EXCHANGE",
    "EXCHANGE_COLUMNS",
    "MAX_LIMIT",
    "MAX_SYMBOLS",
    "SNAPSHOT_COLUMNS",
    "SUMMARY_COLUMNS",
    "SYMBOL_COLUMNS",
    "TRADES_WITH_QUOTES_COLUMNS",
    "QueryEngine",
    "Result",
]


class QueryEngine:
    """Thread-safe; one per process (a small pool of DuckDB connections).

    Its query methods are those of its parts (bound at construction: no call in between), so
    their signatures and docstrings live in one place.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        connections: int = 4,
        budget_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.tables = TableCache(settings)
        self.planner = Planner()
        self.runner = Runner(settings, connections, budget_seconds, clock)
        symbols = SymbolIndex(self.tables, self.planner, self.runner)
        zones = functools.cache(lambda: exchange_zones(settings.formats_dir))  # read at the first tz=exchange
        market = MarketQueries(self.tables, self.planner, self.runner, exchange_zones=zones,
                               exchanges_of=symbols.exchanges)  # fmt: skip
        self.page = market.page
        self.bars = market.bars
        self.trades_with_quotes = market.trades_with_quotes
        self.summary = market.summary
        self.symbols = symbols.symbols
        self.unknown = symbols.unknown
        self.reference = symbols.reference
        self.exchanges = lambda: symbols.exchange_listing(zones())
        audit = AuditQueries(self.tables, self.planner, self.runner)
        self.sequence_events = audit.sequence_events
        self.rejects = audit.rejects
        self.snapshots = audit.snapshots
        self.table = self.tables.table
        self.ping = self.runner.ping
        self.catalog_check = self.tables.catalog_check
