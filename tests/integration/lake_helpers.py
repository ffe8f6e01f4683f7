"""Iceberg tables on disk filled the way the consumer fills them (one append per batch, recording
offsets), for maintenance and Airflow tests that need small files without a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from pyiceberg.table import Table

from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import append_with_offsets, committed_offsets
from k2_etl.lake.tables import ensure_tables
from tests.helpers import a_trade

DAY = datetime(2026, 11, 2, 1, tzinfo=UTC)
GROUP = "k2-test"


def trades_table(tmp_path: Path) -> tuple[Settings, Table]:
    settings = load_settings(home=tmp_path / "home")
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    return settings, catalog.load_table((settings.namespace, "trades"))


def batch(table: Table, ids: list[str], day: int = 0, price: str = "10") -> pa.Table:
    rows = []
    for i, event_id in enumerate(ids):
        row = a_trade()
        at = DAY + timedelta(days=day, seconds=int(event_id.split("-")[-1]) if event_id[-1].isdigit() else i)
        row.update(event_id=event_id, symbol=("BHP", "CBA", "NAB")[i % 3], event_time=at, price=Decimal(price),
                   sequence_number=i)  # fmt: skip
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=table.schema().as_arrow())


def land_batches(table: Table, batches: list[pa.Table]) -> None:
    """Append each batch as the consumer does: one commit, recording the next offset of a partition."""
    for i, rows in enumerate(batches):
        table.refresh()
        expected = committed_offsets(table, GROUP).get("t", {}).get(0)
        append_with_offsets(table, rows, GROUP, {"t": {0: expected}}, {"t": {0: i + 1}})


def data_files(table: Table) -> dict[str, int]:
    """Live data files per partition path."""
    table.refresh()
    counts: dict[str, int] = {}
    for task in table.scan().plan_files():
        path = table.spec().partition_to_path(task.file.partition, table.schema())
        counts[path] = counts.get(path, 0) + 1
    return counts
