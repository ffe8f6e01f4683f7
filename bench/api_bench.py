"""Benchmark the REST API: latency of `k2 api` under a real load generator (wrk), against DuckDB alone.

Dataset (built once into the work folder, then reused): 10,000,000 generated trades and
10,000,000 quotes, 20 ASX symbols x 20 trading days, landed through the real pipeline
(`k2 load` -> broker -> `k2 consume` -> Iceberg), then maintained: each day partition
rewritten as one file sorted by (symbol, event time) in row groups of ROW_GROUP_ROWS,
and the streaming snapshots expired. (An offline rewrite, done here while nothing else
writes; issue 6 brings `k2 compact`, safe beside the stream.)

In one run, for each query over a random symbol-day, at 1, 8 and 32 concurrent connections:
* HTTP: wrk against `k2 api` (its default settings: a worker per core, K2_API_THREADS
  requests each at once, K2_API_QUEUE waiting), p50/p95/p99, requests per second, errors,
  deliberate refusals (503 or 429 with Retry-After), and the server's CPU time per request
  (its processes' user + system time over the run);
* floor: the very statements the engine ran for those requests (recorded), replayed
  directly in DuckDB on the same files by as many threads as clients, each with its own
  connection: p50/p95/p99, requests per second, CPU time per request;
* the API workers' memory (RSS and USS) after the runs;
* also: the same page through DuckDB's iceberg extension (iceberg_scan), for the
  choice of reading planned files (issue 5 asks to measure both).

Goals (issue 18, ratios against the floor in the same run): at 8 clients HTTP p99 <= 1.5 x
and p50 <= 1.3 x the floor's, requests per second >= 0.8 x; at 1 client p50 <= 1.5 x; at 32
clients no errors but deliberate refusals, and the served requests' p99 <= 2 x the floor's.
(Issue 5's absolute goals are kept for the record.)

``--profile DIR``: py-spy samples each API worker during an extra 8-client run of each query
(not the measured one: sampling slows the workers; collapsed stacks in DIR, needs py-spy from
the dev extras), and the result keeps the share of the workers' samples in each stage of a
request. Trades with quotes is also asked as Arrow IPC (``format=arrow``), to tell the
server's cost from that of writing 10 MB of JSON per answer.

    .venv/bin/python bench/api_bench.py [--work /var/tmp/k2-bench-api] [--seconds 15] [--profile DIR]
    (needs wrk: apt-get install wrk)
"""

from __future__ import annotations

import argparse
import contextlib
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
import psutil
import pyarrow.compute as pc
from prometheus_client.parser import text_string_to_metric_families
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

from bench.harness import K2, k2_api_running, kafka_running, kafka_settings, save_result
from k2_etl.config import Settings, load_settings
from k2_etl.ingest.generate import generate
from k2_etl.lake.catalog import open_catalog
from k2_etl.query.engine import QueryEngine
from k2_etl.wire.duckdb_conn import connect
from tests.helpers import env_of, run_k2

SYMBOLS, DAYS, TRADES_PER_SYMBOL_DAY = 20, 20, 25_000
FIRST_DAY = date(2026, 10, 5)  # a Monday: 20 trading days end on Friday 2026-10-30
ROW_GROUP_ROWS = 50_000
#: The goals of the module docstring, saved with the result (docs/benchmarks.md checks each against it).
GOALS = {
    "p99_ms": {"trades_page": 50, "bars_1m": 100, "trades_with_quotes": 300},  # issue 5
    "clients_1": {"http_over_floor_p50": 1.5},
    "clients_8": {"http_over_floor_p50": 1.3, "http_over_floor_p99": 1.5, "http_over_floor_rps": 0.8},
    "clients_32": {"served_over_floor_p99": 2.0, "errors": 0},
    "errors": 0,
}
CLIENTS = (1, 8, 32)
#: The frames whose samples make each stage of a request, in a worker's profile (--profile).
STAGES = {
    "duckdb": "Runner.run",
    "json": "json_array",
    "planning": "Planner.chunks",
    "rate_limit": "Limiter._check_request_limit",
    "socket_write": "Response.write (gunicorn",
}


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
    settings = kafka_settings(work / "home", topic_partitions=4, stream_metrics_port=0)
    with kafka_running(settings):
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
        "trades_with_quotes_arrow": [
            f"/v1/trades/with-quotes?symbol={s}&{span(d)}&limit=50000&format=arrow" for s, d in pairs
        ],
    }


WRK_SCRIPT = """
local paths = {%s}
local i = math.random(#paths)
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local grid = {}
  for k = 0, 1000 do
    grid[#grid + 1] = string.format("%%.3f", latency:percentile(50 + k * 0.05) / 1000)
  end
  io.write(string.format('{"requests":%%d,"duration_us":%%d,"non_2xx":%%d,"connect_errors":%%d,"read_errors":%%d,' ..
    '"write_errors":%%d,"timeouts":%%d,"p50_ms":%%.2f,"p95_ms":%%.2f,"p99_ms":%%.2f,"max_ms":%%.2f,"grid_ms":[%%s]}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, table.concat(grid, ",")))
end
"""
#: The answers the API counts as deliberate refusals, each with Retry-After (k2_api_* counters).
REFUSALS = ("k2_api_overloaded_total", "k2_api_rate_limited_total")


def wrk(url: str, paths: list[str], clients: int, seconds: int, server: psutil.Process | None = None) -> dict[str, Any]:
    """wrk's run. With ``server`` (gunicorn's master): its CPU time per request, and the refusals
    (503 overloaded, 429) told from errors by the API's own counters, read before and after.

    (Not with wrk's ``response`` callback: it makes wrk hand every body to Lua, and that CPU on
    the same two cores cost the API about a fifth of its throughput.)"""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % ", ".join(json.dumps(p) for p in paths))
    command = ["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{seconds}s", "--timeout", "30s",
               "-s", script.name, url]  # fmt: skip
    refused_before = refusals(url) if server else 0
    cpu_before = cpu_seconds(server) if server else 0.0
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    cpu = cpu_seconds(server) - cpu_before if server else None
    refused = refusals(url) - refused_before if server else 0
    os.unlink(script.name)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    grid = result.pop("grid_ms")
    non_2xx = result.pop("non_2xx")
    seen = min(refused, non_2xx)  # the API also counts refusals of requests whose client had left (wrk ended)
    result["refused"] = seen
    result["refused_after_client_left"] = refused - seen
    result["served"] = result["requests"] - non_2xx
    result["requests_per_second"] = round(result["served"] / (result.pop("duration_us") / 1e6), 1)
    result["errors"] = (
        non_2xx - seen + sum(result.pop(k) for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    )
    # The served requests' p99: a full queue is refused before any query (about a millisecond), so
    # those refusals are the fastest answers and the served ones the top share of the distribution.
    # (A refusal after waiting K2_API_QUERY_BUDGET_SECONDS for a turn is slow instead; few, so far.)
    share = seen / max(result["requests"], 1)
    quantile = 100 * (share + 0.99 * (1 - share))
    result["served_p99_ms"] = round(grid[min(len(grid) - 1, max(0, round((quantile - 50) / 0.05)))], 2)
    if cpu is not None:
        result["cpu_ms_per_request"] = round(cpu * 1000 / max(result["requests"], 1), 2)
    return result


def refusals(url: str) -> int:
    """The API's deliberate refusals so far (every worker's, summed by its /metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return int(sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name in REFUSALS))  # fmt: skip


def cpu_seconds(master: psutil.Process) -> float:
    """User + system CPU time of gunicorn's master and its workers so far."""
    total = 0.0
    for process in [master, *master.children()]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def memory(master: psutil.Process) -> dict[str, Any]:
    """Each worker's resident (RSS) and unique (USS: what stopping it would free) memory, in MB."""
    workers = []
    for worker in master.children():
        info = worker.memory_full_info()
        workers.append({"rss_mb": round(info.rss / 2**20, 1), "uss_mb": round(info.uss / 2**20, 1)})
    return {"workers": workers, "master_rss_mb": round(master.memory_info().rss / 2**20, 1)}


def profiled(master: psutil.Process, folder: Path, name: str, seconds: int) -> list[subprocess.Popen[bytes]]:
    """py-spy sampling each worker for ``seconds`` (collapsed stacks in ``folder``)."""
    spy = Path(sys.executable).with_name("py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    spies = []
    for worker in master.children():
        command = [
            str(spy),
            "record",
            "--pid",
            str(worker.pid),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(folder / f"{name}_{worker.pid}.txt"),
        ]
        spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def stage_shares(files: list[Path]) -> dict[str, float]:
    """The share of the workers' request-serving samples (py-spy's collapsed stacks) in each of STAGES."""
    serving, counts = 0, dict.fromkeys(STAGES, 0)
    for file in files:
        for line in file.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if "handle_request" not in stack:
                continue  # an idle thread, gunicorn's loop, the table refresher
            serving += int(count)
            for stage, frame in STAGES.items():
                if frame in stack:
                    counts[stage] += int(count)
    shares = {stage: round(n / max(serving, 1), 3) for stage, n in counts.items()}
    return {**shares, "other": round(1 - sum(shares.values()), 3), "samples": serving}


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
        with client.get(path) as response:  # closed: a request holds its turn until its body is sent
            assert response.status_code == 200, response.text
        runs.append(list(engine.ran))
    return runs


def floor(runs: list[list[tuple[str, dict[str, Any]]]], clients: int, seconds: float) -> dict[str, Any]:
    """The statements replayed in DuckDB by ``clients`` threads, each with a connection (a database) of
    its own, timed per request; with the requests per second and CPU time per request (this process's)."""
    latencies: list[float] = []
    lock = threading.Lock()
    cpu, began = time.process_time(), time.perf_counter()
    stop_at = began + seconds

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
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
            "requests_per_second": round(len(latencies) / elapsed, 1),
            "cpu_ms_per_request": round(cpu * 1000 / max(len(latencies), 1), 2)}  # fmt: skip


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


def ratios(http: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    out = {f"http_over_floor_p{q}": round(http[f"p{q}_ms"] / base[f"p{q}_ms"], 2) for q in (50, 99)}
    out["served_over_floor_p99"] = round(http["served_p99_ms"] / base["p99_ms"], 2)
    out["http_over_floor_rps"] = round(http["requests_per_second"] / base["requests_per_second"], 2)
    out["http_over_floor_cpu"] = round(http["cpu_ms_per_request"] / base["cpu_ms_per_request"], 2)
    return out


# --- the run -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/k2-bench-api"))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 10M+10M rows (for a quick try)")
    parser.add_argument("--seconds", type=int, default=15, help="per load-generator run")
    parser.add_argument("--profile", type=Path, help="py-spy the workers during the 8-client runs into this folder")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/api_bench.py needs wrk: apt-get install wrk")
    built = build(args.work, args.scale)
    settings = load_settings(home=args.work / "home", kafka_bootstrap="127.0.0.1:9", stream_metrics_port=0)
    pairs = symbol_days(settings)
    paths = queries(pairs)
    env = {
        **{k: v for k, v in built["env"].items() if not k.startswith("K2_API_")},  # today's API defaults
        "K2_API_RATE_LIMIT": "1000000/second",
        "K2_STREAM_METRICS_PORT": "0",
    }
    server = load_settings()  # what `k2 api` runs with (its defaults)
    result: dict[str, Any] = {"benchmark": "api", "when": datetime.now(UTC).isoformat(timespec="seconds"),
                              "dataset": {k: v for k, v in built.items() if k != "env"},
                              "server": f"k2 api: gunicorn {server.api_workers} workers, each one DuckDB database "
                                        f"and {server.api_threads} requests at once (gthread), "
                                        f"{server.api_queue} waiting", "queries": {}}  # fmt: skip
    with k2_api_running(env) as (url, master):
        for name, urls in paths.items():
            wrk(url, urls[:40], 2, 3)  # warm up: connections, plans, OS caches
            runs = statements(settings, urls[:100])
            entry: dict[str, Any] = {}
            for clients in CLIENTS:
                http = wrk(url, urls, clients, args.seconds, master)
                base = floor(runs, clients, args.seconds)
                entry[f"clients_{clients}"] = {"http": http, "duckdb_floor": base, **ratios(http, base)}
                if args.profile and clients == 8:  # a run of its own: sampling slows the workers it samples
                    spies = profiled(master, args.profile, name, args.seconds)
                    wrk(url, urls, clients, args.seconds)
                    for spy in spies:
                        spy.wait(timeout=60)
                    entry[f"clients_{clients}"]["profile"] = stage_shares(sorted(args.profile.glob(f"{name}_*.txt")))
                print(name, clients, json.dumps(entry[f"clients_{clients}"]))
            result["queries"][name] = entry
        result["server_memory"] = memory(master)
        result["read_path_choice"] = iceberg_scan_page(settings, pairs, 60)
    save_result("api", {**result, "goals": GOALS})


if __name__ == "__main__":
    main()
