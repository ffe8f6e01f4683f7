"""DuckDB connections that read Iceberg with no network access.

DuckDB normally downloads extensions on first use; K2 pins
``duckdb-extension-avro`` and ``duckdb-extension-iceberg``, which ship the
extension binaries inside their packages, and loads those files directly
(avro first: iceberg needs it). Autoinstall stays off, so a missing file is
an error here rather than a download attempt in production.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import duckdb

from k2_etl.errors import K2Error

EXTENSIONS = ("avro", "iceberg")  # load order matters


def extension_path(name: str) -> Path:
    package = import_module(f"duckdb_extension_{name}")
    folder = Path(package.__file__ or "").parent / "extensions" / f"v{duckdb.__version__}"
    path = folder / f"{name}.duckdb_extension"
    if not path.is_file():
        raise K2Error(
            f"DuckDB {name} extension for DuckDB {duckdb.__version__} not found at {path}; "
            "duckdb and duckdb-extension-* versions must match (reinstall with `make install`)"
        )
    return path


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the Iceberg extension loaded from the pinned packages."""
    conn = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for name in EXTENSIONS:
        conn.execute(f"LOAD '{extension_path(name)}'")  # a path from our own install, not user input
    return conn
