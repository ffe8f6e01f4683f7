"""/v1 market data: trades, quotes, trades with the prevailing quote, OHLCV bars, day summaries."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from flask import Response, current_app
from flask_openapi3 import APIBlueprint, Tag

from api import metrics
from api.errors import UnknownSymbol
from api.models import BarsQuery, JoinQuery, RangeQuery, RowsQuery, SummaryPath, SummaryQuery
from api.render import json_body, jsonable, negotiated, rows_response, table_response
from api.responses import V1_ERRORS, BarsPage, DaySummary, QuotesPage, TradesPage, TradesWithQuotesPage
from k2_etl.instants import default_range
from k2_etl.query.engine import SUMMARY_COLUMNS, QueryEngine, Result

KEY_OR_OPEN: list[dict[str, list[str]]] = [{"api_key": []}, {}]  # an X-API-Key when K2_API_KEYS is set
blueprint = APIBlueprint("market", __name__, url_prefix="/v1", abp_tags=[Tag(name="market data")],
                         abp_responses=V1_ERRORS, abp_security=KEY_OR_OPEN)  # fmt: skip


def engine() -> QueryEngine:
    return current_app.extensions["k2.engine"]


def known(symbols: list[str]) -> list[str]:
    """The symbols, or 404 naming those no trade, quote or reference row has."""
    missing = engine().unknown(symbols)
    if missing:
        raise UnknownSymbol(missing)
    return symbols


def time_range(query: RangeQuery) -> dict[str, Any]:
    start, end = default_range(query.start, query.end)
    resuming = query.cursor is not None or query.snapshot_id is not None  # the symbols were known then
    symbols = query.symbol if resuming else known(query.symbol)
    return {"symbols": symbols, "start": start, "end": end, "exchange": query.exchange,
            "cursor": query.cursor, "snapshot_id": query.snapshot_id, "as_of": query.as_of}  # fmt: skip


def answered(endpoint: str, result: Result, fmt: str, **extra: Any) -> Response:
    metrics.ROWS.labels(endpoint).inc(result.rows.num_rows)
    if result.partial:
        metrics.PARTIAL.labels(endpoint).inc()
    return rows_response(result, fmt, **extra)


def _fields(values: list[str] | None) -> list[str] | None:
    return [f.strip() for v in values for f in v.split(",") if f.strip()] if values else None


@blueprint.get(
    "/trades", summary="Trades of one or more symbols in a time range, a page at a time", responses={200: TradesPage}
)
def trades(query: RowsQuery) -> Response:
    """In (event time, sequence number, event id) order; follow `next_cursor` for the next page."""
    fmt = negotiated(query.format)
    result = engine().page("trades", limit=query.limit, fields=_fields(query.fields), **time_range(query))
    return answered("/v1/trades", result, fmt)


@blueprint.get(
    "/quotes", summary="Quotes of one or more symbols in a time range, a page at a time", responses={200: QuotesPage}
)
def quotes(query: RowsQuery) -> Response:
    """In (event time, sequence number, event id) order; follow `next_cursor` for the next page."""
    fmt = negotiated(query.format)
    result = engine().page("quotes", limit=query.limit, fields=_fields(query.fields), **time_range(query))
    return answered("/v1/quotes", result, fmt)


@blueprint.get(
    "/trades/with-quotes",
    summary="Each trade with the bid/ask prevailing at its time, spread and mid",
    responses={200: TradesWithQuotesPage},
)
def trades_with_quotes(query: JoinQuery) -> Response:
    """An as-of join per symbol and exchange: the last quote at or before each trade (a quote at the
    same instant counts as before). Quote columns are null when no quote came in the day before."""
    fmt = negotiated(query.format)
    result = engine().trades_with_quotes(limit=query.limit, **time_range(query))
    return answered("/v1/trades/with-quotes", result, fmt)


@blueprint.get(
    "/bars",
    summary="OHLCV bars with VWAP and trade count, 1s to 1d, week or month, in UTC or the exchange's time zone",
    responses={200: BarsPage},
)
def bars(query: BarsQuery) -> Response:
    """In (bar start, symbol, exchange) order; bars without trades are absent. Bars are cut in `tz`
    (UTC by default; `exchange`: an ASX 1d bar is a Sydney trading date, a week begins on the local
    Monday) from `origin` past local midnight; intraday bars count elapsed time from there, so on a
    daylight-saving change they stay on the wall clock's hours. `by=exchange` gives a bar per
    exchange. VWAP is exact (decimal notional / volume, rounded half-even to 8 places)."""
    fmt = negotiated(query.format)
    result = engine().bars(interval=query.interval, tz=query.tz, origin=query.origin, by=query.by, day=query.day,
                           limit=query.limit, **time_range(query))  # fmt: skip
    return answered("/v1/bars", result, fmt)


@blueprint.get(
    "/summary/<symbol>/<date>",
    summary="A symbol's trading day: OHLC, volume, VWAP, trade and quote counts",
    responses={200: DaySummary},
)
def summary(path: SummaryPath, query: SummaryQuery) -> Response:
    """The day is the trading date in the exchange's time zone (an ASX day begins the evening before, UTC)."""
    fmt = negotiated(query.format)
    known([path.symbol])
    row = engine().summary(path.symbol, path.date, exchange=query.exchange, snapshot_id=query.snapshot_id,
                           as_of=query.as_of)  # fmt: skip
    metrics.ROWS.labels("/v1/summary/<symbol>/<date>").inc()
    table = pa.Table.from_pylist([row], SUMMARY_COLUMNS)
    if fmt == "json":  # one object, not a list
        return Response(json_body(jsonable(table)[0]), mimetype="application/json")
    return table_response(table, fmt)
