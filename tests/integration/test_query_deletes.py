"""Tables with delete files (merge-on-read deletes by Spark, Trino or Flink): every query answers
without the deleted rows, checked against plain Python on the rows landed before minus those deleted;
a snapshot before the deletes still answers with them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
import pytest
from pyiceberg.expressions import EqualTo
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from k2_etl.config import Settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.query.engine import QueryEngine
from tests.integration.iceberg_deletes import commit_deletes, equality_deletes, position_deletes
from tests.integration.query_helpers import a_symbol, bars_of, check_prevailing_quotes, of_symbol, tables_copied, walk

DAY_START = datetime(2026, 11, 1, tzinfo=UTC)
DAY_END = datetime(2026, 11, 4, tzinfo=UTC)


@dataclass
class Deleted:
    settings: Settings
    symbol: str
    trades_before: list[dict[str, Any]]
    trades: list[dict[str, Any]]  # what remains
    quotes: list[dict[str, Any]]
    snapshot_before: int
    position_deleted: set[str]
    equality_deleted: set[str]


def _busiest_file(table: Table, symbol: str) -> tuple[DataFile, list[dict[str, Any]]]:
    """The data file holding most of ``symbol``'s rows, and its rows in file order."""
    best: tuple[DataFile, list[dict[str, Any]]] | None = None
    for task in table.scan(row_filter=EqualTo("symbol", symbol)).plan_files():
        with table.io.new_input(task.file.file_path).open() as f:
            rows = pq.read_table(f).to_pylist()
        if best is None or sum(r["symbol"] == symbol for r in rows) > sum(r["symbol"] == symbol for r in best[1]):
            best = (task.file, rows)
    assert best is not None
    return best


@pytest.fixture(scope="module")
def deleted(landed: Settings, tmp_path_factory: pytest.TempPathFactory) -> Deleted:
    """The sample landed (a copy of the shared tables); then, as another engine would, every third of
    one symbol's trades in its busiest file deleted by position, five more of its trades by equality
    on event_id, and every other of its quotes in their busiest file by position."""
    settings = tables_copied(landed, tmp_path_factory.mktemp("deletes"))
    symbol = a_symbol(settings)
    catalog = open_catalog(settings)
    trades = catalog.load_table((settings.namespace, "trades"))
    snapshot_before = trades.current_snapshot()
    assert snapshot_before is not None
    trades_before = of_symbol(settings, "trades", symbol)

    data_file, rows = _busiest_file(trades, symbol)
    positions = [i for i, r in enumerate(rows) if r["symbol"] == symbol][::3]
    position_deleted = {rows[i]["event_id"] for i in positions}
    day = rows[positions[0]]["event_time"].date()  # equality deletes apply within their partition
    others = [r["event_id"] for r in trades_before
              if r["event_time"].date() == day and r["event_id"] not in position_deleted]  # fmt: skip
    equality_deleted = set(others[1::7][:5])
    assert len(position_deleted) >= 3 and len(equality_deleted) == 5
    commit_deletes(trades, [position_deletes(trades, data_file, positions),
                            equality_deletes(trades, data_file, "event_id", sorted(equality_deleted))])  # fmt: skip

    quotes = catalog.load_table((settings.namespace, "quotes"))
    quotes_before = of_symbol(settings, "quotes", symbol)
    quote_file, quote_rows = _busiest_file(quotes, symbol)
    quote_positions = [i for i, r in enumerate(quote_rows) if r["symbol"] == symbol][::2]
    gone = {quote_rows[i]["event_id"] for i in quote_positions}
    commit_deletes(quotes, [position_deletes(quotes, quote_file, quote_positions)])

    removed = position_deleted | equality_deleted
    return Deleted(settings, symbol, trades_before, [r for r in trades_before if r["event_id"] not in removed],
                   [q for q in quotes_before if q["event_id"] not in gone], snapshot_before.snapshot_id,
                   position_deleted, equality_deleted)  # fmt: skip


def test_pages_leave_out_rows_deleted_by_position_and_by_equality(deleted: Deleted) -> None:
    engine = QueryEngine(deleted.settings)
    seen, pages = walk(engine.page, table_name="trades", symbols=[deleted.symbol], start=DAY_START, end=DAY_END,
                       limit=53)  # fmt: skip
    assert pages > 2
    assert seen == deleted.trades  # every column, exactly
    ids = {r["event_id"] for r in seen}
    assert not ids & deleted.position_deleted and not ids & deleted.equality_deleted


def test_a_snapshot_before_the_deletes_still_has_the_rows(deleted: Deleted) -> None:
    engine = QueryEngine(deleted.settings)
    past = engine.page("trades", symbols=[deleted.symbol], start=DAY_START, end=DAY_END, limit=50_000,
                       snapshot_id=deleted.snapshot_before)  # fmt: skip
    assert past.rows.to_pylist() == deleted.trades_before
    assert len(deleted.trades_before) == len(deleted.trades) + len(deleted.position_deleted) + 5


def test_bars_summary_and_symbols_count_only_what_remains(deleted: Deleted) -> None:
    engine = QueryEngine(deleted.settings)
    interval = timedelta(minutes=5)
    bars = engine.bars(symbols=[deleted.symbol], start=DAY_START, end=DAY_END, interval=interval).rows.to_pylist()
    expected = bars_of(deleted.trades, interval)
    assert [{k: bar[k] for k in expected[0]} for bar in bars] == expected
    day = date(2026, 11, 2)
    on_day = [r for r in deleted.trades if r["trading_date"] == day]
    summary = engine.summary(deleted.symbol, day)
    assert (summary["trades"], summary["volume"]) == (len(on_day), sum(r["size"] for r in on_day))
    assert summary["quotes"] == sum(q["trading_date"] == day for q in deleted.quotes)
    listing = {r["symbol"]: r for r in engine.symbols().to_pylist()}
    assert listing[deleted.symbol]["trades"] == len(deleted.trades)


def test_each_trade_gets_the_prevailing_quote_of_those_not_deleted(deleted: Deleted) -> None:
    engine = QueryEngine(deleted.settings)
    joined, _ = walk(engine.trades_with_quotes, symbols=[deleted.symbol], start=DAY_START, end=DAY_END, limit=500)
    assert check_prevailing_quotes(joined, deleted.trades, deleted.quotes) > len(deleted.trades) // 2
