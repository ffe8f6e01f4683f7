"""Data landed by the real pipeline for the query engine and API tests (k2 load -> broker -> k2 consume
-> Iceberg), and plain-Python views of it to check answers against."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from k2_etl.bootstrap import init_platform
from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.schemas.registration import register_schemas
from k2_etl.stream.consumer import Counts, StreamConsumer
from tests.helpers import REPO
from tests.integration.ingest_helpers import load, messages_of

SAMPLE = REPO / "data" / "sample" / "k2"


def land(settings: Settings, folder: Path, timeout: float = 120) -> int:
    """Load ``folder`` and run a consumer in this process until every record it produced has landed
    (or was a duplicate); fails after ``timeout`` seconds rather than hanging."""
    report = load(settings, str(folder), "--format", "k2", expect_rc=None)  # 1 when a row is rejected
    want = sum(len(messages_of(settings, report, t)) for t in ("trades", "quotes", "reference_data", "dead_letters"))
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


def land_sample(platform_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of a fresh catalog and topics holding the committed sample, landed, and one rejected row."""
    settings = load_settings(
        home=tmp_path_factory.mktemp("query") / "home",
        kafka_bootstrap=platform_settings.kafka_bootstrap,
        schema_registry_url=platform_settings.schema_registry_url,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        stream_session_timeout_seconds=6,
        stream_max_poll_interval_seconds=7,
        stream_metrics_port=0,
    )
    init_platform(settings)
    register_schemas(settings)
    land(settings, SAMPLE)
    bad = tmp_path_factory.mktemp("bad") / "2026-11-02"
    bad.mkdir()
    (bad / "trades_XXX.csv").write_text(
        (SAMPLE / "2026-11-02" / "trades_ASX.csv").read_text().splitlines()[0]
        + "\n2026-11-02T01:00:00Z,BADP,ASX,not-a-price,10,AUD,1,,\n"
    )
    land(settings, bad.parent)
    return settings


def trades_of(settings: Settings, symbol: str, snapshot_id: int | None = None) -> list[dict[str, Any]]:
    """The symbol's trades as pyiceberg reads them, in the stable order, by plain Python."""
    table = open_catalog(settings).load_table((settings.namespace, "trades"))
    rows = [r for r in table.scan(snapshot_id=snapshot_id).to_arrow().to_pylist() if r["symbol"] == symbol]
    return sorted(
        rows,
        key=lambda r: (r["event_time"], -1 if r["sequence_number"] is None else r["sequence_number"], r["event_id"]),
    )


def a_symbol(settings: Settings) -> str:
    """A symbol of the committed sample (the one its ASX trades file starts with)."""
    return (SAMPLE / "2026-11-02" / "trades_ASX.csv").read_text().splitlines()[1].split(",")[1]


def rows_of(settings: Settings, name: str) -> list[dict[str, Any]]:
    return open_catalog(settings).load_table((settings.namespace, name)).scan().to_arrow().to_pylist()
