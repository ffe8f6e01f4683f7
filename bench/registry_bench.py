"""Benchmark the local schema registry over HTTP, as producers and consumers use it.

Starts a registry (gunicorn, as `k2 up` does) in a scratch K2_HOME and measures,
with one keep-alive HTTP client:

* baseline: ``GET /`` (HTTP round trip + Flask, no registry work);
* ``GET /schemas/ids/{id}`` (what a deserializer does on an unknown id);
* ``POST /subjects/{s}`` (look up, what a serializer with auto.register=false does);
* ``POST /subjects/{s}/versions`` of an already registered schema (idempotent register);
* ``POST /subjects/{s}/versions`` of new compatible versions (compatibility check + write).

Each is reported as p50/p99 latency, requests/s and its ratio to the baseline
(the machine is shared and noisy; ratios travel better than milliseconds).

    .venv/bin/python bench/registry_bench.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from k2_etl.config import load_settings
from k2_etl.local.components import registry
from k2_etl.local.supervisor import start, stop
from k2_etl.schemas import TRADE
from tests.helpers import free_port

RESULTS = Path(__file__).resolve().parent / "results"


def measure(name: str, n: int, call: Callable[[int], httpx.Response]) -> dict[str, float | str | int]:
    latencies = []
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        response = call(i)
        latencies.append(time.perf_counter() - t0)
        if response.status_code != 200:
            raise SystemExit(f"{name}: HTTP {response.status_code}: {response.text}")
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "operation": name,
        "requests": n,
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(0.99 * (n - 1))] * 1000, 3),
        "per_second": round(n / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per read operation")
    parser.add_argument("--new-versions", type=int, default=200, help="new schema versions to register")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="k2-bench-registry-"))
    settings = load_settings(home=home, schema_registry_url=f"http://127.0.0.1:{free_port()}")
    component = registry(settings)
    t0 = time.perf_counter()
    start(settings, component, lambda _: None)
    startup_s = time.perf_counter() - t0
    base = settings.schema_registry_url
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            subject = "bench.trades-value"
            body = {"schema": TRADE.schema_str}
            schema_id = http.post(f"/subjects/{subject}/versions", json=body).json()["id"]
            rows = [
                measure("baseline GET /", args.requests, lambda i: http.get("/")),
                measure("GET /schemas/ids/{id}", args.requests, lambda i: http.get(f"/schemas/ids/{schema_id}")),
                measure(
                    "POST /subjects/{s} (lookup)", args.requests, lambda i: http.post(f"/subjects/{subject}", json=body)
                ),
                measure(
                    "POST /subjects/{s}/versions (existing)",
                    args.requests,
                    lambda i: http.post(f"/subjects/{subject}/versions", json=body),
                ),
            ]

            def new_version(i: int) -> httpx.Response:
                schema = json.loads(TRADE.schema_str)
                schema["fields"].append({"name": f"extra_{i}", "type": ["null", "string"], "default": None})
                return http.post("/subjects/bench.evolving-value/versions", json={"schema": json.dumps(schema)})

            rows.append(measure("POST /subjects/{s}/versions (new version)", args.new_versions, new_version))
    finally:
        stop(settings, component, lambda _: None)

    baseline = rows[0]["p50_ms"]
    for row in rows:
        row["p50_vs_baseline"] = round(float(row["p50_ms"]) / float(baseline), 2)
    result = {
        "benchmark": "registry",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "registry_start_to_healthy_s": round(startup_s, 3),
        "operations": rows,
    }
    print(f"registry start → healthy: {startup_s:.2f} s")
    print(f"{'operation':45} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'p50 x base':>10}")
    for row in rows:
        print(
            f"{row['operation']:45} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['per_second']:>8} "
            f"{row['p50_vs_baseline']:>10}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "registry.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
