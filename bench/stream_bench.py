"""Benchmark streaming: `k2 consume` landing pre-filled topics in Iceberg, against the consumer's ceiling.

In one run, on a broker, registry and catalog started for it, topics pre-filled
by `k2 load` with generated trades:

* (a) ceiling: the same client consuming the same messages, doing nothing per message;
* (b) `k2 consume` as a user runs it (a subprocess) until the trades table holds
  every row: rows/s from its first message (the start-up, mostly the consumer group
  join, is reported apart), and its peak resident memory.

Goals (issue 4): (b) >= 150,000 rows/s in one process and >= 0.5 x (a); RSS <= 500 MB.

    .venv/bin/python bench/stream_bench.py [--rows 2000000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, TopicPartition

from bench.harness import bench_platform
from k2_etl.kafka import client_config
from k2_etl.lake.catalog import open_catalog
from tests.helpers import env_of, free_port, run_k2

RESULTS = Path(__file__).resolve().parent / "results"


def ceiling(settings, topic: str, rows: int) -> float:  # type: ignore[no-untyped-def]
    consumer = Consumer(client_config(settings, **{"group.id": f"bench-{time.time()}", "enable.auto.commit": False}))
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


def k2_consume(settings, rows: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    env = env_of(settings)
    k2 = Path(sys.executable).with_name("k2")
    catalog = open_catalog(settings)
    trades = catalog.load_table((settings.namespace, "trades"))
    started = time.perf_counter()
    process = subprocess.Popen([str(k2), "consume", "--json"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    watched = psutil.Process(process.pid)
    health = f"http://127.0.0.1:{settings.stream_metrics_port}/healthz"
    peak, landed, first = 0, 0, None
    while landed < rows:
        time.sleep(0.1)  # sampling, not synchronisation
        peak = max(peak, watched.memory_info().rss)
        if first is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health, timeout=1).json().get("consumed", 0) > 0:
                    first = time.perf_counter()
            continue
        trades.refresh()
        snapshot = trades.current_snapshot()
        landed = int(snapshot.summary.get("total-records", 0)) if snapshot and snapshot.summary else 0
        if process.poll() is not None:
            raise SystemExit("k2 consume exited early")
    done = time.perf_counter()
    process.terminate()
    out, _ = process.communicate(timeout=60)
    assert first is not None
    return {"rows": landed, "rows_per_second": round(landed / (done - first), 1),
            "seconds": round(done - first, 2), "startup_seconds": round(first - started, 2),
            "rows_per_second_with_startup": round(landed / (done - started), 1),
            "peak_rss_mb": round(peak / 2**20, 1), "counts": json.loads(out)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="trades to generate (about)")
    args = parser.parse_args()
    with bench_platform(
        "stream",
        args.rows,
        stream_metrics_port=free_port(),
        stream_batch_rows=50_000,
        stream_session_timeout_seconds=6,  # the local broker's group join waits these out (PLATFORM-NOTES)
        stream_max_poll_interval_seconds=7,
    ) as (settings, work, gen):
        env = env_of(settings)
        env["K2_INGEST_METRICS_PORT"] = "0"
        loaded = run_k2(env, "load", str(work / "data"), "--format", "k2", "--json", timeout=900)
        assert loaded.returncode == 0, loaded.stderr
        a = ceiling(settings, settings.topic_prefix + "trades", gen.trades)
        b = k2_consume(settings, gen.trades)
    result = {
        "benchmark": "stream",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "trades": gen.trades,
        "ceiling_msgs_per_second": round(a, 1),
        "k2_consume": b,
        "ratio_consume_to_ceiling": round(b["rows_per_second"] / a, 3),
        "goals": {"rows_per_second": 150_000, "ratio": 0.5, "peak_rss_mb": 500},
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stream.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {RESULTS / 'stream.json'}")


if __name__ == "__main__":
    main()
