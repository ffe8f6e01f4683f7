"""Instants and time ranges as people type them: one parser for every command, API parameter
and DAG param (``k2 query --start``, ``k2 replay --start``, ``/v1/trades?start=``, the replay
DAG's ``start``), so that all of them take the same input.

ISO-8601 (``2026-11-02``, ``2026-11-02T23:00:00Z``, with an offset; a time without a zone is
UTC, a date is its midnight UTC) or a number since the epoch, whose unit is read from its size
as market-data feeds mix them: seconds (with a fraction), milliseconds, microseconds,
nanoseconds. Each function raises :class:`QueryError` naming the parameter, the value and why.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from k2_etl.errors import QueryError

MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2262, 1, 1, tzinfo=UTC)  # nanoseconds since the epoch overflow int64 after 2262
_EPOCH_UNITS = ((10**11, 1), (10**14, 10**3), (10**17, 10**6), (10**20, 10**9))  # below -> per second
TIME_HELP = "ISO-8601 (a time without a zone is UTC; a date is its midnight UTC) or epoch s/ms/us/ns"
DEFAULT_SPAN = timedelta(days=1)  # a range with no start covers the day before its end
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")  # a trading date as parse_day takes it


def parse_time(parameter: str, text: str) -> datetime:
    """An instant (UTC) from ISO-8601 or an epoch number (see the module docstring)."""
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
    """A trading date, ``YYYY-MM-DD`` only: a day is a calendar date in the exchange's zone, so an
    instant or an epoch number (which would need a zone to become a date) is refused."""
    value = text.strip()
    try:
        if not _DAY.fullmatch(value):  # fromisoformat alone also takes 20261102 and 2026-W45-1
            raise ValueError(value)
        day = date.fromisoformat(value)
    except ValueError:
        raise QueryError(parameter, text, "not a date; expected YYYY-MM-DD") from None
    if not MIN_TIME.date() < day < MAX_TIME.date():
        raise QueryError(parameter, text, "outside 1970-01-02 .. 2261-12-31")
    return day


def default_range(
    start: datetime | None,
    end: datetime | None,
    *,
    span: timedelta = DEFAULT_SPAN,
    names: tuple[str, str] = ("start", "end"),
) -> tuple[datetime, datetime]:
    """``[start, end)`` with the defaults every entry point uses: the end is now (a record stamped
    this microsecond included), the start ``span`` before the end. :class:`QueryError` when the
    start is not before the end (``names``: the parameters as the caller's user typed them)."""
    end = end or datetime.now(UTC) + timedelta(microseconds=1)
    start = start or end - span
    if start >= end:
        raise QueryError(names[0], start.isoformat(), f"must be before {names[1]} {end.isoformat()}")
    return start, end


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
