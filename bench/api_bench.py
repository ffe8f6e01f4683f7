"""Benchmark the REST API: latency of `k2 api` under a real load generator (wrk), against DuckDB alone.

Dataset (built once into the work folder, then reused): 10,000,000 generated trades and
10,000,000 quotes, 20 ASX symbols x 20 trading days, landed through the real pipeline
(`k2 load` -> broker -> `k2 consume` -> Iceberg), then maintained: each day partition
rewritten as one file sorted by (symbol, event time) in row groups of ROW_GROUP_ROWS,
and the streaming snapshots expired. (An offline rewrite, done here while nothing else
writes; issue 6 brings `k2 compact`, safe beside the stream.)

In one run, for each query over a random symbol-day, at 1 and 8 concurrent connections:
* HTTP: wrk against `k2 api` (2 gunicorn workers x 4 threads), p50/p95/p99, errors;
* floor: the very statements the engine ran for those requests (recorded), replayed
  directly in DuckDB on the same files, 1 and 8 threads: p50/p95/p99.
* also: the same page through DuckDB's iceberg extension (iceberg_scan), for the
  choice of reading planned files (issue 5 asks to measure both).

Goals (issue 5): trades page (1,000 rows, one symbol-day) p99 <= 50 ms; 1-minute bars for
a symbol-day p99 <= 100 ms; trades-with-quotes for a symbol-day p99 <= 300 ms; HTTP <= 1.5 x
the floor; zero errors.

    .venv/bin/python bench/api_bench.py [--work /var/tmp/k2-bench-api] [--seconds 15]
    (needs wrk: apt-get install wrk)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb
import httpx
import numpy as np
import pyarrow.compute as pc
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

from bench.harness import save_result
from k2_etl.bootstrap import init_platform
from k2_etl.config import Settings, load_settings
from k2_etl.ingest.generate import generate
from k2_etl.lake.catalog import open_catalog
from k2_etl.local.components import broker, registry
from k2_etl.local.supervisor import start, stop
from k2_etl.query.engine import QueryEngine
from k2_etl.schemas.registration import register_schemas
from k2_etl.wire.duckdb_conn import connect
from tests.helpers import env_of, free_port, run_k2

SYMBOLS, DAYS, TRADES_PER_SYMBOL_DAY = 20, 20, 25_000
FIRST_DAY = date(2026, 10, 5)  # a Monday: 20 trading days end on Friday 2026-10-30
ROW_GROUP_ROWS = 50_000
#: The goals of the module docstring, saved with the result (docs/benchmarks.md checks each against it).
GOALS = {
    "p99_ms": {"trades_page": 50, "bars_1m": 100, "trades_with_quotes": 300},
    "http_over_floor_p50": 1.5,
    "errors": 0,
}
K2 = Path(sys.executable).with_name("k2")


# --- the dataset ---------------------------------------------------------------------------------
def build(work: Path, scale: float) -> dict[str, Any]:
    """Generate, load, stream and compact the dataset into ``work`` (skipped when already built)."""
    marker = work / "built.json"
    if marker.exists():
        built: dict[str, Any] = json.loads(marker.read_text())
        if built.get("scale") == scale:
            print(f"reusing the dataset in {work}")
            return built
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    settings = load_settings(home=work / "home", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             schema_registry_url=f"http://127.0.0.1:{free_port()}", topic_partitions=4,
                             stream_metrics_port=0)  # fmt: skip
    components = [broker(settings), registry(settings)]
    for component in components:
        start(settings, component, lambda _: None)
    try:
        init_platform(settings)
        register_schemas(settings)
        started = time.perf_counter()
        generated = generate(work / "data", symbols=SYMBOLS, days=DAYS, start=FIRST_DAY, seed=5, exchanges=("ASX",),
                             trades_per_day=int(TRADES_PER_SYMBOL_DAY * scale), quotes_per_trade=1.0)  # fmt: skip
        generate_s = time.perf_counter() - started
        print(f"generated {generated.trades:,} trades, {generated.quotes:,} quotes in {generate_s:.0f} s")
        started = time.perf_counter()
        loaded = run_k2({**env_of(settings), "K2_INGEST_METRICS_PORT": "0"}, "load", str(work / "data"), "--format",
                        "k2", "--json", timeout=3600)  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        load_s = time.perf_counter() - started
        print(f"loaded in {load_s:.0f} s")
        started = time.perf_counter()
        stream_s = stream_until(settings, {"trades": generated.trades, "quotes": generated.quotes})
        print(f"streamed in {stream_s:.0f} s")
    finally:
        for component in reversed(components):
            stop(settings, component, lambda _: None)
    before = files_per_day(settings)
    started = time.perf_counter()
    compact(settings)
    compact_s = time.perf_counter() - started
    built = {"scale": scale, "trades": generated.trades, "quotes": generated.quotes, "generate_s": round(generate_s, 1),
             "load_s": round(load_s, 1), "stream_s": round(stream_s, 1), "compact_s": round(compact_s, 1),
             "files_per_day_before": before, "files_per_day_after": files_per_day(settings),
             "env": env_of(settings)}  # fmt: skip
    marker.write_text(json.dumps(built, indent=2))
    return built


def stream_until(settings: Settings, want: dict[str, int]) -> float:
    """Run `k2 consume` until the tables hold ``want`` rows; seconds taken."""
    started = time.perf_counter()
    consumer = subprocess.Popen([str(K2), "consume"], env=env_of(settings), stderr=subprocess.DEVNULL)
    catalog = open_catalog(settings)
    try:
        while True:
            counts = {}
            for name in want:
                snapshot = catalog.load_table((settings.namespace, name)).current_snapshot()
                counts[name] = int(snapshot.summary.get("total-records", 0)) if snapshot and snapshot.summary else 0
            if all(counts[n] >= want[n] for n in want):
                return time.perf_counter() - started
            assert consumer.poll() is None, "k2 consume exited"
            time.sleep(2)
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(timeout=60)


def files_per_day(settings: Settings) -> dict[str, float]:
    catalog = open_catalog(settings)
    out = {}
    for name in ("trades", "quotes"):
        files = catalog.load_table((settings.namespace, name)).inspect.files()
        out[name] = round(files.num_rows / DAYS, 1)
    return out


def compact(settings: Settings) -> None:
    """Each day partition rewritten as one file sorted by (symbol, event time), then old snapshots
    expired. Offline (nothing else writes meanwhile), with pyiceberg's overwrite of exactly that day."""
    catalog = open_catalog(settings)
    for name in ("trades", "quotes"):
        table = catalog.load_table((settings.namespace, name))
        with table.transaction() as tx:
            tx.set_properties({"write.parquet.row-group-limit": str(ROW_GROUP_ROWS)})
        table = catalog.load_table((settings.namespace, name))
        days = sorted(set(pc.cast(table.scan(selected_fields=("event_time",)).to_arrow().column("event_time"),
                                  "date32").unique().to_pylist()))  # fmt: skip
        for day in days:
            lo = datetime.combine(day, datetime.min.time(), UTC)
            day_filter = And(GreaterThanOrEqual("event_time", lo.isoformat()),
                             LessThan("event_time", (lo + timedelta(days=1)).isoformat()))  # fmt: skip
            rows = table.scan(row_filter=day_filter).to_arrow().sort_by([("symbol", "ascending"),
                                                                         ("event_time", "ascending")])  # fmt: skip
            table.overwrite(rows, overwrite_filter=day_filter)
            table = catalog.load_table((settings.namespace, name))
        current = table.current_snapshot()
        assert current is not None
        table.maintenance.expire_snapshots().older_than(datetime.now(UTC)).commit()
        print(f"compacted {name}: {len(days)} days, {len(catalog.load_table((settings.namespace, name)).snapshots())} "
              f"snapshots kept")  # fmt: skip


# --- the queries ---------------------------------------------------------------------------------
def symbol_days(settings: Settings) -> list[tuple[str, date]]:
    table = open_catalog(settings).load_table((settings.namespace, "trades"))
    symbols = sorted(set(table.scan(selected_fields=("symbol",)).to_arrow().column("symbol").unique().to_pylist()))
    days = [FIRST_DAY + timedelta(days=i) for i in range(28) if (FIRST_DAY + timedelta(days=i)).weekday() < 5]
    pairs = [(s, d) for s in symbols for d in days[:DAYS]]
    random.Random(3).shuffle(pairs)
    return pairs


def queries(pairs: list[tuple[str, date]]) -> dict[str, list[str]]:
    """Per benchmark, request paths over the symbol-days (the UTC day holding most of the ASX session)."""

    def span(day: date) -> str:
        start = datetime.combine(day, datetime.min.time(), UTC) - timedelta(hours=2)  # 22:00Z the evening before
        return f"start={start:%Y-%m-%dT%H:%M:%SZ}&end={start + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"

    return {
        "trades_page": [f"/v1/trades?symbol={s}&{span(d)}&limit=1000" for s, d in pairs],
        "bars_1m": [f"/v1/bars?symbol={s}&{span(d)}&interval=1m" for s, d in pairs],
        "trades_with_quotes": [f"/v1/trades/with-quotes?symbol={s}&{span(d)}&limit=50000" for s, d in pairs],
    }


WRK_SCRIPT = """
local paths = {%s}
local i = math.random(#paths)
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  io.write(string.format('{"requests":%%d,"duration_us":%%d,"non_2xx":%%d,"connect_errors":%%d,"read_errors":%%d,' ..
    '"write_errors":%%d,"timeouts":%%d,"p50_ms":%%.2f,"p95_ms":%%.2f,"p99_ms":%%.2f,"max_ms":%%.2f}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def wrk(url: str, paths: list[str], clients: int, seconds: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % ", ".join(json.dumps(p) for p in paths))
    command = ["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{seconds}s", "--timeout", "30s",
               "-s", script.name, url]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    os.unlink(script.name)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["requests_per_second"] = round(result["requests"] / (result.pop("duration_us") / 1e6), 1)
    result["errors"] = sum(result.pop(k) for k in ("non_2xx", "connect_errors", "read_errors", "write_errors",
                                                    "timeouts"))  # fmt: skip
    return result


class Recorder(QueryEngine):
    """The engine, keeping the statements and parameters it ran (for the floor)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, budget_seconds=60)
        self.ran: list[tuple[str, dict[str, Any]]] = []
        run = self.runner.run  # every statement of every query goes through it

        def recording(statement: str, params: dict[str, Any], deadline: float | None = None) -> Any:
            self.ran.append((statement, params))
            return run(statement, params, deadline)

        self.runner.run = recording  # type: ignore[method-assign]


def statements(settings: Settings, paths: list[str]) -> list[list[tuple[str, dict[str, Any]]]]:
    """What the engine runs for each request path (planning is not part of the floor)."""
    from api import create_app

    engine = Recorder(settings)
    client = create_app(settings, engine=engine).test_client()
    runs = []
    for path in paths:
        engine.ran = []
        response = client.get(path)
        assert response.status_code == 200, response.text
        runs.append(list(engine.ran))
    return runs


def floor(runs: list[list[tuple[str, dict[str, Any]]]], clients: int, seconds: float) -> dict[str, Any]:
    """The statements replayed in DuckDB (a connection per client, as the API's pool has), timed per request."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        conn = duckdb.connect(config={"threads": 2})
        conn.execute("SET TimeZone = 'UTC'")
        i = k
        mine = []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            for statement, params in runs[i % len(runs)]:
                conn.execute(statement, params).to_arrow_table()
            mine.append(time.perf_counter() - started)
            i += clients
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}}


def iceberg_scan_page(settings: Settings, pairs: list[tuple[str, date]], count: int) -> dict[str, Any]:
    """The trades page through DuckDB's iceberg extension (it plans from the metadata itself), against
    read_parquet over the files pyiceberg planned, sequentially, same pages."""
    table = open_catalog(settings).load_table((settings.namespace, "trades"))
    conn = connect(extensions=True)
    engine = QueryEngine(settings)
    timings: dict[str, list[float]] = {"iceberg_scan": [], "planned_files": []}
    for symbol, day in pairs[:count]:
        start = datetime.combine(day, datetime.min.time(), UTC) - timedelta(hours=2)
        end = start + timedelta(days=1)
        began = time.perf_counter()
        conn.execute(
            "SELECT * FROM iceberg_scan($meta) WHERE symbol = $s AND event_time >= $a AND event_time < $b "
            "ORDER BY event_time, coalesce(sequence_number, -1), event_id LIMIT 1000",
            {"meta": table.metadata_location, "s": symbol, "a": start, "b": end},
        ).to_arrow_table()
        timings["iceberg_scan"].append(time.perf_counter() - began)
        began = time.perf_counter()
        engine.page("trades", symbols=[symbol], start=start, end=end, limit=1000)  # planning included
        timings["planned_files"].append(time.perf_counter() - began)
    return {k: {"p50_ms": round(float(np.percentile(v, 50)) * 1000, 2),
                "p99_ms": round(float(np.percentile(v, 99)) * 1000, 2)} for k, v in timings.items()}  # fmt: skip


# --- the run -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/k2-bench-api"))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 10M+10M rows (for a quick try)")
    parser.add_argument("--seconds", type=int, default=15, help="per load-generator run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/api_bench.py needs wrk: apt-get install wrk")
    built = build(args.work, args.scale)
    settings = load_settings(home=args.work / "home", kafka_bootstrap="127.0.0.1:9", stream_metrics_port=0)
    pairs = symbol_days(settings)
    paths = queries(pairs)
    port = free_port()
    env = {
        **built["env"],
        "K2_API_PORT": str(port),
        "K2_API_RATE_LIMIT": "1000000/second",
        "K2_STREAM_METRICS_PORT": "0",
    }
    api = subprocess.Popen([str(K2), "api"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {"benchmark": "api", "when": datetime.now(UTC).isoformat(timespec="seconds"),
                              "dataset": {k: v for k, v in built.items() if k != "env"},
                              "server": "k2 api: gunicorn 2 workers x 4 threads (gthread)", "queries": {}}  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and api.poll() is None, "k2 api did not start"
            time.sleep(0.2)
        for name, urls in paths.items():
            wrk(url, urls[:40], 2, 3)  # warm up: connections, plans, OS caches
            runs = statements(settings, urls[:100])
            entry: dict[str, Any] = {}
            for clients in (1, 8):
                http = wrk(url, urls, clients, args.seconds)
                base = floor(runs, clients, args.seconds)
                ratios = {f"http_over_floor_p{q}": round(http[f"p{q}_ms"] / base[f"p{q}_ms"], 2) for q in (50, 99)}
                entry[f"clients_{clients}"] = {"http": http, "duckdb_floor": base, **ratios}
                print(name, clients, json.dumps(entry[f"clients_{clients}"]))
            result["queries"][name] = entry
        result["read_path_choice"] = iceberg_scan_page(settings, pairs, 60)
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)
    save_result("api", {**result, "goals": GOALS})


if __name__ == "__main__":
    main()
