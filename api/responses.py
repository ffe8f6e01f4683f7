"""What every endpoint answers, as the OpenAPI document declares it: each 2xx with its model (and
its CSV, Parquet and Arrow forms and headers), and every error in one shape.

Rows are made from the Arrow columns the engine answers with (a table's are its ``.avsc``'s,
with their docs) through :func:`k2_etl.query.output.json_schema`, the rule the JSON encoding
follows, so the document cannot drift from the data. A table may gain columns (schema
evolution): rows do not forbid other properties. The schemathesis test in
tests/integration/test_api.py checks real answers against this document.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from k2_etl.lake.tables import TABLES_BY_NAME
from k2_etl.query.engine import (
    BAR_COLUMNS_BY_EXCHANGE,
    EXCHANGE_COLUMNS,
    SNAPSHOT_COLUMNS,
    SUMMARY_COLUMNS,
    SYMBOL_COLUMNS,
    TRADES_WITH_QUOTES_COLUMNS,
)
from k2_etl.query.output import json_schema

TABULAR = {  # the other formats' bodies: the same rows, as bytes
    "text/csv": {"schema": {"type": "string"}},
    "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
    "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}},
}
COUNT_HEADER = {"X-K2-Count": {"description": "Rows in this answer", "schema": {"type": "integer", "minimum": 0}}}
PAGE_HEADERS = {
    **COUNT_HEADER,
    "X-K2-Partial": {"description": "The time budget ran out first; the cursor goes on", "schema": {"type": "boolean"}},
    "X-K2-Snapshot-Id": {"description": "The snapshot read", "schema": {"type": "integer"}},
    "X-K2-Next-Cursor": {"description": "The cursor of the next page (absent: the last page)",
                         "schema": {"type": "string"}},
    "Link": {"description": 'The next page\'s URL: <...>; rel="next"', "schema": {"type": "string"}},
}  # fmt: skip
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before asking again", "required": True,
                               "schema": {"type": "integer", "minimum": 1}}}  # fmt: skip


class ErrorBody(BaseModel):
    """Every error: the status, a code, what was wrong, and for a bad parameter its name and value."""

    status: int
    error: str
    message: str
    parameter: str | None = None
    value: str | None = None


class Problem(BaseModel):
    """An error (every status other than 2xx, from Flask or from gunicorn itself)."""

    error: ErrorBody


class RateLimited(Problem):
    """Over the rate limit: ask again after Retry-After seconds."""

    model_config = ConfigDict(openapi_extra={"headers": RETRY_AFTER})  # type: ignore[typeddict-unknown-key]


class Unavailable(Problem):
    """A dependency cannot be read (``catalog_unavailable``, ``warehouse_unavailable``): ask again after
    Retry-After seconds."""

    model_config = ConfigDict(openapi_extra={"headers": RETRY_AFTER})  # type: ignore[typeddict-unknown-key]


#: Errors any request can meet: gunicorn's (a request it cannot read, a URL or headers too long), a body
#: over the limit, a bug.
TRANSPORT_ERRORS: dict[int | str, Any] = {400: Problem, 413: Problem, 414: Problem, 431: Problem, 500: Problem}
#: /v1: a bad parameter, no key, nothing found, no format the client accepts, the rate limit, a
#: dependency away, the time budget.
V1_ERRORS: dict[int | str, Any] = {**TRANSPORT_ERRORS, 401: Problem, 404: Problem, 406: Problem, 429: RateLimited,
                                   503: Unavailable, 504: Problem}  # fmt: skip


def row_model(
    name: str,
    columns: pa.Schema,
    doc: str,
    *,
    every_column: bool = True,
    optional: Collection[str] = (),
    openapi_extra: dict[str, Any] | None = None,
) -> type[BaseModel]:
    """A row as JSON: a property per column, typed and described as the column is. ``every_column``
    False: the request may choose the columns (``fields=``), so none is required; ``optional``: these
    are not."""
    fields: dict[str, Any] = {}
    for column in columns:
        schema = json_schema(column.type, column.nullable)
        described = (column.metadata or {}).get(b"doc")
        if described:
            schema = {**schema, "description": described.decode()}
        required = every_column and column.name not in optional
        fields[column.name] = (Annotated[Any, WithJsonSchema(schema)], ... if required else None)
    config = ConfigDict(json_schema_extra=_no_defaults, openapi_extra=openapi_extra or {})  # type: ignore[typeddict-unknown-key]
    return create_model(name, __doc__=doc, __config__=config, **fields)


def _no_defaults(schema: dict[str, Any]) -> None:
    """An optional column is absent when not chosen, not defaulted: no ``"default": null`` in the document."""
    for value in schema.get("properties", {}).values():
        value.pop("default", None)


class _Listing(BaseModel):
    """Every row at once (JSON; the other formats are the rows alone, their count in X-K2-Count)."""

    model_config = ConfigDict(openapi_extra={"content": TABULAR, "headers": COUNT_HEADER})  # type: ignore[typeddict-unknown-key]
    count: int = Field(ge=0, description="Rows in data")


class _Page(_Listing):
    """A page of rows in a stable order (JSON; the other formats are the rows alone, the rest in
    X-K2-* headers and Link)."""

    model_config = ConfigDict(openapi_extra={"content": TABULAR, "headers": PAGE_HEADERS})  # type: ignore[typeddict-unknown-key]
    next_cursor: str | None = Field(description="Pass as cursor= for the next page; null: this is the last")
    partial: bool = Field(
        description="The time budget ran out before limit rows or the range's end; the cursor goes on"
    )
    snapshot_id: int | None = Field(description="The snapshot read; null: the table had none then (no rows)")


def _rows(name: str, base: type[_Listing], row: type[BaseModel]) -> Any:
    return create_model(name, __base__=base, __doc__=base.__doc__,
                        data=(list[row], Field(description="The rows")))  # type: ignore[valid-type]  # fmt: skip


def _table_row(table: str, name: str, *, every_column: bool = True) -> type[BaseModel]:
    return row_model(name, TABLES_BY_NAME[table].schema().as_arrow(), f"A row of the {table} table",
                     every_column=every_column)  # fmt: skip


TradesPage = _rows("TradesPage", _Page, _table_row("trades", "Trade", every_column=False))
QuotesPage = _rows("QuotesPage", _Page, _table_row("quotes", "Quote", every_column=False))
TradeWithQuote = row_model("TradeWithQuote", TRADES_WITH_QUOTES_COLUMNS, "A trade, the prevailing quote, spread, mid")
TradesWithQuotesPage = _rows("TradesWithQuotesPage", _Page, TradeWithQuote)
Bar = row_model("Bar", BAR_COLUMNS_BY_EXCHANGE, "OHLCV, exact VWAP and trade count of a bar",
                optional={"exchange"})  # exchange: with by=exchange  # fmt: skip
BarsPage = _rows("BarsPage", _Page, Bar)
SequenceEventsPage = _rows("SequenceEventsPage", _Page, _table_row("sequence_events", "SequenceEvent"))
RejectsPage = _rows("RejectsPage", _Page, _table_row("rejects", "Reject"))
SnapshotsPage = _rows("SnapshotsPage", _Page, row_model("Snapshot", SNAPSHOT_COLUMNS, "A snapshot of a table"))
SymbolList = _rows("SymbolList", _Listing, row_model("Symbol", SYMBOL_COLUMNS, "A symbol and what K2 has of it"))
ExchangeList = _rows("ExchangeList", _Listing,
                     row_model("Exchange", EXCHANGE_COLUMNS, "An exchange: its time zone, symbols traded"))  # fmt: skip
ReferenceList = _rows("ReferenceList", _Listing, _table_row("reference_data", "ReferenceData"))
DaySummary = row_model("DaySummary", SUMMARY_COLUMNS, "A symbol's trading day", openapi_extra={"content": TABULAR})


class Check(BaseModel):
    status: Literal["up", "slow", "down"]
    latency_ms: float = Field(ge=0)
    detail: str = Field(description="What the check saw, or the dependency and the error's class")


class Health(BaseModel):
    """`healthy`, `degraded` (200) or `unhealthy` (503), with each check."""

    status: Literal["healthy", "degraded", "unhealthy"]
    checks: dict[str, Check] = Field(description="catalog, query_engine, and consumer when configured")


METRICS = {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}
