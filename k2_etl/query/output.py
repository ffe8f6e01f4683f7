"""Query results as text: JSON values and CSV columns, shared by the API and `k2 query`.

JSON keeps prices exact: decimals are strings ("40.49000000"), times ISO-8601 UTC
with microseconds and a Z, dates ISO, bytes base64. CSV has no lists or bytes:
lists become their JSON text, bytes base64. Columns are converted with Arrow
compute (whole columns), not value by value in Python, except lists and bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

_encode = msgspec.json.Encoder().encode


def json_types(rows: pa.Table) -> pa.Table:
    return pa.table({name: _json_column(column) for name, column in zip(rows.column_names, rows.columns, strict=True)})


def _json_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_decimal(kind):
        return pc.cast(column, pa.string())
    if pa.types.is_timestamp(kind):
        if kind.tz is None:
            column = pc.assume_timezone(column, "UTC")
        return pc.strftime(pc.cast(column, pa.timestamp("us", tz="UTC")), format="%Y-%m-%dT%H:%M:%SZ")
    if pa.types.is_date(kind):
        return pc.strftime(column, format="%Y-%m-%d")
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pa.chunked_array([pa.array(_base64(chunk), pa.string()) for chunk in column.chunks], pa.string())
    return column


def _base64(chunk: pa.Array) -> list[str | None]:
    return [None if v is None else base64.b64encode(v).decode() for v in chunk.to_pylist()]


def csv_types(rows: pa.Table) -> pa.Table:
    """CSV has no lists or bytes: lists become their JSON text, bytes base64; the rest stays typed."""
    columns = {}
    for name, column in zip(rows.column_names, rows.columns, strict=True):
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_struct(column.type):
            column = pa.chunked_array(
                [pa.array([None if v is None else _encode(v).decode() for v in _json_column(c).to_pylist()])
                 for c in column.chunks] or [pa.array([], pa.string())],
                pa.string(),
            )  # fmt: skip
        elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            column = _json_column(column)
        columns[name] = column
    return pa.table(columns)


def write_pages(pages: Iterator[pa.Table], path: Path) -> int:
    """Write every page to ``path``: Parquet for ``.parquet``, else CSV; the rows written."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    writer: Any = None
    rows = 0
    try:
        for page in pages:
            if path.suffix == ".parquet":
                writer = writer or pq.ParquetWriter(path, page.schema, compression="zstd")
                writer.write_table(page)
            else:
                flat = csv_types(page)
                writer = writer or pa_csv.CSVWriter(path, flat.schema)
                writer.write_table(flat)
            rows += page.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows
