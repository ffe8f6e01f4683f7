"""Benchmark streaming: `k2 consume` landing pre-filled topics in Iceberg, against the consumer's ceiling.

In one run, on a broker, registry and catalog started for it, topics pre-filled
by `k2 load` with generated trades:

* (a) ceiling: the same client consuming the same messages, doing nothing per message;
* (b) `k2 consume` as a user runs it (a subprocess) until the trades table holds
  every row: rows/s once it owns the partitions (the start-up, mostly the consumer
  group join, and what landed during it are reported apart), CPU time, peak memory.

* (c) two `k2 consume` in one group on the same messages (4 partitions: 2 each);
* (d) freshness: produced -> visible to a new Iceberg reader, per record, while
  trades are produced at a steady 50,000/s (own topics and tables).

Goals (issue 4): (b) >= 150,000 rows/s in one process and >= 0.5 x (a); (c) >= 1.6 x (b);
RSS <= 500 MB; (d) p50 <= 1 s, p99 <= 2 s.

    .venv/bin/python bench/stream_bench.py [--rows 2000000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from pyiceberg.expressions import GreaterThan

from bench.harness import bench_platform, save_result
from k2_etl.bootstrap import init_platform
from k2_etl.lake.catalog import open_catalog
from k2_etl.schemas import TRADE
from k2_etl.schemas.registration import register_schemas
from k2_etl.wire.avro_encode import encode_table
from k2_etl.wire.kafka import client_config, make_consumer
from tests.helpers import env_of, free_port, run_k2


def ceiling(settings, topic: str, rows: int) -> float:  # type: ignore[no-untyped-def]
    consumer = make_consumer(settings, f"bench-{time.time()}")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    seen = 0
    started = time.perf_counter()
    while seen < rows:
        for message in consumer.consume(10_000, 1.0):
            if message.error() is None:
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return rows / elapsed


@contextmanager
def k2_consumers(envs: list[dict[str, str]]) -> Iterator[list[subprocess.Popen[str]]]:
    """`k2 consume` processes, one per environment; killed on the way out if a failure left them running."""
    k2 = Path(sys.executable).with_name("k2")
    running = [subprocess.Popen([str(k2), "consume", "--json"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True) for env in envs]  # fmt: skip
    try:
        yield running
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)


def k2_consume(settings, rows: int, processes: int = 1, extra_env: dict[str, str] | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """``processes`` `k2 consume` in one group, landing ``rows`` trades into ``settings``' (fresh) tables
    (``extra_env``: more environment for them, e.g. another checkout's PYTHONPATH for an A/B)."""
    init_platform(settings)
    trades = open_catalog(settings).load_table((settings.namespace, "trades"))
    ports = [free_port() for _ in range(processes)]
    started = time.perf_counter()
    envs = [{**env_of(settings), **(extra_env or {}), "K2_STREAM_METRICS_PORT": str(port)} for port in ports]
    with k2_consumers(envs) as running:
        return _measure(settings, trades, ports, running, rows, started)


def _measure(settings, trades, ports, running, rows: int, started: float) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    processes = len(running)
    watched = [psutil.Process(p.pid) for p in running]
    owned = 4 * settings.topic_partitions  # trades, quotes, reference data, dead letters

    def landed_now() -> int:
        trades.refresh()
        snapshot = trades.current_snapshot()
        return int(snapshot.summary.get("total-records", 0)) if snapshot and snapshot.summary else 0

    peak, landed, first, at_first = 0, 0, None, 0
    while landed < rows:
        time.sleep(0.1)  # sampling, not synchronisation
        peak = max(peak, *(w.memory_info().rss for w in watched))
        if any(p.poll() is not None for p in running):
            raise SystemExit("k2 consume exited early")
        if first is None:  # timing starts when every process owns its share of the partitions
            shares = []
            for port in ports:
                with contextlib.suppress(httpx.HTTPError):
                    shares.append(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json().get("partitions", 0))
            if len(shares) == processes and all(shares) and sum(shares) == owned:
                first, at_first = time.perf_counter(), landed_now()
            continue
        landed = landed_now()
    done = time.perf_counter()
    cpu = sum(w.cpu_times().user + w.cpu_times().system for w in watched)
    counts = []
    for process in running:
        process.terminate()
        out, _ = process.communicate(timeout=60)
        counts.append(json.loads(out))
    assert first is not None
    return {"processes": processes, "rows": landed, "rows_per_second": round((landed - at_first) / (done - first), 1),
            "seconds": round(done - first, 2), "landed_before_timing": at_first,
            "startup_seconds": round(first - started, 2),
            "rows_per_second_with_startup": round(landed / (done - started), 1),
            "cpu_seconds_per_1000_rows": round(cpu / landed * 1000, 4),
            "peak_rss_mb": round(peak / 2**20, 1), "counts": counts}  # fmt: skip


def freshness(settings, rate: int, seconds: float) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Produced -> visible to a new Iceberg reader, per record, under a steady ``rate`` of trades/s.

    Own topics and tables (``settings`` has its own prefix and namespace). The messages are
    encoded up front (K2's vectorized encoder); a thread produces them in 10 ms slices at the
    rate and notes when each slice was produced; this thread polls the catalog every 20 ms and
    notes when each record is first visible. The poll interval makes the result pessimistic by
    up to 20 ms.
    """
    init_platform(settings)
    register_schemas(settings)
    with k2_consumers([env_of(settings)]) as (consumer,):
        return _freshness(settings, consumer, rate, seconds)


def _freshness(settings, consumer: subprocess.Popen[str], rate: int, seconds: float) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    total = int(rate * seconds)
    symbols = 20
    day = datetime(2026, 10, 1, tzinfo=UTC)
    i = np.arange(total)
    data = pa.table(
        {
            "event_id": pa.array([f"{n:032x}" for n in range(total)]),
            "symbol": pa.array([f"S{n:02d}" for n in range(symbols)]).take(pa.array(i % symbols)),
            "exchange": pa.array(["ASX"] * total),
            "event_time": pa.array(day.timestamp() * 1e6 + i, pa.int64()).cast(pa.timestamp("us", "UTC")),
            "price": pa.array([Decimal("45.12")] * total, pa.decimal128(18, 8)),
            "size": pa.array([Decimal(100)] * total, pa.decimal128(18, 8)),
            "currency": pa.array(["AUD"] * total),
            "sequence_number": pa.array(i // symbols + 1),
            "trading_date": pa.array([day.date()] * total, pa.date32()),
            "conditions": pa.array([[]] * total, pa.list_(pa.string())),
            "venue": pa.nulls(total, pa.string()),
            "buyer_id": pa.nulls(total, pa.string()),
            "quality_flags": pa.array([[]] * total, pa.list_(pa.string())),
            "source": pa.array(["bench"] * total),
            "load_id": pa.nulls(total, pa.string()),
            "ingest_time": pa.array([datetime.now(UTC)] * total, pa.timestamp("us", "UTC")),
        }
    )
    with SchemaRegistryClient({"url": settings.schema_registry_url}) as client:
        schema_id = client.lookup_schema(TRADE.subject(settings), Schema(TRADE.schema_str, "AVRO")).schema_id
    values = encode_table(data, TRADE.schema, schema_id).to_pylist()
    keys = [s.encode() for s in data.column("symbol").to_pylist()]
    topic = TRADE.topic_name(settings)
    producer = Producer(client_config(settings, **{"linger.ms": 2}))
    slice_size = rate // 100
    produced_at = np.zeros(total)
    health = f"http://127.0.0.1:{settings.stream_metrics_port}/healthz"
    owned = 4 * settings.topic_partitions  # trades, quotes, reference data, dead letters
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # polling until the consumer owns every partition
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(health, timeout=1).json().get("partitions") == owned:
                break
        time.sleep(0.1)

    def produce() -> None:
        start = time.perf_counter()
        for n, first in enumerate(range(0, total, slice_size)):
            wait = start + n / 100 - time.perf_counter()
            if wait > 0:
                time.sleep(wait)  # pacing the producer at the rate, not synchronisation
            for k in range(first, min(first + slice_size, total)):
                producer.produce(topic, values[k], keys[k])
            producer.poll(0)
            produced_at[first : first + slice_size] = time.time()
        producer.flush(30)

    thread = threading.Thread(target=produce)
    thread.start()
    trades = open_catalog(settings).load_table((settings.namespace, "trades"))
    visible_at = np.full(total, np.nan)
    seen, last_snapshot = 0, None
    highest = np.zeros(symbols, dtype=np.int64)  # per symbol, the highest sequence number seen
    end = time.monotonic() + seconds + 60
    while seen < total and time.monotonic() < end:
        time.sleep(0.02)  # polling the catalog as a reader would
        trades.refresh()
        snapshot = trades.current_snapshot()
        if snapshot is None or snapshot.snapshot_id == last_snapshot:
            continue
        now = time.time()
        last_snapshot = snapshot.snapshot_id
        # A symbol's records land in order (one partition each), so the unseen ones are numbered above
        # the lowest of the symbols' highest numbers seen.
        below = int(highest.min())
        ids = trades.scan(snapshot_id=snapshot.snapshot_id, selected_fields=("sequence_number", "symbol"),
                          row_filter=GreaterThan("sequence_number", below)).to_arrow()  # fmt: skip
        symbol_of = np.array([int(s[1:]) for s in ids["symbol"].to_pylist()], dtype=np.int64)
        numbers = ids["sequence_number"].to_numpy()
        found = (numbers - 1) * symbols + symbol_of
        fresh = found[np.isnan(visible_at[found])]
        visible_at[fresh] = now
        seen += len(fresh)
        np.maximum.at(highest, symbol_of, numbers)
    thread.join()
    consumer.terminate()
    consumer.communicate(timeout=60)
    lag = visible_at - produced_at
    steady = lag[int(rate * 2) :]  # the first 2 s warm the consumer up
    steady = steady[~np.isnan(steady)]
    return {"rate_rows_per_second": rate, "seconds": seconds, "records": total,
            "visible": int(np.count_nonzero(~np.isnan(lag))),
            "p50_seconds": round(float(np.percentile(steady, 50)), 3),
            "p99_seconds": round(float(np.percentile(steady, 99)), 3),
            "max_seconds": round(float(steady.max()), 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="trades to generate (about)")
    args = parser.parse_args()
    with bench_platform(
        "stream",
        args.rows,
        stream_metrics_port=free_port(),
        topic_partitions=4,  # two consumers split them evenly
        stream_session_timeout_seconds=6,  # the local broker's group join waits these out (PLATFORM-NOTES)
        stream_max_poll_interval_seconds=7,
    ) as (settings, work, gen):
        env = env_of(settings)
        env["K2_INGEST_METRICS_PORT"] = "0"
        loaded = run_k2(env, "load", str(work / "data"), "--format", "k2", "--json", timeout=900)
        assert loaded.returncode == 0, loaded.stderr
        a = ceiling(settings, settings.topic_prefix + "trades", gen.trades)
        one = k2_consume(settings.model_copy(update={"namespace": "one"}), gen.trades)
        two = k2_consume(settings.model_copy(update={"namespace": "two", "stream_group": "two"}), gen.trades, 2)
        fresh = freshness(
            settings.model_copy(update={"namespace": "fresh", "topic_prefix": "fresh."}),
            rate=50_000,
            seconds=20,
        )
    result = {
        "benchmark": "stream",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "trades": gen.trades,
        "partitions": settings.topic_partitions,
        "ceiling_msgs_per_second": round(a, 1),
        "k2_consume": one,
        "ratio_consume_to_ceiling": round(one["rows_per_second"] / a, 3),
        "two_processes": two,
        "ratio_two_to_one": round(two["rows_per_second"] / one["rows_per_second"], 3),
        "freshness": fresh,
        "goals": {
            "rows_per_second": 150_000,
            "ratio": 0.5,
            "ratio_two_to_one": 1.6,
            "peak_rss_mb": 500,
            "freshness_p50_seconds": 1.0,
            "freshness_p99_seconds": 2.0,
        },
    }
    save_result("stream", result)


if __name__ == "__main__":
    main()
