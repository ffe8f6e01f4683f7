"""Query parameters as people type them (the API and `k2 query` parse them here, the same way).

Intervals: ``<n><unit>`` with s, m, h or d; symbols and exchanges by pattern. Times and ranges
are parsed by :mod:`k2_etl.instants` (every entry point's times, not only queries'). Each
function raises :class:`QueryError` naming the parameter, the value and why.
"""

from __future__ import annotations

import re
from datetime import timedelta

from k2_etl.errors import QueryError

_INTERVAL = re.compile(r"^\s*(\d{1,6})\s*([smhd])\s*$")
_UNIT = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
SYMBOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/^=+ -]{0,39}$"  # tickers, RICs, futures; no quotes or ;
EXCHANGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,15}$"  # MIC codes and vendor codes
_SYMBOL = re.compile(SYMBOL_PATTERN)


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
