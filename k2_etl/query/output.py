"""Query results as text: JSON values and CSV columns, shared by the API and `k2 query`.

JSON keeps prices exact: decimals are strings ("40.49000000"), times ISO-8601 UTC
with microseconds and a Z, dates ISO, bytes base64. CSV has no lists or bytes:
lists become their JSON text, bytes base64. Columns are converted with Arrow
compute (whole columns), not value by value in Python, except lists and bytes.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from arro3.io import write_json

from k2_etl.config import cores

_encode = msgspec.json.Encoder().encode


def json_types(rows: pa.Table) -> pa.Table:
    """The rows with every value as JSON shows it (decimals, times and dates as strings).

    From PARALLEL_ROWS rows on, the columns are converted side by side: Arrow's kernels release
    the GIL, and a request's conversion then uses the cores a lone request leaves idle (26,000
    trades with quotes: 13 ms against 18 ms on two cores).
    """
    if rows.num_rows >= PARALLEL_ROWS and rows.num_columns > 1:
        columns = list(_converters().map(_json_column, rows.columns))
    else:
        columns = [_json_column(column) for column in rows.columns]
    return pa.table(dict(zip(rows.column_names, columns, strict=True)))


PARALLEL_ROWS = 4_096


@functools.cache
def _converters() -> ThreadPoolExecutor:
    """Made on first use, so in each API worker after gunicorn forked it (threads do not survive a fork)."""
    return ThreadPoolExecutor(max_workers=cores(), thread_name_prefix="k2-json")


def json_array(rows: pa.Table) -> bytes:
    """The rows as a JSON array of objects (values as :func:`json_types` makes them).

    Arrow's own JSON writer (arrow-rs, through ``arro3-io``) writes the objects from the columns,
    without a Python value per cell: for a 1,000-trade page 1.8 ms against 3.4 ms for msgspec over
    ``to_pylist()``, for 26,000 trades with their quotes 37 ms against 60 ms (DuckDB's ``to_json``
    took 63 ms; Arrow string kernels 86 ms). Its bytes are msgspec's for every type it is given
    (strings escaped alike, every character tested), so a table with a type it writes otherwise
    (floats: ``1.0e16`` for ``1e16``; structs, maps) is encoded by msgspec instead.
    """
    values = json_types(rows)
    if not all(_arrow_writes_it(field.type) for field in values.schema):
        return _encode(values.to_pylist())
    sink = io.BytesIO()
    write_json(values, sink, explicit_nulls=True)  # holds the GIL, as msgspec does; about 600 MB/s
    return sink.getvalue()


def _arrow_writes_it(kind: pa.DataType) -> bool:
    """Whether Arrow's JSON writer writes values of ``kind`` as msgspec does."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _arrow_writes_it(kind.value_type)
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)
    )


def _iso_times(values: pa.Array) -> pa.Array:
    """ISO-8601 UTC with microseconds and a Z. Arrow's strftime converts through the time zone
    (~1.2 µs a value); the naive UTC value cast to text and patched was ~12 times faster."""
    naive = pc.cast(values, pa.timestamp("us", tz=values.type.tz) if values.type.unit != "us" else values.type)
    naive = naive.cast(pa.timestamp("us"))  # the same UTC instant, without the zone
    text = pc.replace_substring(pc.cast(naive, pa.string()), " ", "T", max_replacements=1)
    return pc.binary_join_element_wise(text, "Z", "")


def _json_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_decimal(kind):
        return pc.cast(column, pa.string())
    if pa.types.is_timestamp(kind):
        return pa.chunked_array([_iso_times(chunk) for chunk in column.chunks], pa.string())
    if pa.types.is_date(kind):
        return pc.cast(column, pa.string())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pa.chunked_array([pa.array(_base64(chunk), pa.string()) for chunk in column.chunks], pa.string())
    return column


DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"  # an exact decimal as JSON writes it: "40.49000000"


def json_schema(kind: pa.DataType, nullable: bool = True) -> dict[str, Any]:
    """The JSON Schema of a column's values as :func:`json_types` writes them: the API's response
    schemas are made of these, so the document says what the encoding does."""
    schema: dict[str, Any]
    if pa.types.is_decimal(kind):
        schema = {"type": "string", "pattern": DECIMAL_PATTERN}
    elif pa.types.is_timestamp(kind):
        schema = {"type": "string", "format": "date-time"}
    elif pa.types.is_date(kind):
        schema = {"type": "string", "format": "date"}
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        schema = {"type": "string", "contentEncoding": "base64"}
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        schema = {"type": "string"}
    elif pa.types.is_boolean(kind):
        schema = {"type": "boolean"}
    elif pa.types.is_integer(kind):
        schema = {"type": "integer"}
    elif pa.types.is_floating(kind):
        schema = {"type": "number"}
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        schema = {"type": "array", "items": json_schema(kind.value_type, kind.value_field.nullable)}
    elif pa.types.is_struct(kind):
        schema = {"type": "object", "properties": {f.name: json_schema(f.type, f.nullable) for f in kind}}
    else:
        schema = {}  # any value (no such column today)
    return {"anyOf": [schema, {"type": "null"}]} if nullable and schema else schema


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
