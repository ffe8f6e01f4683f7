"""Query parameters as people type them (the API and `k2 query` parse them here, the same way).

Intervals: ``<n><unit>`` with s, m, h or d, or ``week`` (``1w``) or ``month`` (``1mo``); bar
time zones and origins; symbols and exchanges by pattern. Times and ranges are parsed by
:mod:`k2_etl.instants` (every entry point's times, not only queries'). Each function raises
:class:`QueryError` naming the parameter, the value and why.
"""

from __future__ import annotations

import re
from datetime import timedelta

from k2_etl.errors import QueryError
from k2_etl.query.calendar import EXCHANGE_ZONE, BarsBy, CalendarUnit, Interval, zone

_INTERVAL = re.compile(r"^\s*(\d{1,6})\s*([smhd])\s*$")
_ORIGIN = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2}))?$")
_CALENDAR: dict[str, CalendarUnit] = {"1w": "week", "week": "week", "1mo": "month", "month": "month"}
_UNIT = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
SYMBOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/^=+ -]{0,39}$"  # tickers, RICs, futures; no quotes or ;
EXCHANGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,15}$"  # MIC codes and vendor codes
_SYMBOL = re.compile(SYMBOL_PATTERN)


def parse_interval(parameter: str, text: str) -> Interval:
    """``5m`` -> 5 minutes, ``1w`` -> ``"week"``. Whether the engine accepts the width is its own check."""
    calendar = _CALENDAR.get(text.strip().lower())
    if calendar is not None:
        return calendar
    match = _INTERVAL.match(text)
    if match is None:
        raise QueryError(
            parameter, text, "expected a number and a unit s, m, h or d (e.g. 1s, 5m, 1h, 1d), or week or month"
        )
    return int(match.group(1)) * _UNIT[match.group(2)]


def parse_symbols(parameter: str, values: list[str]) -> list[str]:
    """Symbols given repeated (``symbol=A&symbol=B``) or comma-separated (``symbol=A,B``)."""
    symbols = [s.strip() for value in values for s in value.split(",") if s.strip()]
    for symbol in symbols:
        if not _SYMBOL.match(symbol):
            raise QueryError(parameter, symbol, "not a symbol: letters, digits and . _ : / ^ = + - space, 1-40 long")
    return list(dict.fromkeys(symbols))


def parse_zone(parameter: str, text: str) -> str:
    """``UTC``, ``exchange`` (each exchange's own zone) or an IANA zone name, checked."""
    text = text.strip()
    if text != EXCHANGE_ZONE:
        zone(text, parameter)
    return text


def parse_origin(parameter: str, text: str) -> timedelta:
    """``HH:MM[:SS]`` -> the time of day past midnight local bars begin from."""
    match = _ORIGIN.match(text.strip())
    hours, minutes, seconds = (int(g or 0) for g in match.groups()) if match else (99, 0, 0)
    if hours > 23 or minutes > 59 or seconds > 59:
        raise QueryError(parameter, text, "expected a time of day HH:MM or HH:MM:SS, e.g. 09:30")
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def parse_by(parameter: str, text: str) -> BarsBy:
    """``symbol`` (the exchanges' trades together) or ``exchange`` (bars per exchange)."""
    if text not in ("symbol", "exchange"):
        raise QueryError(parameter, text, "expected symbol (consolidated) or exchange (bars per exchange)")
    return "symbol" if text == "symbol" else "exchange"
