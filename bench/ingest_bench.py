"""Benchmark batch ingestion: `k2 load` of 2,000,000 generated trades against the producer's ceiling.

In one run, on a broker and registry started for it:

* (a) ceiling: produce pre-serialized messages of the same sizes, keys, timestamps
  and headers, with the same client settings and delivery callback, from one
  Python loop (what `k2 load` would do if parsing, validation and encoding were free);
* (b) `k2 load --format k2` end to end, as a user runs it (a subprocess): rows/s
  as it reports them and over the whole command's wall time, and its peak
  resident memory.

(a) and (b) alternate (three times by default); the best of each is compared, and
the ratio of the medians is reported beside it (this machine is shared and noisy). Goals (issue 3):
(b) >= 150,000 rows/s, (b) >= 0.6 x (a), peak memory <= 500 MB.

    .venv/bin/python bench/ingest_bench.py [--rows 2000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

from bench.harness import bench_platform, save_result
from k2_etl.ingest.producer import Deliveries, produce_all
from k2_etl.wire.kafka import admin_client, make_consumer, make_producer
from tests.helpers import env_of


def sample_messages(settings, topic: str, count: int = 5000) -> list[tuple[bytes, bytes, int]]:  # type: ignore[no-untyped-def]
    consumer = make_consumer(settings, "bench-sample")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    out: list[tuple[bytes, bytes, int]] = []
    deadline = time.monotonic() + 60
    while len(out) < count and time.monotonic() < deadline:
        for m in consumer.consume(num_messages=count, timeout=1):
            if m.error() is None:
                out.append((m.value(), m.key(), m.timestamp()[1]))
    consumer.close()
    return out[:count]


def ceiling(settings, rows: int, sample: list[tuple[bytes, bytes, int]], topic: str) -> float:  # type: ignore[no-untyped-def]
    producer = make_producer(settings)
    values = [s[0] for s in sample]
    keys = [s[1] for s in sample]
    stamps = [s[2] for s in sample]
    headers = [("k2-load-id", b"0" * 32), ("k2-source", b"/bench/trades_ASX.csv"), ("k2-record-type", b"trade")]
    deliveries = Deliveries()
    started = time.perf_counter()
    sent = 0
    while sent < rows:
        n = min(len(values), rows - sent)
        produce_all(producer, topic, values[:n], keys[:n], stamps[:n], headers, deliveries)
        sent += n
    producer.flush()
    elapsed = time.perf_counter() - started
    assert deliveries.errors == 0, deliveries.first_error
    return rows / elapsed


def k2_load(settings, folder: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    env = env_of(settings)
    env["K2_INGEST_METRICS_PORT"] = "0"
    k2 = Path(sys.executable).with_name("k2")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    result = subprocess.run(
        [str(k2), "load", str(folder), "--format", "k2", "--force", "--json"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"k2 load failed: {result.stderr}\n{result.stdout[:2000]}")
    totals = json.loads(result.stdout)["totals"]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "rows": totals["rows_read"],
        "rows_per_second_reported": totals["rows_per_second"],
        "rows_per_second_wall": round(totals["rows_read"] / wall, 1),
        "wall_seconds": round(wall, 2),
        # ru_maxrss of children is the largest child so far: valid when this one is the largest
        "peak_rss_mb": round(max(peak, before) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="trades to generate (about)")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs of (a) and (b)")
    args = parser.parse_args()
    with bench_platform("ingest", args.rows) as (settings, work, gen):
        ceiling_topic = settings.topic_prefix + "bench_ceiling"  # laid out like the trades topic
        admin = admin_client(settings)
        admin.create_topics([NewTopic(ceiling_topic, settings.topic_partitions, 1)])[ceiling_topic].result(30)
        runs_a: list[float] = []
        runs_b: list[dict[str, float]] = []
        for _ in range(args.runs):
            runs_b.append(k2_load(settings, work / "data"))
            sample = sample_messages(settings, settings.topic_prefix + "trades")
            runs_a.append(ceiling(settings, runs_b[-1]["rows"], sample, ceiling_topic))
        avg_size = sum(len(s[0]) for s in sample) / len(sample)
    best_a = max(runs_a)
    best_b = max(runs_b, key=lambda r: r["rows_per_second_reported"])
    result = {
        "benchmark": "ingest",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "trades": gen.trades,
        "files": len(gen.files),
        "avg_message_bytes": round(avg_size, 1),
        "ceiling_msgs_per_second": [round(a, 1) for a in runs_a],
        "k2_load": runs_b,
        "best_ceiling_msgs_per_second": round(best_a, 1),
        "best_k2_load_rows_per_second": best_b["rows_per_second_reported"],
        "ratio_load_to_ceiling": round(best_b["rows_per_second_reported"] / best_a, 3),
        "ratio_of_medians": round(
            statistics.median(r["rows_per_second_reported"] for r in runs_b) / statistics.median(runs_a), 3
        ),
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs_b),
        "goals": {"rows_per_second": 150_000, "ratio": 0.6, "peak_rss_mb": 500},
    }
    save_result("ingest", result)


if __name__ == "__main__":
    main()
