"""Where bars begin: in which time zone, from which time of day, over which calendar unit.

Why local time: a market's day is local. A 1d bar of an ASX stock is a Sydney trading date,
which begins at 13:00 or 14:00 UTC the evening before depending on daylight saving; a week bar
begins on the local Monday, a month bar on the local first of the month. Intraday bars are
counted from the start of their local day (midnight, or ``origin``: 09:30 puts hour bars on a New
York session's half hours) in elapsed time, so on a day that loses or gains an hour the bars stay
on the wall clock's hours, no two bars share a start, and the day's last bar ends at the next
day's start.

The rule lives here, in Python (zoneinfo): :meth:`BarCalendar.params` lists the starts of the
local periods (days, weeks, months) a statement's range meets, and the bars' SQL
(:data:`k2_etl.query.sql.BARS`) gives each trade the last of them at or before it (an ASOF
join; within one local period of one zone, the one start as a parameter) and counts whole
intervals from there. DuckDB converting each trade's time to the zone
instead (ICU's ``timezone()``) cost 3-4 x the statement, measured. :meth:`BarCalendar.start_of`
is the same rule for the places that need a bar's bounds before any row is read: which day
chunks must be read together (a Sydney day spans two UTC days, a month thirty), and where a
cursor's bar began. In UTC from midnight with a width dividing a day, every bar lies within a
UTC day: the statement is the plain epoch arithmetic of before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, available_timezones

from k2_etl.errors import QueryError
from k2_etl.query.planning import DAY, EPOCH, Chunk, micros

CalendarUnit = Literal["week", "month"]
#: A bar's width: whole seconds from 1 s to 1 d dividing a day, or a calendar week or month.
Interval = timedelta | CalendarUnit
#: ``tz=exchange``: each trade's exchange's own zone (from the formats' exchange time zones).
EXCHANGE_ZONE = "exchange"
BarsBy = Literal["symbol", "exchange"]


@cache
def zone(name: str, parameter: str = "tz") -> ZoneInfo:
    """The IANA zone ``name`` (not ``localtime``: the server's zone is no market's)."""
    if name not in _known_zones():
        raise QueryError(parameter, name, f"not a time zone: UTC, {EXCHANGE_ZONE}, or an IANA name such as "
                                          "Australia/Sydney")  # fmt: skip
    return ZoneInfo(name)


@cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones() - {"localtime"})


def interval_text(interval: Interval) -> str:
    return interval if isinstance(interval, str) else f"{interval.total_seconds():g}s"


def check_interval(interval: Interval) -> None:
    if isinstance(interval, str):
        if interval not in ("week", "month"):
            raise QueryError("interval", interval, "a calendar interval is week or month")
        return
    width = interval // timedelta(microseconds=1)
    if not timedelta(seconds=1) <= interval <= DAY or width % 1_000_000 or DAY % interval:
        raise QueryError(
            "interval", interval_text(interval), "must be whole seconds from 1s to 1d dividing a day, or week or month"
        )


@dataclass(frozen=True)
class BarCalendar:
    """How bars are cut: ``interval`` in the zone ``tz`` (a name, or ``exchange``: each trade's
    exchange's zone, looked up in ``zones``) from ``origin`` past local midnight."""

    interval: Interval
    tz: str = "UTC"
    origin: timedelta = timedelta(0)
    zones: Mapping[str, str] | None = None  # exchange -> zone, for tz=exchange

    @property
    def epoch_aligned(self) -> bool:
        """Every bar is whole within a UTC day: the statement can be epoch arithmetic."""
        return self.tz == "UTC" and not self.origin and not isinstance(self.interval, str)

    def zone_names(self) -> list[str]:
        if self.tz != EXCHANGE_ZONE:
            return [self.tz]
        return sorted(set((self.zones or {}).values())) or ["UTC"]

    def start_of(self, at: datetime, zone_name: str) -> datetime:
        """The start of the bar holding ``at`` in ``zone_name`` (the SQL's rule, in Python)."""
        anchor = self._anchor(at, zone(zone_name))
        if isinstance(self.interval, str) or self.interval == DAY:
            return anchor
        return anchor + (at - anchor) // self.interval * self.interval

    def end_of(self, at: datetime, zone_name: str) -> datetime:
        """The end of the bar holding ``at`` (the next local day's, week's or month's start at the latest)."""
        tz = zone(zone_name)
        following = self._following(self._anchor(at, tz), tz)
        if isinstance(self.interval, str) or self.interval == DAY:
            return following
        return min(self.start_of(at, zone_name) + self.interval, following)

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """The calendar day ``day``, local midnight to midnight, in the calendar's one zone."""
        if self.tz == EXCHANGE_ZONE:
            raise QueryError("day", day.isoformat(), "a day is of one time zone: ask for one exchange (exchange=) "
                                                     "or consolidated bars, or give a zone (tz=)")  # fmt: skip
        tz = zone(self.tz)
        return _localized(day, timedelta(0), tz), _localized(day + DAY, timedelta(0), tz)

    def bounds(self, start: datetime, end: datetime) -> tuple[datetime, datetime]:
        """From the start of the bar holding ``start`` to the end of the one holding the last
        instant before ``end``, over every zone the bars may be in."""
        names = self.zone_names()
        last = end - timedelta(microseconds=1)
        return min(self.start_of(start, z) for z in names), max(self.end_of(last, z) for z in names)

    def chunks(self, chunks: Sequence[Chunk]) -> list[Chunk]:
        """Planned day chunks joined so that no bar spans two (a Sydney day spans two UTC days, a
        month all of its days): each statement then sees every trade of the bars it computes."""
        if self.epoch_aligned:
            return list(chunks)
        joined: list[Chunk] = []
        reach = EPOCH
        for chunk in chunks:
            lo, hi = self.bounds(chunk.start, chunk.end)
            if joined and lo < reach:
                last = joined[-1]
                joined[-1] = Chunk(last.start, chunk.end, last.files + chunk.files, chunk.scan)
            else:
                joined.append(chunk)
            reach = max(reach, hi)
        return joined

    def sql(self, start: datetime, end: datetime) -> dict[str, str]:
        """The parts of the bars statement over [start, end) (:data:`k2_etl.query.sql.BARS`): ``bar``,
        the start of a trade's bar in epoch microseconds; ``zone``, each trade's zone; ``anchors``,
        the join that gives each trade the start of its local period (from :meth:`params`,
        computed here in Python: no time-zone conversion per row, which cost DuckDB ~3 x the
        epoch arithmetic). Within one local period of one zone (a trading day, as the explorer
        asks) there is one start for every trade: no join, the epoch arithmetic from it."""
        intraday = not isinstance(self.interval, str) and self.interval < DAY
        if self.epoch_aligned:
            return {"bar": "(epoch_us(event_time) // $width_us) * $width_us", "zone": "", "anchors": ""}
        if self._one_period(start, end) is not None:
            bar = (
                "$anchor_us + (epoch_us(event_time) - $anchor_us) // $width_us * $width_us"
                if intraday
                else "$anchor_us"
            )
            return {"bar": bar, "zone": "", "anchors": ""}
        if self.tz == EXCHANGE_ZONE:  # each trade's exchange's zone (all of the symbols' exchanges are mapped)
            cases = " ".join(f"WHEN $zone_exchange_{i} THEN $zone_{i}" for i in range(len(self.zones or {})))
            zone_sql = f"CASE exchange {cases} ELSE 'UTC' END"
        else:
            zone_sql = "$zone"
        bar = "anchor_us + (epoch_us(event_time) - anchor_us) // $width_us * $width_us" if intraday else "anchor_us"
        anchors = (" ASOF JOIN (SELECT z AS anchor_zone, a AS anchor_us, make_timestamp(a)::TIMESTAMPTZ AS anchor_time"
                   " FROM (SELECT unnest($anchor_zones) AS z, unnest($anchor_starts) AS a)) AS anchors"
                   " ON timed.bar_zone = anchors.anchor_zone AND timed.event_time >= anchors.anchor_time")  # fmt: skip
        return {"bar": bar, "zone": f", {zone_sql} AS bar_zone", "anchors": anchors}

    def params(self, start: datetime, end: datetime) -> dict[str, Any]:
        """The values :meth:`sql` names, for a statement over [start, end)."""
        params: dict[str, Any] = {}
        if not isinstance(self.interval, str) and (self.epoch_aligned or self.interval < DAY):
            params["width_us"] = self.interval // timedelta(microseconds=1)
        if self.epoch_aligned:
            return params
        one = self._one_period(start, end)
        if one is not None:
            return {**params, "anchor_us": micros(one)}
        if self.tz != EXCHANGE_ZONE:
            params["zone"] = self.tz
        else:
            for i, (exchange, name) in enumerate(sorted((self.zones or {}).items())):
                params[f"zone_exchange_{i}"], params[f"zone_{i}"] = exchange, name
        names, starts = [], []
        for name in {*self.zone_names(), "UTC"}:  # UTC: an exchange no zone was known for
            tz = zone(name)
            at = self._anchor(start, tz)
            while at < end:
                names.append(name)
                starts.append(micros(at))
                at = self._following(at, tz)
        return {**params, "anchor_zones": names, "anchor_starts": starts}

    def _one_period(self, start: datetime, end: datetime) -> datetime | None:
        """The start of the one local period (day, week, month) holding all of [start, end), when
        the bars are of one zone; else None."""
        if self.tz == EXCHANGE_ZONE:  # each exchange's zone (one zone is resolved to its name)
            return None
        tz = zone(self.tz)
        anchor = self._anchor(start, tz)
        return anchor if end <= self._following(anchor, tz) else None

    def _following(self, anchor: datetime, tz: ZoneInfo) -> datetime:
        """The start of the local period after the one ``anchor`` begins."""
        local = (anchor.astimezone(tz).replace(tzinfo=None) - self.origin).date()
        if self.interval == "month":
            following = date(local.year + local.month // 12, local.month % 12 + 1, 1)
        else:
            following = local + (timedelta(days=7) if self.interval == "week" else DAY)
        return _localized(following, self.origin, tz)

    def _anchor(self, at: datetime, tz: ZoneInfo) -> datetime:
        """The start of the local day (or week, month) holding ``at``, ``origin`` past midnight:
        the last such start at or before ``at``, as the ASOF join in SQL has it.

        Where the clock changes at ``origin``, a day's start is the first instant its wall clock
        reads ``origin`` (or would have: 02:30 on New York's spring change is 03:30), so the
        wall clock alone can name the wrong day: 03:10 that morning is still the day before, and
        01:00 after the autumn change (the second 01:00) is already the day begun at the first
        01:30 with ``origin`` 01:30."""
        shifted = (at.astimezone(tz).replace(tzinfo=None) - self.origin).date()
        if self.interval == "week":
            shifted -= timedelta(days=shifted.weekday())
        elif self.interval == "month":
            shifted = shifted.replace(day=1)
        anchor = _localized(shifted, self.origin, tz)
        if anchor > at:
            if self.interval == "week":
                return _localized(shifted - timedelta(days=7), self.origin, tz)
            if self.interval == "month":
                return _localized((shifted - DAY).replace(day=1), self.origin, tz)
            return _localized(shifted - DAY, self.origin, tz)
        following = self._following(anchor, tz)
        return following if following <= at else anchor


def _localized(day: date, origin: timedelta, tz: ZoneInfo) -> datetime:
    """``origin`` past ``day``'s midnight on the local wall clock, as a UTC instant."""
    return (datetime.combine(day, time()) + origin).replace(tzinfo=tz).astimezone(UTC)


def cursor_floor(calendar: BarCalendar, at: datetime) -> datetime:
    """The earliest start of the bar holding ``at`` (over the calendar's zones): a page goes on
    from whole bars."""
    if at <= EPOCH:
        return at
    return min(calendar.start_of(at, z) for z in calendar.zone_names())
