"""Benchmark the explorer page: from navigation to the chart drawn, against the /v1/bars request alone.

Dataset (built once into the work folder, then reused): one ASX symbol-day of 120,000 generated
trades and as many quotes, landed through the real pipeline (`k2 load` -> broker -> `k2 consume`
-> Iceberg), then compacted with `k2 compact`.

In one run, with `k2 api` serving and Debian's Chromium driven by Playwright:
* the /v1/bars request of the page's default view (the symbol-day's 1-minute bars in the
  exchange's zone) alone, over HTTP from this process, RUNS times: its median;
* the page, RUNS times each with an empty cache (a new browser context) and with a warm one
  (the same context again): milliseconds from navigation to the frame that paints the candles
  (the page's ``data-drawn-at``, ``performance.now()``), and the page's own API calls on the way
  (Resource Timing);
* the bytes the page transfers, compressed as sent (Chromium's encodedDataLength): its own files
  with the vendored library, and the API's answers.

Goals (issue 19): the page adds at most 0.5 s to the /v1/bars request alone; the page and the
vendored library are at most 500 KB compressed.

    .venv/bin/python bench/explorer_bench.py [--work /var/tmp/k2-bench-explorer] [--runs 7]
    (needs Debian's chromium: apt-get install chromium)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psutil
from playwright.sync_api import Browser, sync_playwright

from bench.api_bench import stream_until
from bench.harness import k2_api_running, kafka_running, kafka_settings, save_result
from k2_etl.ingest.generate import generate
from tests.helpers import env_of, run_k2

DAY = date(2026, 11, 2)
TRADES = 150_000  # asked of the generator; it lands ~81% of them in the session: >= 100,000
CHROMIUM = "/usr/bin/chromium"
GOALS = {"page_over_bars_ms": 500, "page_bytes_compressed": 500_000}


def build(work: Path) -> dict[str, Any]:
    """Generate, load, stream and compact the symbol-day into ``work`` (skipped when already built)."""
    marker = work / "built.json"
    if marker.exists():
        print(f"reusing the dataset in {work}")
        built: dict[str, Any] = json.loads(marker.read_text())
        return built
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    settings = kafka_settings(work / "home", stream_metrics_port=0)
    with kafka_running(settings):
        generated = generate(work / "data", symbols=1, days=1, start=DAY, seed=19, exchanges=("ASX",),
                             trades_per_day=TRADES, quotes_per_trade=1.0)  # fmt: skip
        loaded = run_k2({**env_of(settings), "K2_INGEST_METRICS_PORT": "0"}, "load", str(work / "data"), "--format",
                        "k2", "--json", timeout=3600)  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        stream_until(settings, {"trades": generated.trades, "quotes": generated.quotes})
    compacted = run_k2(env_of(settings), "compact", "--json", timeout=3600)
    assert compacted.returncode == 0, compacted.stderr[-2000:]
    built = {"trades": generated.trades, "quotes": generated.quotes, "env": env_of(settings)}
    marker.write_text(json.dumps(built, indent=2))
    return built


def the_symbol(url: str) -> str:
    return str(httpx.get(f"{url}/v1/symbols", timeout=30).json()["data"][0]["symbol"])


def cpu_ms(processes: list[psutil.Process]) -> float:
    """User + system CPU time of these processes so far (those gone since count nothing)."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total * 1000


def family(process: psutil.Process) -> list[psutil.Process]:
    return [process, *process.children(recursive=True)]


def browsers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if "chrom" in (p.info["name"] or "")]


def bars_alone(url: str, symbol: str, runs: int) -> list[float]:
    """Milliseconds of the page's /v1/bars request (the day in the exchange's zone), asked directly
    (a fresh connection each time, as a page's first request makes)."""
    params = {"symbol": symbol, "day": DAY.isoformat(), "interval": "1m", "tz": "exchange", "limit": 10000}
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        response = httpx.get(f"{url}/v1/bars", params=params, timeout=60)
        response.raise_for_status()
        times.append((time.perf_counter() - began) * 1000)
    return times


def page_runs(browser: Browser, url: str, runs: int, server: psutil.Process) -> dict[str, Any]:
    """Navigation to drawn candles, with an empty cache and a warm one; bytes transferred (cold);
    the CPU the server and the browser spent on a cold load, on the same two cores."""
    cold, warm, api_calls, server_cpu, browser_cpu = [], [], [], [], []
    transferred: dict[str, int] = {}
    for run in range(runs):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        session = context.new_cdp_session(page)
        session.send("Network.enable")
        urls: dict[str, str] = {}
        sizes: dict[str, int] = {}
        session.on("Network.responseReceived", lambda e, urls=urls: urls.update({e["requestId"]: e["response"]["url"]}))
        session.on("Network.loadingFinished",
                   lambda e, sizes=sizes: sizes.update({e["requestId"]: int(e["encodedDataLength"])}))  # fmt: skip
        for times, label in ((cold, "cold"), (warm, "warm")):
            workers, chromium = family(server), browsers()
            cpu_before = (cpu_ms(workers), cpu_ms(chromium))
            page.goto(url)
            page.wait_for_selector("#chart[data-drawn-at]", timeout=120_000)
            times.append(float(page.get_attribute("#chart", "data-drawn-at") or "nan"))
            if label == "cold":
                server_cpu.append(cpu_ms(workers) - cpu_before[0])
                browser_cpu.append(cpu_ms(chromium) - cpu_before[1])
            if label == "cold":
                api_calls.append(page.evaluate(
                    "performance.getEntriesByType('resource').filter(e => e.name.includes('/v1/bars'))"
                    ".map(e => e.responseEnd - e.startTime)[0]"))  # fmt: skip
                page.wait_for_selector("body[data-ready=true]", state="attached", timeout=120_000)
                if run == 0:
                    for request, size in sizes.items():
                        transferred[urls.get(request, request)] = size
        context.close()
    own = {u: s for u, s in transferred.items() if u.startswith("http") and "/v1/" not in u and "/health" not in u}
    return {
        "cold_drawn_ms": statistics.median(cold),
        "warm_drawn_ms": statistics.median(warm),
        "bars_in_page_ms": round(statistics.median(api_calls), 1),
        "cold_server_cpu_ms": round(statistics.median(server_cpu), 1),
        "cold_browser_cpu_ms": round(statistics.median(browser_cpu), 1),
        "runs": runs,
        "page_bytes_compressed": sum(own.values()),
        "page_files": {u.split("/explore", 1)[-1] or "/explore": s for u, s in sorted(own.items())},
        "api_bytes_compressed": sum(s for u, s in transferred.items() if "/v1/" in u),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/k2-bench-explorer"))
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    built = build(args.work)
    env = {**{k: v for k, v in built["env"].items() if not k.startswith("K2_API_")}, "K2_STREAM_METRICS_PORT": "0"}
    with k2_api_running(env) as (url, server):
        symbol = the_symbol(url)
        view = f"{url}/explore?symbol={symbol}&day={DAY.isoformat()}&interval=1m&tz=exchange"
        for _ in range(3):  # warm up both workers: plans, the symbol index, OS caches
            bars_alone(url, symbol, 4)
            for path in ("/v1/symbols", "/v1/exchanges", "/v1/tables/trades/snapshots"):
                httpx.get(f"{url}{path}", timeout=60).raise_for_status()
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = page_runs(browser, view, args.runs, server)
            finally:
                browser.close()
        workers = family(server)
        before = cpu_ms(workers)
        alone = bars_alone(url, symbol, args.runs * 2)
        bars_cpu = (cpu_ms(workers) - before) / len(alone)
    bars_ms = statistics.median(alone)
    result = {
        "benchmark": "explorer",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {k: v for k, v in built.items() if k != "env"},
        "view": "one symbol-day, 1-minute bars in the exchange's zone",
        "bars_alone_ms": round(bars_ms, 1),
        "bars_alone_server_cpu_ms": round(bars_cpu, 1),
        **page,
        "page_over_bars_ms": round(page["cold_drawn_ms"] - bars_ms, 1),
        "warm_page_over_bars_ms": round(page["warm_drawn_ms"] - bars_ms, 1),
        "goals": GOALS,
    }
    save_result("explorer", result)


if __name__ == "__main__":
    main()
