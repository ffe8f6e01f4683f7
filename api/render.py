"""Rows as the client asked for them: JSON (default), CSV, Parquet or Arrow IPC.

The format comes from ``format=`` when given, else the ``Accept`` header. JSON
wraps the rows with the cursor and flags; the tabular formats carry those in
``X-K2-*`` headers (and a ``Link: rel="next"``) so the body is only rows.
JSON, CSV and Arrow are streamed a slice at a time; Parquet is written whole
(its footer comes last) and sent with a length.

JSON keeps prices exact (see :mod:`k2_etl.query.output`, shared with `k2 query`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import msgspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from flask import Response, request
from werkzeug.exceptions import NotAcceptable

from api import metrics
from k2_etl.errors import QueryError
from k2_etl.query.engine import Result
from k2_etl.query.output import csv_types, json_array, json_types

MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
}
FORMATS = tuple(MEDIA_TYPES)
SLICE_ROWS = 10_000  # rows encoded per streamed piece
_encode = msgspec.json.Encoder().encode


def negotiated(format_param: str | None) -> str:
    """The response format: ``format=`` wins, then the Accept header; JSON when neither says."""
    if format_param is not None:
        if format_param not in MEDIA_TYPES:
            raise QueryError("format", format_param, f"unknown format; one of {', '.join(FORMATS)}")
        return format_param
    if not request.accept_mimetypes or request.accept_mimetypes.provided is False:
        return "json"
    best = request.accept_mimetypes.best_match(list(MEDIA_TYPES.values()))
    if best is None:
        served = ", ".join(MEDIA_TYPES.values())
        raise NotAcceptable(f"Accept: {request.headers.get('Accept')}; this API serves {served}")
    return next(name for name, media in MEDIA_TYPES.items() if media == best)


def rows_response(result: Result, fmt: str, **extra: Any) -> Response:
    """A page of rows with its cursor (JSON envelope, or headers for the tabular formats)."""
    headers = {"X-K2-Count": str(result.rows.num_rows), "X-K2-Partial": str(result.partial).lower()}
    if result.snapshot_id is not None:
        headers["X-K2-Snapshot-Id"] = str(result.snapshot_id)
    if result.cursor is not None:
        headers["X-K2-Next-Cursor"] = result.cursor
        headers["Link"] = f'<{_next_url(result.cursor)}>; rel="next"'
    if fmt != "json":
        return table_response(result.rows, fmt, headers)
    envelope = {"count": result.rows.num_rows, "next_cursor": result.cursor, "partial": result.partial,
                "snapshot_id": result.snapshot_id, **extra}  # fmt: skip
    return Response(_timed(_json_stream(result.rows, envelope)), headers=headers, mimetype=MEDIA_TYPES["json"])


def table_response(rows: pa.Table, fmt: str, headers: dict[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if fmt == "json":
        body: Any = _timed(_json_stream(rows, {"count": rows.num_rows}))
    elif fmt == "csv":
        body = _timed(_csv_stream(rows))
    elif fmt == "arrow":
        body = _timed(_arrow_stream(rows))
    else:
        body = b"".join(_timed(_parquet(rows)))  # written whole: its footer comes last
    return Response(body, headers=headers, mimetype=MEDIA_TYPES[fmt])


def _parquet(rows: pa.Table) -> Iterator[bytes]:
    sink = io.BytesIO()
    pq.write_table(rows, sink, compression="zstd")
    yield sink.getvalue()


def _timed(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """The body's pieces, the time spent making them observed as the request's ``encode`` stage
    (a streamed body is made after the view returns, as the server sends it)."""
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    return _timing(pieces, endpoint)


def _timing(pieces: Iterator[bytes], endpoint: str) -> Iterator[bytes]:
    spent = 0.0
    try:
        while True:
            started = time.perf_counter()
            piece = next(pieces, None)
            spent += time.perf_counter() - started
            if piece is None:
                return
            yield piece
    finally:
        metrics.STAGE.labels(endpoint, "encode").observe(spent)


def jsonable(rows: pa.Table) -> list[dict[str, Any]]:
    """Rows as JSON values (exact decimals as strings, ISO times), converted column by column."""
    return json_types(rows).to_pylist()


def json_body(value: Any) -> bytes:
    return _encode(value)


def _json_stream(rows: pa.Table, envelope: dict[str, Any]) -> Iterator[bytes]:
    head = _encode(envelope)
    yield head[:-1] + b',"data":['  # the envelope's fields, then the rows
    for start in range(0, rows.num_rows, SLICE_ROWS):
        piece = json_array(rows.slice(start, SLICE_ROWS))
        yield (b"," if start else b"") + piece[1:-1]
    yield b"]}"


def _csv_stream(rows: pa.Table) -> Iterator[bytes]:
    flat = csv_types(rows)
    for start in range(0, max(flat.num_rows, 1), SLICE_ROWS):
        sink = io.BytesIO()
        options = pa_csv.WriteOptions(include_header=start == 0)
        pa_csv.write_csv(flat.slice(start, SLICE_ROWS), sink, write_options=options)
        yield sink.getvalue()


def _arrow_stream(rows: pa.Table) -> Iterator[bytes]:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        yield _drain(sink)
        for batch in rows.to_batches(max_chunksize=SLICE_ROWS):
            writer.write_batch(batch)
            yield _drain(sink)
    yield _drain(sink)


def _drain(sink: io.BytesIO) -> bytes:
    data = sink.getvalue()
    sink.seek(0)
    sink.truncate()
    return data


def _next_url(cursor: str) -> str:
    args = [(k, v) for k, v in request.args.items(multi=True) if k != "cursor"]
    return f"{request.path}?{urlencode([*args, ('cursor', cursor)])}"
