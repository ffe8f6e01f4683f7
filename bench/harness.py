"""A throwaway local platform for a benchmark: broker, registry, tables, schemas and generated trades."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psutil

from k2_etl.bootstrap import init_platform
from k2_etl.config import Settings, load_settings
from k2_etl.ingest.generate import GenerateReport, generate
from k2_etl.local.components import broker, registry
from k2_etl.local.supervisor import start, stop
from k2_etl.schemas.registration import register_schemas
from tests.helpers import free_port, free_ports, poll

RESULTS = Path(__file__).resolve().parent / "results"
K2 = Path(sys.executable).with_name("k2")


def save_result(name: str, result: dict[str, Any]) -> None:
    """Print a benchmark's result and save it as ``bench/results/<name>.json``."""
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {RESULTS / f'{name}.json'}")


def kafka_settings(home: Path, **overrides: Any) -> Settings:
    """Settings of a platform in ``home`` with its broker's and registry's ports reserved together."""
    broker_port, registry_port = free_ports(2)
    return load_settings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{broker_port}",
        schema_registry_url=f"http://127.0.0.1:{registry_port}",
        **overrides,
    )


@contextmanager
def kafka_running(settings: Settings) -> Iterator[None]:
    """The local broker and registry of ``settings`` up, the tables made and the schemas registered;
    stopped on exit (the tables stay)."""
    components = [broker(settings), registry(settings)]
    for component in components:
        start(settings, component, lambda _: None)
    try:
        init_platform(settings)
        register_schemas(settings)
        yield
    finally:
        for component in reversed(components):
            stop(settings, component, lambda _: None)


@contextmanager
def bench_platform(name: str, rows: int, **overrides: Any) -> Iterator[tuple[Settings, Path, GenerateReport]]:
    """Settings, the work folder (generated files in ``data/``) and what was generated; stopped on exit.

    ``rows`` trades (about) over 100 ASX symbols and 10 days, no quotes, deterministic.
    """
    work = Path(tempfile.mkdtemp(prefix=f"k2-bench-{name}-"))
    settings = kafka_settings(work / "home", **overrides)
    with kafka_running(settings):
        symbols, days = 100, 10
        generated = generate(
            work / "data", symbols=symbols, days=days, start=date(2026, 10, 1), seed=1, exchanges=("ASX",),
            trades_per_day=rows // (symbols * days), quotes_per_trade=0,
        )  # fmt: skip
        yield settings, work, generated


@contextmanager
def k2_api_running(env: dict[str, str]) -> Iterator[tuple[str, psutil.Process]]:
    """`k2 api` with ``env`` on a free port, answering (its health, healthy or degraded); its URL
    and its process (it execs gunicorn: the master); stopped with SIGTERM on exit."""
    port = free_port()
    api = subprocess.Popen([str(K2), "api"], env={**env, "K2_API_PORT": str(port)}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        assert api.poll() is None, "k2 api exited"
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code in (200, 503)
        except httpx.TransportError:
            return False

    try:
        poll(answering, 60, f"k2 api on {url}", every=0.2)
        yield url, psutil.Process(api.pid)
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)
