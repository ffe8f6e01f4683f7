"""What a format file may say: a typed, validated model of the TOML.

A format describes one vendor's files: how to find each record type's files,
their columns, and how columns become record fields. Loading it validates
everything up front, so a typo in a format file is one clear error before any
data moves, not a thousand rejected rows.
"""

from __future__ import annotations

import fnmatch
import re
import zoneinfo
from pathlib import PurePath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RecordTypeName = Literal["trade", "quote", "reference_data"]

#: Record fields a format may map from columns, per record type (the rest are
#: computed: event_id, lineage, quality flags, ingest time).
MAPPABLE: dict[str, frozenset[str]] = {
    "trade": frozenset(
        {"symbol", "exchange", "price", "size", "currency", "sequence_number", "conditions", "venue", "buyer_id"}
    ),
    "quote": frozenset(
        {
            "symbol",
            "exchange",
            "bid_price",
            "bid_size",
            "ask_price",
            "ask_size",
            "currency",
            "sequence_number",
            "conditions",
        }
    ),
    "reference_data": frozenset(
        {"symbol", "exchange", "instrument_id", "name", "isin", "currency", "valid_from", "valid_to"}
    ),
}
REQUIRED: dict[str, frozenset[str]] = {
    "trade": frozenset({"price", "size"}),
    "quote": frozenset(),  # one side may be empty; a quote with neither is rejected row by row
    "reference_data": frozenset({"symbol"}),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timestamp(_Strict):
    """How event time is read: one column, or a date column plus a time column.

    ``format`` uses DuckDB's strptime codes (``%m/%d/%Y %H:%M:%S.%g``: %g is
    milliseconds, %f microseconds); ``iso8601`` reads ISO-8601 with a zone
    offset (``2026-11-25T00:00:01.5Z``). Without an offset, times are in the
    format's ``timezone``.
    """

    column: str | None = None
    date: str | None = None
    time: str | None = None
    format: str = "iso8601"

    @model_validator(mode="after")
    def _one_source(self) -> Timestamp:
        if (self.column is None) == (self.date is None or self.time is None):
            raise ValueError("give either `column`, or both `date` and `time`")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,) if self.column else (self.date or "", self.time or "")


class Session(_Strict):
    """Regular trading hours in exchange local time; trades outside are kept and flagged."""

    open: str = Field(pattern=r"^\d{2}:\d{2}$")
    close: str = Field(pattern=r"^\d{2}:\d{2}$")


class SymbolFromFileName(_Strict):
    """The symbol is not in the rows: the file name (without extension) is an instrument id
    looked up in a reference file (searched in the file's folder, then its parents)."""

    reference_file: str
    key_column: str
    symbol_column: str
    valid_from_column: str | None = None
    valid_to_column: str | None = None
    date_format: str = "%Y-%m-%d"


class KnownSymbols(_Strict):
    """Rows' symbols must appear in this reference file, when one is found (next to the file or above)."""

    reference_file: str
    symbol_column: str = "symbol"


class RecordSpec(_Strict):
    """One record type's files within a format."""

    type: RecordTypeName
    match: list[str] = Field(
        min_length=1, description="glob patterns on the file's path (posix), e.g. '*/trades/*.csv'"
    )
    header: bool = True
    columns: list[str] = Field(min_length=1, description="column names in file order (for headered files: the header)")
    fields: dict[str, str] = Field(description="record field -> column")
    timestamp: Timestamp | None = None
    date_format: str = "%Y-%m-%d"
    conditions_separator: str = " "
    scales: dict[str, int] = Field(default_factory=dict, description="column -> max decimal places (<= 8)")

    @model_validator(mode="after")
    def _consistent(self) -> RecordSpec:
        unknown = sorted(set(self.fields) - MAPPABLE[self.type])
        if unknown:
            raise ValueError(f"{self.type}: fields {unknown} cannot be mapped; mappable: {sorted(MAPPABLE[self.type])}")
        missing = sorted(REQUIRED[self.type] - set(self.fields))
        if missing:
            raise ValueError(f"{self.type}: fields {missing} must be mapped")
        used = list(self.fields.values()) + list(self.timestamp.columns if self.timestamp else ())
        absent = sorted({c for c in used if c not in self.columns} | {c for c in self.scales if c not in self.columns})
        if absent:
            raise ValueError(f"{self.type}: columns {absent} are used but not in `columns`")
        if self.type != "reference_data" and self.timestamp is None:
            raise ValueError(f"{self.type}: a `timestamp` is required")
        if any(not 0 <= s <= 8 for s in self.scales.values()):
            raise ValueError("scales must be between 0 and 8 (the schemas' scale)")
        return self

    def matches(self, path: PurePath) -> bool:
        """Patterns apply to the path as given and, for folders, to the absolute path."""
        text = path.as_posix()
        return any(fnmatch.fnmatch(text, p) or fnmatch.fnmatch(path.name, p) for p in self.match)


class Format(_Strict):
    """A vendor file format (one TOML file)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    description: str = ""
    delimiter: str = Field(",", min_length=1, max_length=1)
    timezone: str = "UTC"
    exchange_timezones: dict[str, str] = Field(
        default_factory=dict,
        description="time zone of each exchange's trading day, when a column gives the exchange "
        "(the trading day of other exchanges is the date in `timezone`)",
    )
    exchange: str | None = Field(None, description="constant exchange code when no column gives it")
    currency: str | None = Field(None, description="constant currency when no column gives it")
    session: Session | None = None
    symbol_from_file_name: SymbolFromFileName | None = None
    known_symbols: KnownSymbols | None = None
    symbol_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,31}$"
    record: list[RecordSpec] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("exchange_timezones")
    @classmethod
    def _exchange_tzs(cls, value: dict[str, str]) -> dict[str, str]:
        for zone in value.values():
            cls._tz(zone)
        return value

    @field_validator("symbol_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        re.compile(value)
        return value

    @model_validator(mode="after")
    def _symbol_source(self) -> Format:
        for spec in self.record:
            if "exchange" not in spec.fields and self.exchange is None:
                raise ValueError(f"{spec.type}: map `exchange` to a column or give a constant `exchange`")
            if spec.type == "reference_data":
                continue
            if "symbol" not in spec.fields and self.symbol_from_file_name is None:
                raise ValueError(f"{spec.type}: map `symbol` to a column or give [symbol_from_file_name]")
        return self

    def spec_for(self, path: PurePath) -> RecordSpec | None:
        """The record spec whose patterns match ``path`` (the first, in file order)."""
        return next((spec for spec in self.record if spec.matches(path)), None)
