"""The one way K2 opens a DuckDB connection: UTC, offline, and able to read the warehouse.

Every connection is in UTC: the date of an instant is its UTC date whatever the host's zone
(and the SQL that needs another zone names it). DuckDB normally downloads extensions on first
use; K2 pins ``duckdb-extension-avro`` and ``duckdb-extension-iceberg``, which ship the
extension binaries inside their packages, and loads those files directly (avro first: iceberg
needs it). Autoinstall and autoload stay off, so a missing file is an error here rather than a
download attempt in production (icu, json and parquet are built into DuckDB's wheels).
"""

from __future__ import annotations

import builtins
import sys
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb

from k2_etl.config import Settings
from k2_etl.errors import K2Error

EXTENSIONS = ("avro", "iceberg")  # load order matters
S3_SCHEMES = ("s3://", "s3a://")


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


def connect(
    *, threads: int | None = None, extensions: bool = False, settings: Settings | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection in UTC.

    ``threads``: DuckDB's threads for it (default, one per core); ``extensions``: with the pinned
    Avro and Iceberg extensions loaded (reading Avro bodies, Iceberg delete files);
    ``settings``: able to read the warehouse they name (:func:`configure_storage`).
    """
    _settle_pandas()
    config: dict[str, Any] = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    if threads is not None:
        config["threads"] = threads
    conn = duckdb.connect(config=config)
    conn.execute("SET GLOBAL TimeZone = 'UTC'")  # GLOBAL: its cursors (the API's pool) are in UTC too
    if extensions:
        for name in EXTENSIONS:
            conn.execute(f"LOAD '{extension_path(name)}'")  # a path from our own install, not user input
    if settings is not None:
        configure_storage(conn, settings)
    return conn


def _settle_pandas() -> None:
    """Answer DuckDB's ``import pandas`` at once when pandas is not installed.

    DuckDB's Python client tries ``import pandas`` for every bound parameter it converts, each
    list element included (duckdb/duckdb#18658; duckdb/duckdb-python#300). Without pandas, every
    attempt walks the import path: about 100 µs of GIL-held time each, 1.1 ms of a 10-parameter
    statement (measured 1.96 ms against 0.86 ms an execute). The attempt arrives through
    ``builtins.__import__`` (pybind11 calls ``PyImport_ImportModule``), so that is where it is
    answered: a ModuleNotFoundError, as the search would have ended.

    Not ``sys.modules["pandas"] = None``, Python's usual marker: Cython modules take that None for
    the module (pyarrow's pandas shim then fails on ``None.__version__``). ``importlib.util.
    find_spec("pandas")`` does not use ``__import__`` and still answers None. An installed pandas is
    left alone (DuckDB imports it once and keeps it); one installed after the first connection
    is not seen by this process.
    """
    importing = builtins.__import__
    if getattr(importing, "k2_answers_pandas", False) or find_spec("pandas") is not None:
        return

    def import_without_pandas(name: str, *args: Any, **kwargs: Any) -> Any:
        level = args[3] if len(args) > 3 else kwargs.get("level", 0)
        if name == "pandas" and not level and "pandas" not in sys.modules:
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
        return importing(name, *args, **kwargs)

    import_without_pandas.k2_answers_pandas = True  # type: ignore[attr-defined]
    builtins.__import__ = import_without_pandas


def configure_storage(conn: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Let ``conn`` read the warehouse: nothing for local files; for S3 (MinIO, AWS), the pinned
    httpfs extension and a secret made from the K2_S3_* settings (path-style URLs, as MinIO needs)."""
    if not (settings.warehouse or "").startswith(S3_SCHEMES):
        return
    conn.execute(f"LOAD '{extension_path('httpfs')}'")  # a path from our own install
    options = {"TYPE": "s3", "URL_STYLE": "path"}
    if settings.s3_access_key_id:
        options["KEY_ID"] = settings.s3_access_key_id
    if settings.s3_secret_access_key:
        options["SECRET"] = settings.s3_secret_access_key.get_secret_value()
    if settings.s3_region:
        options["REGION"] = settings.s3_region
    if settings.s3_endpoint:
        endpoint = urlsplit(settings.s3_endpoint)
        options["ENDPOINT"] = endpoint.netloc
        options["USE_SSL"] = "true" if endpoint.scheme == "https" else "false"
    # CREATE SECRET takes no bound parameters; these values are the operator's settings (never
    # request input), quoted as SQL string literals.
    body = ", ".join(f"{key} {_literal(value)}" if key not in ("TYPE", "USE_SSL") else f"{key} {value}"
                     for key, value in options.items())  # fmt: skip
    conn.execute(f"CREATE OR REPLACE SECRET k2_warehouse ({body})")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
