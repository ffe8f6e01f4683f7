"""Benchmark compaction: one day partition of 1,000,000 trades in 1,000 small files, as streaming
leaves it, compacted by `k2_etl.lake.maintenance.compact`; queries on that day before and after.

The partition is built like the consumer builds it: 1,000 appends of 1,000 trades each (all 20
symbols, in time order), each recording Kafka offsets. Then, in one run:
* queries before: a trades page (1,000 rows of one symbol-day) and 1-minute bars of a symbol-day
  through the query engine (plans cached: the time is DuckDB reading the files), p50/p95;
* compaction: wall time, files and bytes before and after, rows and duplicates;
* the same queries after, and the speed-up (before / after, p50).

Goals (issue 6): compaction <= 30 s, <= 4 files left, queries at least 5x faster.

    .venv/bin/python bench/maintenance_bench.py [--files 1000] [--rows-per-file 1000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa

from bench.harness import save_result
from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import append_with_offsets
from k2_etl.lake.maintenance import compact
from k2_etl.lake.tables import TABLES_BY_NAME, ensure_tables
from k2_etl.query.engine import QueryEngine

DAY = datetime(2026, 11, 2, tzinfo=UTC)
SYMBOLS = [f"S{i:02d}" for i in range(20)]
RUNS = 40


def build(settings: Settings, files: int, rows_per_file: int) -> float:
    """``files`` appends of ``rows_per_file`` trades in time order over one UTC day; seconds taken."""
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    table = catalog.load_table((settings.namespace, "trades"))
    schema = table.schema().as_arrow()
    rng = np.random.default_rng(7)
    total = files * rows_per_file
    step_us = 86_400_000_000 // total
    started = time.perf_counter()
    for f in range(files):
        n = np.arange(f * rows_per_file, (f + 1) * rows_per_file)
        at = pa.array((DAY.timestamp() * 1_000_000 + n * step_us).astype("int64")).cast(pa.timestamp("us", "UTC"))
        cents = rng.integers(1_000, 10_000, rows_per_file)
        columns: dict[str, Any] = {
            "event_id": pa.array([uuid.uuid4().hex for _ in n]),
            "symbol": pa.array([SYMBOLS[i % len(SYMBOLS)] for i in n]),
            "exchange": pa.array(["ASX"] * rows_per_file),
            "event_time": at,
            "price": pa.array([Decimal(int(c)).scaleb(-2) for c in cents], pa.decimal128(18, 8)),
            "size": pa.array(rng.integers(1, 1_000, rows_per_file), pa.int32()).cast(pa.decimal128(18, 8)),
            "currency": pa.array(["AUD"] * rows_per_file),
            "sequence_number": pa.array(n),
            "trading_date": pa.array([DAY.date()] * rows_per_file),
            "conditions": pa.array([[] for _ in n], pa.list_(pa.string())),
            "quality_flags": pa.array([[] for _ in n], pa.list_(pa.string())),
            "source": pa.array(["bench"] * rows_per_file),
            "ingest_time": at,
        }
        rows = pa.table({field.name: columns.get(field.name, pa.nulls(rows_per_file, field.type)) for field in schema})
        append_with_offsets(table, rows.cast(schema), "bench", {"t": {0: f or None}}, {"t": {0: f + 1}})
        if f % 100 == 99:
            print(f"  {f + 1} files appended ({time.perf_counter() - started:.0f} s)", flush=True)
    return time.perf_counter() - started


def query_times(settings: Settings, rows: int) -> dict[str, Any]:
    """p50/p95 of a trades page and of 1-minute bars, each for one symbol-day, RUNS times."""
    engine = QueryEngine(settings, budget_seconds=600)
    span = {"start": DAY, "end": DAY + timedelta(days=1)}
    for symbol in SYMBOLS[:3]:  # warm up: plans, OS caches
        engine.page("trades", symbols=[symbol], limit=1000, **span)
    timings: dict[str, list[float]] = {"trades_page": [], "bars_1m": []}
    for i in range(RUNS):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        began = time.perf_counter()
        page = engine.page("trades", symbols=[symbol], limit=1000, **span)
        timings["trades_page"].append(time.perf_counter() - began)
        assert page.rows.num_rows == min(1000, rows // len(SYMBOLS))
        began = time.perf_counter()
        engine.bars(symbols=[symbol], interval=timedelta(minutes=1), limit=50_000, **span)
        timings["bars_1m"].append(time.perf_counter() - began)
    return {name: {f"p{q}_ms": round(float(np.percentile(values, q)) * 1000, 2) for q in (50, 95)}
            for name, values in timings.items()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows-per-file", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="k2-bench-maintenance-"))
    try:
        settings = load_settings(home=work / "home")
        print(f"building {args.files} files x {args.rows_per_file} rows in {work}")
        build_s = build(settings, args.files, args.rows_per_file)
        before = query_times(settings, args.files * args.rows_per_file)
        print("before", before)
        table = open_catalog(settings).load_table((settings.namespace, "trades"))
        report = compact(table, TABLES_BY_NAME["trades"], min_files=5)
        print(f"compacted in {report.seconds} s: {report.files_before} -> {report.files_after} files")
        after = query_times(settings, args.files * args.rows_per_file)
        print("after", after)
        [partition] = report.partitions
        result = {
            "benchmark": "maintenance",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "dataset": {"rows": args.files * args.rows_per_file, "files": args.files, "build_s": round(build_s, 1)},
            "compaction": {
                **{k: getattr(report, k) for k in ("seconds", "files_before", "files_after", "bytes_before")},
                "bytes_after": report.bytes_after,
                "rows_before": partition.rows_before,
                "rows_after": partition.rows_after,
            },
            "queries_before": before,
            "queries_after": after,
            "speedup_p50": {name: round(before[name]["p50_ms"] / after[name]["p50_ms"], 1) for name in before},
            "goals": {"compaction_s": 30, "files_after": 4, "speedup": 5},
        }
        save_result("maintenance", result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
