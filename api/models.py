"""Request parameters of every endpoint, as pydantic models: they validate the query string and,
through flask-openapi3, they are the OpenAPI document's parameters (one source for both).

Values are parsed by :mod:`k2_etl.query.params`, the same code `k2 query` uses, so a time or an
interval means the same on the command line and over HTTP. Unknown parameters are refused (a
misspelt ``symbols=`` is a 400, not a silently ignored filter).
"""

from __future__ import annotations

import copy
import functools
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from k2_etl.errors import QueryError
from k2_etl.instants import TIME_HELP, parse_day, parse_time
from k2_etl.query.engine import MAX_LIMIT, MAX_SYMBOLS
from k2_etl.query.params import (
    EXCHANGE_PATTERN,
    SYMBOL_PATTERN,
    parse_interval,
    parse_origin,
    parse_symbols,
    parse_zone,
)
from k2_etl.records import SEQUENCE_KINDS


@functools.cache
def _schema_of(model: type[BaseModel], *args: Any, **kwargs: Any) -> dict[str, Any]:
    return BaseModel.model_json_schema.__func__(model, *args, **kwargs)  # type: ignore[attr-defined]


def _parsed(parse: Any, parameter: str) -> Any:
    def parse_value(value: Any) -> Any:
        if value is None or not isinstance(value, str):
            return value
        try:
            return parse(parameter, value)
        except QueryError as error:
            raise ValueError(error.why) from None

    return BeforeValidator(parse_value)


def _time(parameter: str, description: str) -> Any:
    """A time parameter; empty (``end=``) is refused like any other non-time, and the document says
    so (leave a parameter out for its default)."""
    text = {"type": "string", "minLength": 1, "pattern": r"\S"}
    schema = {"anyOf": [text, {"type": "null"}], "description": f"{description} ({TIME_HELP})"}
    return Annotated[datetime | None, _parsed(parse_time, parameter), WithJsonSchema(schema)]


def _symbols(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        try:
            return parse_symbols("symbol", [str(v) for v in value])
        except QueryError as error:
            raise ValueError(error.why) from None
    return value


Symbols = Annotated[
    list[str],
    BeforeValidator(_symbols),
    Field(min_length=1, max_length=MAX_SYMBOLS),
    WithJsonSchema({"type": "array", "items": {"type": "string", "pattern": SYMBOL_PATTERN}, "minItems": 1,
                    "description": "Symbol(s): repeated (symbol=A&symbol=B) or comma-separated (symbol=A,B)"}),
]  # fmt: skip
Exchange = Annotated[str | None, Field(None, pattern=EXCHANGE_PATTERN, description="Exchange code, e.g. ASX")]
Format = Literal["json", "csv", "parquet", "arrow"]
FORMAT_HELP = "Response format (else from the Accept header; JSON by default)"
Cursor = Annotated[
    str | None, Field(None, min_length=1, max_length=512, description="The next_cursor of the previous page")
]
Interval = Annotated[
    timedelta | Literal["week", "month"],
    _parsed(parse_interval, "interval"),
    WithJsonSchema({"type": "string", "pattern": r"^(\d{1,6}[smhd]|1w|week|1mo|month)$",
                    "description": "Bar width 1s..1d dividing a day (1s, 5s, 1m, 5m, 15m, 1h, 1d, ...), or a "
                                   "calendar week (week, 1w) or month (month, 1mo)"}),
]  # fmt: skip
Zone = Annotated[
    str,
    _parsed(parse_zone, "tz"),
    WithJsonSchema({"type": "string", "minLength": 1, "default": "UTC",
                    "description": "Time zone the bars are cut in: days, weeks and months are local ones, intraday "
                                   "bars count from local midnight (or origin). UTC, exchange (each exchange's own "
                                   "zone: an ASX 1d bar is a Sydney trading date), or an IANA name"}),
]  # fmt: skip
Origin = Annotated[
    timedelta,
    _parsed(parse_origin, "origin"),
    WithJsonSchema({"type": "string", "pattern": r"^\d{2}:\d{2}(:\d{2})?$", "default": "00:00",
                    "description": "Local time of day the bars count from, HH:MM[:SS]: 10:00 puts 1h bars on the "
                                   "ASX's open, 09:30 on New York's half hours; days, weeks, months begin then"}),
]  # fmt: skip


class _Cached(BaseModel):
    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Cached: flask-openapi3 asks for the schema on every request to read the list
        parameters (~5 ms each time, measured); it is the same for the life of the process."""
        return copy.deepcopy(_schema_of(cls, *args, **kwargs))


class _Query(_Cached):
    model_config = ConfigDict(extra="forbid")


class _TimeTravel(_Query):
    as_of: _time("as_of", "Read the tables as they were at this time") = None  # type: ignore[valid-type]
    snapshot_id: int | None = Field(None, description="Read this snapshot (of trades, for joins and bars)")

    @model_validator(mode="after")
    def _one_way(self) -> _TimeTravel:
        if self.as_of is not None and self.snapshot_id is not None:
            raise ValueError("give as_of or snapshot_id, not both")
        return self


class RangeQuery(_TimeTravel):
    symbol: Symbols
    exchange: Exchange = None
    start: _time("start", "From this time, inclusive; default: a day before end") = None  # type: ignore[valid-type]
    end: _time("end", "To this time, exclusive; default: now") = None  # type: ignore[valid-type]
    cursor: Cursor = None
    format: Format | None = Field(None, description=FORMAT_HELP)


class RowsQuery(RangeQuery):
    limit: int = Field(1000, ge=1, le=MAX_LIMIT, description="Rows per page")
    fields: list[str] | None = Field(None, description="Columns to return (repeated or comma-separated)")


class JoinQuery(RangeQuery):
    limit: int = Field(1000, ge=1, le=MAX_LIMIT, description="Trades per page")


class BarsQuery(RangeQuery):
    interval: Interval
    day: Annotated[
        date | None,
        _parsed(parse_day, "day"),
        WithJsonSchema({"anyOf": [{"type": "string", "format": "date", "minLength": 1}, {"type": "null"}],
                        "description": "Instead of start and end: this calendar day, midnight to midnight in the "
                                       "bars' zone (tz=exchange: a trading date)"}),
    ] = None  # fmt: skip
    tz: Zone = "UTC"
    origin: Origin = Field("00:00", validate_default=True)  # parsed, so the document shows it as written
    by: Literal["symbol", "exchange"] = Field(
        "symbol",
        description="symbol: each symbol's trades on every exchange together (consolidated); exchange: "
        "bars per symbol and exchange (rows carry exchange)",
    )
    limit: int = Field(10_000, ge=1, le=MAX_LIMIT, description="Bars per page")

    @model_validator(mode="after")
    def _day_or_range(self) -> BarsQuery:
        if self.day is not None and (self.start is not None or self.end is not None):
            raise ValueError("give day, or start and end, not both")
        return self


class SummaryPath(_Cached):
    symbol: str = Field(pattern=SYMBOL_PATTERN, max_length=40)
    date: Annotated[
        date,
        _parsed(parse_day, "date"),
        WithJsonSchema({"type": "string", "format": "date", "description": "Trading date, YYYY-MM-DD"}),
    ]


class SummaryQuery(_TimeTravel):
    exchange: Exchange = None
    format: Format | None = Field(None, description=FORMAT_HELP)


class SymbolPath(_Cached):
    symbol: str = Field(pattern=SYMBOL_PATTERN, max_length=40)


class ListQuery(_Query):
    format: Format | None = Field(None, description=FORMAT_HELP)


class LogQuery(_Query):
    start: _time("start", "From this time, inclusive; default: 7 days before end") = None  # type: ignore[valid-type]
    end: _time("end", "To this time, exclusive; default: now") = None  # type: ignore[valid-type]
    limit: int = Field(1000, ge=1, le=MAX_LIMIT)
    cursor: Cursor = None
    format: Format | None = Field(None, description=FORMAT_HELP)


class SequenceEventsQuery(LogQuery):
    symbol: Annotated[list[str] | None, BeforeValidator(_symbols), Field(None, max_length=MAX_SYMBOLS)] = None
    exchange: Exchange = None
    kind: Literal[SEQUENCE_KINDS] | None = Field(None, description="gap, out_of_order, reset or duplicate")  # type: ignore[valid-type]


class RejectsQuery(LogQuery):
    stage: Literal["load", "consume"] | None = Field(None, description="Where it was rejected")
    record_type: Literal["trade", "quote", "reference_data"] | None = None
    symbol: str | None = Field(
        None, pattern=SYMBOL_PATTERN, max_length=40, description="Rows whose raw line has this symbol as a field"
    )


class TablePath(_Cached):
    table: str = Field(pattern=r"^[a-z_]{1,40}$")


class SnapshotsQuery(_Query):
    limit: int = Field(100, ge=1, le=MAX_LIMIT)
    cursor: Cursor = None
    format: Format | None = Field(None, description=FORMAT_HELP)
