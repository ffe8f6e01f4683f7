"""DuckDB reads K2's Iceberg tables with the extensions from the pinned packages, no network."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pyarrow as pa

from k2_etl.config import load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.tables import ensure_tables
from k2_etl.wire.duckdb_conn import connect
from tests.helpers import a_trade


def test_iceberg_scan_of_a_k2_table(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    trades = catalog.load_table((settings.namespace, "trades"))
    trades.append(pa.Table.from_pylist([a_trade()], schema=trades.schema().as_arrow()))
    trades = catalog.load_table((settings.namespace, "trades"))
    conn = connect(extensions=True)
    rows = conn.execute(
        "SELECT symbol, price, size, conditions FROM iceberg_scan(?) WHERE symbol = ?",
        [trades.metadata_location, "BHP"],
    ).fetchall()
    assert rows == [("BHP", Decimal("45.12345678"), Decimal("100"), ["XT"])]
    assert conn.execute("SELECT current_setting('autoinstall_known_extensions')").fetchone() == (False,)
