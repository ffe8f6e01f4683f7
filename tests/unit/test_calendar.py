"""Bar calendars in Python (the bounds K2 needs before reading rows): checked against local wall
clocks written out by hand, across Sydney's and New York's daylight-saving changes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from k2_etl.errors import QueryError
from k2_etl.query.calendar import BarCalendar, check_interval, cursor_floor
from k2_etl.query.params import parse_by, parse_interval, parse_origin, parse_zone
from k2_etl.query.planning import Chunk

SYDNEY, NEW_YORK = "Australia/Sydney", "America/New_York"
HOUR, DAY = timedelta(hours=1), timedelta(days=1)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("interval", "origin", "zone", "at", "start", "end"),
    [
        # A Sydney trading date begins the evening before in UTC: at +11 (summer) and at +10 (winter).
        (DAY, timedelta(0), SYDNEY, "2026-11-02T05:00:00+00:00", "2026-11-02T00:00+11:00", "2026-11-03T00:00+11:00"),
        (DAY, timedelta(0), SYDNEY, "2026-07-01T05:00:00+00:00", "2026-07-01T00:00+10:00", "2026-07-02T00:00+10:00"),
        # Sunday 2026-10-04 02:00 -> 03:00 in Sydney: a 23-hour day; its hours stay on the wall clock's.
        (DAY, timedelta(0), SYDNEY, "2026-10-04T12:00+11:00", "2026-10-04T00:00+10:00", "2026-10-05T00:00+11:00"),
        (HOUR, timedelta(0), SYDNEY, "2026-10-04T03:30+11:00", "2026-10-04T03:00+11:00", "2026-10-04T04:00+11:00"),
        (HOUR, timedelta(0), SYDNEY, "2026-10-04T01:59+10:00", "2026-10-04T01:00+10:00", "2026-10-04T03:00+11:00"),
        # Sunday 2026-11-01 02:00 -> 01:00 in New York: the hour 01:00 happens twice, as two bars.
        (HOUR, timedelta(0), NEW_YORK, "2026-11-01T01:30-04:00", "2026-11-01T01:00-04:00", "2026-11-01T01:00-05:00"),
        (HOUR, timedelta(0), NEW_YORK, "2026-11-01T01:30-05:00", "2026-11-01T01:00-05:00", "2026-11-01T02:00-05:00"),
        (DAY, timedelta(0), NEW_YORK, "2026-11-01T23:00-05:00", "2026-11-01T00:00-04:00", "2026-11-02T00:00-05:00"),
        # From the session's open: 1h bars on New York's half hours; 09:00 is in the previous day's last bar.
        (HOUR, timedelta(hours=9, minutes=30), NEW_YORK, "2026-11-02T10:45-05:00", "2026-11-02T10:30-05:00",
         "2026-11-02T11:30-05:00"),
        (HOUR, timedelta(hours=9, minutes=30), NEW_YORK, "2026-11-03T09:00-05:00", "2026-11-03T08:30-05:00",
         "2026-11-03T09:30-05:00"),
        # Weeks begin on the local Monday, months on the local first.
        ("week", timedelta(0), SYDNEY, "2026-10-04T12:00+11:00", "2026-09-28T00:00+10:00", "2026-10-05T00:00+11:00"),
        ("month", timedelta(0), SYDNEY, "2026-10-31T23:30+11:00", "2026-10-01T00:00+10:00",
         "2026-11-01T00:00+11:00"),
        ("month", timedelta(0), "UTC", "2026-12-31T23:59:59+00:00", "2026-12-01T00:00+00:00",
         "2027-01-01T00:00+00:00"),
        # An origin the clock skips (New York, 2026-03-08 02:00 -> 03:00): the day begins when 02:30
        # would have been (07:30 UTC); until then it is still the day before.
        (DAY, timedelta(hours=2, minutes=30), NEW_YORK, "2026-03-08T03:10-04:00", "2026-03-07T02:30-05:00",
         "2026-03-08T03:30-04:00"),
        (HOUR, timedelta(hours=2, minutes=30), NEW_YORK, "2026-03-08T03:10-04:00", "2026-03-08T02:30-04:00",
         "2026-03-08T03:30-04:00"),
        # UTC from midnight: the epoch's bars.
        (timedelta(minutes=5), timedelta(0), "UTC", "2026-11-02T10:07:01+00:00", "2026-11-02T10:05+00:00",
         "2026-11-02T10:10+00:00"),
    ],
)  # fmt: skip
def test_a_bar_holds_its_instant_between_local_wall_clock_bounds(interval, origin, zone, at, start, end) -> None:  # type: ignore[no-untyped-def]
    calendar = BarCalendar(interval, zone, origin)
    assert calendar.start_of(utc(at), zone) == utc(start)
    assert calendar.end_of(utc(at), zone) == utc(end)


#: Two days before each of a zone's clock changes in 2026, 00:00 UTC.
CLOCK_CHANGES = {
    SYDNEY: ("2026-04-03T00:00+00:00", "2026-10-02T00:00+00:00"),
    NEW_YORK: ("2026-03-06T00:00+00:00", "2026-10-30T00:00+00:00"),
    "Europe/London": ("2026-03-27T00:00+00:00", "2026-10-23T00:00+00:00"),
}


@pytest.mark.parametrize("zone", list(CLOCK_CHANGES))
@pytest.mark.parametrize(
    "origin",
    [timedelta(0), timedelta(hours=1, minutes=30), timedelta(hours=2, minutes=30), timedelta(hours=9, minutes=30)],
)
@pytest.mark.parametrize("interval", [timedelta(minutes=15), HOUR, 4 * HOUR, DAY, "week", "month"])
def test_bars_hold_every_instant_and_follow_each_other_without_gap_across_clock_changes(interval, origin, zone) -> None:  # type: ignore[no-untyped-def]
    calendar = BarCalendar(interval, zone, origin)
    for first in CLOCK_CHANGES[zone]:
        for step in range(0, 4 * 24 * 60, 10):  # every 10 minutes over four days around a change
            at = utc(first) + timedelta(minutes=step)
            start, end = calendar.start_of(at, zone), calendar.end_of(at, zone)
            assert start <= at < end, (at, start, end)
            assert calendar.start_of(end, zone) == end, (at, end)  # the next bar begins where this one ends


def test_day_chunks_are_joined_where_a_bar_spans_them_and_only_in_local_time() -> None:
    days = [Chunk(utc(f"2026-11-0{d}T00:00+00:00"), utc(f"2026-11-0{d + 1}T00:00+00:00"), [f"f{d}"], None)
            for d in (1, 2, 3, 6)]  # fmt: skip
    assert BarCalendar(HOUR).chunks(days) == days  # UTC bars lie within UTC days
    sydney = BarCalendar(DAY, SYDNEY).chunks(days)  # a Sydney day is 13:00 UTC to 13:00 UTC
    assert [c.files for c in sydney] == [["f1", "f2", "f3"], ["f6"]]
    assert (sydney[0].start, sydney[0].end) == (days[0].start, days[2].end)
    assert [c.files for c in BarCalendar("month").chunks(days)] == [["f1", "f2", "f3", "f6"]]


def test_a_cursor_goes_on_from_the_start_of_its_bar_in_every_zone_the_bars_are_in() -> None:
    calendar = BarCalendar(HOUR, "exchange", timedelta(minutes=30), {"ASX": SYDNEY, "XLON": "Europe/London"})
    at = utc("2026-11-02T10:45:00+00:00")
    assert cursor_floor(calendar, at) == utc("2026-11-02T10:30:00+00:00")
    assert cursor_floor(BarCalendar(DAY, SYDNEY), at) == utc("2026-11-01T13:00:00+00:00")  # 21:45 in Sydney


def test_the_statement_binds_exactly_the_values_its_parts_name() -> None:
    sydney_sunday = utc("2026-10-04T00:00+10:00"), utc("2026-10-05T00:00+11:00")
    for start, end in ((utc("2026-10-03T00:00+00:00"), utc("2026-10-05T00:00+00:00")), sydney_sunday):
        for calendar in (BarCalendar(HOUR), BarCalendar(DAY, SYDNEY), BarCalendar("week", SYDNEY, HOUR),
                         BarCalendar(HOUR, "exchange", zones={"ASX": SYDNEY, "XNYS": NEW_YORK})):  # fmt: skip
            text = " ".join(calendar.sql(start, end).values())
            assert set(calendar.params(start, end)) == set(re.findall(r"\$(\w+)", text))


def test_within_one_local_day_every_trade_counts_from_its_start_without_a_join() -> None:
    start, end = utc("2026-10-04T00:00+10:00"), utc("2026-10-05T00:00+11:00")  # Sydney's 23-hour Sunday
    calendar = BarCalendar(HOUR, SYDNEY)
    assert calendar.sql(start, end)["anchors"] == ""
    assert calendar.params(start, end)["anchor_us"] == int(start.timestamp()) * 1_000_000
    assert "ASOF" in calendar.sql(start, end + timedelta(microseconds=1))["anchors"]  # into Monday: two days
    assert "ASOF" in BarCalendar(HOUR, "exchange", zones={"ASX": SYDNEY}).sql(start, end)["anchors"]


def test_each_trade_s_period_start_comes_from_the_zone_s_local_midnights() -> None:
    start, end = utc("2026-10-03T00:00+00:00"), utc("2026-10-05T00:00+00:00")
    params = BarCalendar(HOUR, SYDNEY).params(start, end)
    sydney = [s for z, s in zip(params["anchor_zones"], params["anchor_starts"], strict=True) if z == SYDNEY]
    midnights = ("2026-10-03T00:00+10:00", "2026-10-04T00:00+10:00", "2026-10-05T00:00+11:00")  # 23 h, then 24
    assert sydney == [int(utc(m).timestamp()) * 1_000_000 for m in midnights]
    assert "UTC" in params["anchor_zones"]  # for an exchange whose zone no format names


def test_parameters_are_parsed_or_refused_naming_what_was_wrong() -> None:
    assert parse_interval("interval", "1w") == "week" and parse_interval("interval", "month") == "month"
    assert parse_interval("interval", "15m") == timedelta(minutes=15)
    assert parse_origin("origin", "09:30") == timedelta(hours=9, minutes=30)
    assert parse_zone("tz", "exchange") == "exchange" and parse_zone("tz", SYDNEY) == SYDNEY
    assert parse_by("by", "exchange") == "exchange"
    for parse, parameter, text in ((parse_origin, "origin", "9:30"), (parse_origin, "origin", "24:00"),
                                   (parse_zone, "tz", "Mars/Olympus"), (parse_zone, "tz", "../etc/passwd"),
                                   (parse_by, "by", "venue"), (parse_interval, "interval", "2w")):  # fmt: skip
        with pytest.raises(QueryError) as refused:
            parse(parameter, text)  # type: ignore[operator]
        assert refused.value.parameter == parameter and refused.value.value == text
    for bad in (timedelta(minutes=7), timedelta(days=2), timedelta(milliseconds=500)):
        with pytest.raises(QueryError, match="dividing a day, or week or month"):
            check_interval(bad)
