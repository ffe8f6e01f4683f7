"""/v1 about the data: symbols, reference data, sequence events, rejects, table snapshots."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from api.errors import problem
from api.models import (
    ListQuery,
    RejectsQuery,
    SequenceEventsQuery,
    SnapshotsQuery,
    SymbolPath,
    TablePath,
)
from api.render import negotiated, table_response
from api.responses import (
    V1_ERRORS,
    ExchangeList,
    ReferenceList,
    RejectsPage,
    SequenceEventsPage,
    SnapshotsPage,
    SymbolList,
)
from api.routes.market import KEY_OR_OPEN, answered, engine, known
from k2_etl.instants import default_range
from k2_etl.lake.tables import TABLES_BY_NAME

LOG_SPAN = timedelta(days=7)  # sequence events and rejects with no start: the week before end
blueprint = APIBlueprint("catalog", __name__, url_prefix="/v1", abp_tags=[Tag(name="catalog")],
                         abp_responses=V1_ERRORS, abp_security=KEY_OR_OPEN)  # fmt: skip


@blueprint.get(
    "/symbols",
    summary="Every symbol: name, ISIN, currency, exchanges, trade count, first and last trade",
    responses={200: SymbolList},
)
def symbols(query: ListQuery) -> Response:
    fmt = negotiated(query.format)
    rows = engine().symbols()
    return table_response(rows, fmt, {"X-K2-Count": str(rows.num_rows)})


@blueprint.get(
    "/exchanges",
    summary="Every exchange: its time zone (its trading days, and bars in tz=exchange) and symbols traded",
    responses={200: ExchangeList},
)
def exchanges(query: ListQuery) -> Response:
    """Zones as the formats declare them (`exchange_timezones`, or a one-exchange format's
    `timezone`); null: no format declares one (its trading days are UTC days)."""
    fmt = negotiated(query.format)
    rows = engine().exchanges()
    return table_response(rows, fmt, {"X-K2-Count": str(rows.num_rows)})


@blueprint.get(
    "/reference/<symbol>", summary="A symbol's reference data, oldest validity first", responses={200: ReferenceList}
)
def reference(path: SymbolPath, query: ListQuery) -> Response:
    fmt = negotiated(query.format)
    known([path.symbol])
    rows = engine().reference(path.symbol)
    if rows.num_rows == 0:
        return problem(404, "no_reference_data", f"no reference data for {path.symbol}", "symbol", path.symbol)
    return table_response(rows, fmt, {"X-K2-Count": str(rows.num_rows)})


def _log_range(query: SequenceEventsQuery | RejectsQuery) -> tuple[datetime, datetime]:
    return default_range(query.start, query.end, span=LOG_SPAN)


@blueprint.get(
    "/sequence-events",
    summary="Exchange sequence anomalies: gaps, out of order, resets, duplicates",
    responses={200: SequenceEventsPage},
)
def sequence_events(query: SequenceEventsQuery) -> Response:
    """By the event time of the record that showed them, in (event time, event id) order."""
    fmt = negotiated(query.format)
    start, end = _log_range(query)
    result = engine().sequence_events(start=start, end=end, symbols=query.symbol, exchange=query.exchange,
                                      kind=query.kind, limit=query.limit, cursor=query.cursor)  # fmt: skip
    return answered("/v1/sequence-events", result, fmt)


@blueprint.get(
    "/rejects",
    summary="The quarantine: rejected rows and messages, each saying what was wrong",
    responses={200: RejectsPage},
)
def rejects(query: RejectsQuery) -> Response:
    """By rejection time; `field`, `value` and `reason` say what was wrong, `source`/`line_number` or
    `kafka_topic`/`kafka_partition`/`kafka_offset` where it came from."""
    fmt = negotiated(query.format)
    start, end = _log_range(query)
    result = engine().rejects(start=start, end=end, stage=query.stage, record_type=query.record_type,
                              symbol=query.symbol, limit=query.limit, cursor=query.cursor)  # fmt: skip
    return answered("/v1/rejects", result, fmt)


@blueprint.get(
    "/tables/<table>/snapshots",
    summary="A table's snapshots, newest first (for time travel and audits)",
    responses={200: SnapshotsPage},
)
def snapshots(path: TablePath, query: SnapshotsQuery) -> Response:
    fmt = negotiated(query.format)
    if path.table not in TABLES_BY_NAME:
        return problem(404, "unknown_table", f"no table {path.table}; one of {', '.join(TABLES_BY_NAME)}",
                       "table", path.table)  # fmt: skip
    result = engine().snapshots(path.table, limit=query.limit, cursor=query.cursor)
    return answered("/v1/tables/<table>/snapshots", result, fmt)
