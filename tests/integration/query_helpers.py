"""Data landed by the real pipeline for the query engine and API tests (k2 load -> broker -> k2 consume
-> Iceberg), and plain-Python views of it to check answers against."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.progress import landed_offsets, pending_offsets, wanted_offsets
from k2_etl.query.engine import QueryEngine, Result
from k2_etl.stream.consumer import Counts, StreamConsumer
from tests.helpers import REPO, initialized, poll
from tests.integration.ingest_helpers import load, messages_of

SAMPLE = REPO / "data" / "sample" / "k2"


def land(settings: Settings, *folders: Path, timeout: float = 120) -> int:
    """Load each of ``folders`` and run a consumer in this process until every record they produced
    has landed (or was a duplicate); fails after ``timeout`` seconds rather than hanging."""
    want = 0
    for folder in folders:
        report = load(settings, str(folder), "--format", "k2", expect_rc=None)  # 1 when a row is rejected
        want += sum(
            len(messages_of(settings, report, t)) for t in ("trades", "quotes", "reference_data", "dead_letters")
        )
    consumer = StreamConsumer(settings)

    def enough(counts: Counts) -> None:
        if counts.landed + counts.deduplicated >= want:
            consumer.stop()

    timer = threading.Timer(timeout, consumer.stop)
    timer.start()
    try:
        counts = consumer.run(on_commit=enough)
    finally:
        timer.cancel()
    assert counts.landed + counts.deduplicated >= want, f"landed {counts} of {want} in {timeout} s"
    return want


def streaming_platform(platform_settings: Settings, folder: Path, **overrides: Any) -> Settings:
    """Settings of a fresh catalog (``folder``/home), landing folder (``folder``/landing) and topics
    on the shared broker and registry, with the short group timeouts the local broker needs; its
    topics, tables and schemas made."""
    settings = load_settings(
        home=folder / "home",
        landing=folder / "landing",
        kafka_bootstrap=platform_settings.kafka_bootstrap,
        schema_registry_url=platform_settings.schema_registry_url,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        stream_session_timeout_seconds=6,
        stream_max_poll_interval_seconds=7,
        stream_metrics_port=0,
        **overrides,
    )
    return initialized(settings)


def land_sample(platform_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of a fresh catalog and topics holding the committed sample, landed, and one rejected row."""
    settings = streaming_platform(platform_settings, tmp_path_factory.mktemp("query"))
    bad = tmp_path_factory.mktemp("bad") / "2026-11-02"
    bad.mkdir()
    (bad / "trades_XXX.csv").write_text(
        (SAMPLE / "2026-11-02" / "trades_ASX.csv").read_text().splitlines()[0]
        + "\n2026-11-02T01:00:00Z,BADP,ASX,not-a-price,10,AUD,1,,\n"
    )
    land(settings, SAMPLE, bad.parent)  # one consumer for both: it joins its group once
    return settings


def tables_copied(settings: Settings, home: Path) -> Settings:
    """Settings of a catalog of its own (in ``home``) whose tables start where ``settings``' tables
    are now: each registered from its current metadata file, the data files shared. A commit to a
    copy writes new files and moves only the copy's pointer (Iceberg never changes a file it wrote),
    so a test may change its copy (delete rows, say) and the shared tables stay as they were."""
    copy = load_settings(home=home, namespace=settings.namespace)
    source, target = open_catalog(settings), open_catalog(copy)
    target.create_namespace(copy.namespace)
    for _, name in source.list_tables(settings.namespace):
        target.register_table((copy.namespace, name), source.load_table((settings.namespace, name)).metadata_location)
    return copy


def trades_of(settings: Settings, symbol: str, snapshot_id: int | None = None) -> list[dict[str, Any]]:
    """The symbol's trades as pyiceberg reads them, in the stable order, by plain Python."""
    return of_symbol(settings, "trades", symbol, snapshot_id)


def of_symbol(settings: Settings, name: str, symbol: str, snapshot_id: int | None = None) -> list[dict[str, Any]]:
    """The symbol's trades or quotes as pyiceberg reads them, in the stable order."""
    table = open_catalog(settings).load_table((settings.namespace, name))
    rows = [r for r in table.scan(snapshot_id=snapshot_id).to_arrow().to_pylist() if r["symbol"] == symbol]
    return sorted(rows, key=stable_order)


def stable_order(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["event_time"], -1 if row["sequence_number"] is None else row["sequence_number"], row["event_id"]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def bars_of(trades: list[dict[str, Any]], width: timedelta) -> list[dict[str, Any]]:
    """OHLCV, VWAP and trade count per bar of ``trades`` (one symbol, in the stable order)."""
    by_bar: dict[datetime, list[dict[str, Any]]] = {}
    for r in trades:
        by_bar.setdefault(EPOCH + (r["event_time"] - EPOCH) // width * width, []).append(r)
    bars = []
    for start, rows in sorted(by_bar.items()):
        volume = sum((r["size"] for r in rows), Decimal(0))
        notional = sum((r["price"] * r["size"] for r in rows), Decimal(0))
        bars.append({"bar_start": start, "open": rows[0]["price"], "high": max(r["price"] for r in rows),
                     "low": min(r["price"] for r in rows), "close": rows[-1]["price"], "volume": volume,
                     "trades": len(rows), "vwap": (notional / volume).quantize(Decimal("0.00000001"))})  # fmt: skip
    return bars


def check_prevailing_quotes(
    joined: list[dict[str, Any]], trades: list[dict[str, Any]], quotes: list[dict[str, Any]]
) -> int:
    """Assert each joined trade carries the quote prevailing at its time (the last of its exchange at
    or before it, by (time, sequence, id)) with its spread and mid; returns how many had a quote."""
    assert [j["event_id"] for j in joined] == [t["event_id"] for t in trades]
    with_quote = 0
    for row, trade in zip(joined, trades, strict=True):
        before = [q for q in quotes if q["exchange"] == trade["exchange"] and q["event_time"] <= trade["event_time"]]
        if not before:
            assert row["quote_time"] is None and row["bid_price"] is None and row["mid"] is None
            continue
        with_quote += 1
        quote = before[-1]
        sides = ("bid_price", "ask_price", "bid_size", "ask_size")
        assert row["quote_time"] == quote["event_time"]
        assert [row[k] for k in sides] == [quote[k] for k in sides]
        if quote["bid_price"] is not None and quote["ask_price"] is not None:
            assert row["spread"] == quote["ask_price"] - quote["bid_price"]
            assert row["mid"] == (quote["bid_price"] + quote["ask_price"]) / 2
        else:
            assert row["spread"] is None and row["mid"] is None  # one-sided: no spread, no mid
    return with_quote


def a_symbol(settings: Settings) -> str:
    """A symbol of the committed sample (the one its ASX trades file starts with)."""
    return first_symbol(SAMPLE / "2026-11-02")


def first_symbol(day: Path) -> str:
    """The symbol the ASX trades file of a day folder (k2 format) starts with."""
    return (day / "trades_ASX.csv").read_text().splitlines()[1].split(",")[1]


def rows_of(settings: Settings, name: str) -> list[dict[str, Any]]:
    return open_catalog(settings).load_table((settings.namespace, name)).scan().to_arrow().to_pylist()


def walk(query: Any, **arguments: Any) -> tuple[list[dict[str, Any]], int]:
    """Every row of a paged query, following cursors; and how many pages it took."""
    seen: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        result: Result = query(**arguments, cursor=cursor)
        seen.extend(result.rows.to_pylist())
        pages += 1
        if result.cursor is None:
            return seen, pages
        cursor = result.cursor


def land_everything(settings: Settings, files: list[dict]) -> None:
    """Run the real consumer until the tables record every offset the files produced."""
    wanted = wanted_offsets(f["offsets"] for f in files)
    consumer = StreamConsumer(settings)
    runner = threading.Thread(target=consumer.run)
    runner.start()
    try:
        poll(lambda: not pending_offsets(wanted, landed_offsets(settings, wanted)), timeout=120, what="the load landed")
    finally:
        consumer.stop()
        runner.join(timeout=60)


class SlowClock:
    """The engine's budget clock, made to jump past any budget once a query has run: a slow query."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def slow_engine(settings: Settings) -> QueryEngine:
    """An engine each of whose queries "takes" a minute of a 5 s budget."""
    clock = SlowClock()
    engine = QueryEngine(settings, clock=clock, budget_seconds=5)
    run = engine.runner.run

    def run_slowly(*args: Any, **kwargs: Any) -> Any:
        result = run(*args, **kwargs)
        clock.now += 60  # this query "took" a minute
        return result

    engine.runner.run = run_slowly  # type: ignore[method-assign]
    return engine
