"""One parser for every instant and trading date a user types (CLI options, API parameters, DAG
params): each accepted form, and the error that names the parameter, the value and why."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from k2_etl.errors import QueryError
from k2_etl.instants import default_range, parse_day, parse_time

NOV_2 = datetime(2026, 11, 2, tzinfo=UTC)
EPOCH_S = int(NOV_2.timestamp())


@pytest.mark.parametrize(
    "text",
    ["2026-11-02", "2026-11-02T00:00:00", "2026-11-02T00:00:00Z", "2026-11-02T11:00:00+11:00", f"{EPOCH_S}",
     f"{EPOCH_S}.0", f"{EPOCH_S * 10**3}", f"{EPOCH_S * 10**6}", f"{EPOCH_S * 10**9}", f" {EPOCH_S} "],
)  # fmt: skip
def test_every_form_of_one_instant_reads_the_same(text: str) -> None:
    assert parse_time("start", text) == NOV_2


def test_epoch_fractions_keep_microseconds() -> None:
    assert parse_time("start", f"{EPOCH_S}.000250") == NOV_2 + timedelta(microseconds=250)
    assert parse_time("start", f"{EPOCH_S * 10**9 + 250_000}") == NOV_2 + timedelta(microseconds=250)


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "empty"), ("yesterday", "not a time"), ("2026-13-01", "not a time"), ("1e9", "not a time"),
     ("-1", "outside 1970-01-01"), ("2262-01-02", "outside 1970-01-01")],
)  # fmt: skip
def test_a_bad_instant_names_the_parameter_the_value_and_why(text: str, why: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_time("--start", text)
    assert "--start" in str(caught.value) and repr(text) in str(caught.value) and why in str(caught.value)


def test_a_trading_date_is_a_calendar_date_only() -> None:
    assert parse_day("date", " 2026-11-02 ") == date(2026, 11, 2)
    for text in ("2026-11-02T00:00:00Z", str(EPOCH_S), "02/11/2026", "1970-01-01", "20261102", "2026-W45-1"):
        with pytest.raises(QueryError, match="date"):
            parse_day("date", text)


def test_the_default_range_is_the_day_before_its_end() -> None:
    assert default_range(None, NOV_2) == (NOV_2 - timedelta(days=1), NOV_2)
    start, end = default_range(None, None)
    assert end - start == timedelta(days=1) and abs(datetime.now(UTC) - end) < timedelta(minutes=1)
    with pytest.raises(QueryError, match="must be before --end"):
        default_range(NOV_2, NOV_2, names=("--start", "--end"))


def test_k2_load_reads_its_date_with_the_same_parser(tmp_path: Path) -> None:
    """Before the format or any file is looked at: exit 2 and the parser's one-line error."""
    k2 = Path(sys.executable).with_name("k2")
    result = subprocess.run([str(k2), "load", str(tmp_path), "--format", "k2", "--date", "2026-11-31"],
                            capture_output=True, text=True, timeout=60, check=False, env={"K2_HOME": str(tmp_path),
                            "PATH": ""})  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--date='2026-11-31': not a date; expected YYYY-MM-DD" in result.stderr
