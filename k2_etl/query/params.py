"""Query parameters as people type them (the API and `k2 query` parse them here, the same way).

Times: ISO-8601 (``2026-11-02``, ``2026-11-02T23:00:00Z``, with an offset; a time
without a zone is UTC) or a number since the epoch, whose unit is read from its
size as market-data feeds mix them: seconds (with a fraction), milliseconds,
microseconds, nanoseconds. Intervals: ``<n><unit>`` with s, m, h or d.
Each function raises :class:`QueryError` naming the parameter, the value and why.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from k2_etl.errors import QueryError

MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2262, 1, 1, tzinfo=UTC)  # nanoseconds since the epoch overflow int64 after 2262
_EPOCH_UNITS = ((10**11, 1), (10**14, 10**3), (10**17, 10**6), (10**20, 10**9))  # below -> per second
_INTERVAL = re.compile(r"^\s*(\d{1,6})\s*([smhd])\s*$")
_UNIT = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
SYMBOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/^=+ -]{0,39}$"  # tickers, RICs, futures; no quotes or ;
EXCHANGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,15}$"  # MIC codes and vendor codes
_SYMBOL = re.compile(SYMBOL_PATTERN)
TIME_HELP = "ISO-8601 (a time without a zone is UTC; a date is its midnight UTC) or epoch s/ms/us/ns"


def parse_time(parameter: str, text: str) -> datetime:
    """An instant from ISO-8601 or an epoch number (see the module docstring)."""
    value = text.strip()
    if not value:
        raise QueryError(parameter, text, f"empty; expected {TIME_HELP}")
    at = _epoch(value) if _looks_numeric(value) else _iso(value)
    if at is None:
        raise QueryError(parameter, text, f"not a time; expected {TIME_HELP}")
    if not MIN_TIME <= at < MAX_TIME:
        raise QueryError(parameter, text, "outside 1970-01-01 .. 2262-01-01")
    return at


def parse_day(parameter: str, text: str) -> date:
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise QueryError(parameter, text, "not a date; expected YYYY-MM-DD") from None
    if not MIN_TIME.date() < day < MAX_TIME.date():
        raise QueryError(parameter, text, "outside 1970-01-02 .. 2261-12-31")
    return day


def parse_interval(parameter: str, text: str) -> timedelta:
    """``5m`` -> 5 minutes. Whether the engine accepts the width is its own check."""
    match = _INTERVAL.match(text)
    if match is None:
        raise QueryError(parameter, text, "expected a number and a unit s, m, h or d, e.g. 1s, 5m, 1h, 1d")
    return int(match.group(1)) * _UNIT[match.group(2)]


def parse_symbols(parameter: str, values: list[str]) -> list[str]:
    """Symbols given repeated (``symbol=A&symbol=B``) or comma-separated (``symbol=A,B``)."""
    symbols = [s.strip() for value in values for s in value.split(",") if s.strip()]
    for symbol in symbols:
        if not _SYMBOL.match(symbol):
            raise QueryError(parameter, symbol, "not a symbol: letters, digits and . _ : / ^ = + - space, 1-40 long")
    return list(dict.fromkeys(symbols))


def _looks_numeric(value: str) -> bool:
    return value.lstrip("+-").replace(".", "", 1).isdigit()


def _epoch(value: str) -> datetime | None:
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    for bound, per_second in _EPOCH_UNITS:
        if abs(number) < bound:
            micros = int(number * 1_000_000 / per_second)
            try:
                return MIN_TIME + timedelta(microseconds=micros)
            except OverflowError:
                return None
    return None


def _iso(value: str) -> datetime | None:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
