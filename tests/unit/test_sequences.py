"""Sequence classification, and state rebuilt from the tables equal to the state kept in memory."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from k2_etl.stream.sequences import KeyState, SequenceTracker
from tests.unit.fakes import FakeTable

DAY = date(2026, 11, 2)
OPEN = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


def steps(numbers: list[int]) -> list[tuple[str, int, int | None]]:
    state = KeyState()
    return [state.step(n) for n in numbers]


def test_each_kind_is_classified_with_expected_number_and_gap_size() -> None:
    assert steps([1, 2, 3]) == [("in_order", 1, None), ("in_order", 2, None), ("in_order", 3, None)]
    assert steps([1, 2, 6]) == [("in_order", 1, None), ("in_order", 2, None), ("gap", 3, 3)]
    assert steps([1, 3, 2, 4]) == [
        ("in_order", 1, None),
        ("gap", 2, 1),
        ("out_of_order", 4, None),
        ("in_order", 4, None),
    ]
    assert steps([1, 2, 2]) == [("in_order", 1, None), ("in_order", 2, None), ("duplicate", 3, None)]
    assert steps([1, 2, 3, 1, 2])[3:] == [("reset", 4, None), ("in_order", 2, None)]
    assert steps([3]) == [("gap", 1, 2)]  # a day starts at 1
    assert steps([3, 1])[1] == ("out_of_order", 4, None)  # 1 was missing: late, not a reset


def test_out_of_order_splits_the_missing_range() -> None:
    state = KeyState()
    for n in (1, 10, 5):
        state.step(n)
    assert state.missing == [[2, 4], [6, 9]]
    assert state.step(5)[0] == "duplicate"
    assert state.step(2)[0] == "out_of_order" and state.missing == [[3, 4], [6, 9]]


def trades(numbers: list[int], offsets: list[int] | None = None) -> pa.Table:
    n = len(numbers)
    return pa.table(
        {
            "exchange": pa.array(["ASX"] * n, pa.large_string()),  # as Iceberg's Arrow schema has them
            "symbol": pa.array(["BHP"] * n, pa.large_string()),
            "trading_date": pa.array([DAY] * n, pa.date32()),
            "event_time": pa.array([OPEN + timedelta(seconds=i) for i in range(n)], pa.timestamp("us", "UTC")),
            "sequence_number": pa.array(numbers, pa.int64()),
        }
    )


def no_events() -> FakeTable:
    schema = pa.schema(
        [
            ("exchange", pa.string()),
            ("symbol", pa.string()),
            ("event_time", pa.timestamp("us", "UTC")),
            ("kafka_partition", pa.int32()),
            ("kafka_offset", pa.int64()),
        ]
    )
    return FakeTable(schema.empty_table(), [])


def observe(tracker: SequenceTracker, batch: pa.Table, first_offset: int = 0) -> list[dict[str, Any]]:
    offsets = np.arange(first_offset, first_offset + batch.num_rows)
    events, _ = tracker.observe(
        batch, np.zeros(batch.num_rows, np.int64), offsets, topic="t", landed={}, events_from={}
    )
    return events


def test_a_batch_reports_only_anomalies_with_their_positions() -> None:
    empty = trades([])
    tracker = SequenceTracker(FakeTable(empty), no_events(), "trade")  # type: ignore[arg-type]
    events = observe(tracker, trades([1, 2, 3, 5, 4, 6, 6, 1, 2]), first_offset=100)
    assert [(e["kind"], e["received_sequence"], e["gap_size"], e["kafka_offset"]) for e in events] == [
        ("gap", 5, 1, 103),
        ("out_of_order", 4, None, 104),
        ("duplicate", 6, None, 106),
        ("reset", 1, None, 107),
    ]
    assert all(e["trading_date"] == DAY and e["symbol"] == "BHP" for e in events)
    assert len({e["event_id"] for e in events}) == 4
    assert [e["kind"] for e in observe(tracker, trades([3, 9]), first_offset=200)] == ["gap"]  # state carried over


def test_events_before_the_events_tables_offset_are_not_returned_again() -> None:
    empty = trades([])
    tracker = SequenceTracker(FakeTable(empty), no_events(), "trade")  # type: ignore[arg-type]
    batch = trades([1, 3, 5])
    events, counts = tracker.observe(
        batch, np.zeros(3, np.int64), np.array([0, 1, 2]), topic="t", landed={}, events_from={0: 2}
    )
    assert [e["received_sequence"] for e in events] == [5]  # the gap at offset 1 is already in the table
    assert counts["gap"] == 2 and counts["missing"] == 2


def test_state_rebuilt_from_the_table_equals_the_state_kept_in_memory() -> None:
    rng = random.Random(7)
    for _ in range(200):
        numbers = list(range(1, 60))
        rng.shuffle(numbers)
        numbers = [n for n in numbers[: rng.randint(1, 59)] if rng.random() > 0.2] or [1]
        live = KeyState()
        for n in numbers:
            live.step(n)
        landed = trades(numbers)
        tracker = SequenceTracker(FakeTable(landed), no_events(), "trade")  # type: ignore[arg-type]
        rebuilt = tracker._day(DAY, {})[("ASX", "BHP")]
        if "reset" in [k for k, _, _ in steps(numbers)]:
            continue  # a reset's place comes from the events table (next test)
        assert (rebuilt.high, rebuilt.missing) == (live.high, live.missing), numbers


def test_a_reset_in_the_events_table_starts_the_rebuilt_state_at_its_record() -> None:
    numbers = [1, 2, 3, 4, 5, 1, 2, 4]
    landed = trades(numbers)
    resets = pa.table(
        {
            "exchange": ["ASX"],
            "symbol": ["BHP"],
            "event_time": pa.array([OPEN + timedelta(seconds=5)], pa.timestamp("us", "UTC")),
            "kafka_partition": pa.array([0], pa.int32()),
            "kafka_offset": pa.array([5], pa.int64()),
        }
    )
    tracker = SequenceTracker(
        FakeTable(landed),  # type: ignore[arg-type]
        FakeTable(resets, []),  # type: ignore[arg-type]
        "trade",
    )
    state = tracker._day(DAY, {0: 8})[("ASX", "BHP")]
    assert (state.high, state.missing) == (4, [[3, 3]])
    tracker.clear()
    not_landed = tracker._day(DAY, {0: 5})[("ASX", "BHP")]  # the reset's record is not in the table yet
    assert (not_landed.high, not_landed.missing) == (5, [])


def test_a_batch_spanning_many_days_loads_each_day_once() -> None:
    empty = trades([])
    table = FakeTable(empty)
    tracker = SequenceTracker(table, no_events(), "trade")  # type: ignore[arg-type]
    days = [DAY + timedelta(days=d) for d in range(6)]
    n = 60  # 10 symbols x 6 days, interleaved
    batch = pa.table(
        {
            "exchange": pa.array(["ASX"] * n, pa.large_string()),
            "symbol": pa.array([f"S{i % 10}" for i in range(n)], pa.large_string()),
            "trading_date": pa.array([days[i % 6] for i in range(n)], pa.date32()),
            "event_time": pa.array([OPEN] * n, pa.timestamp("us", "UTC")),
            "sequence_number": pa.array([1] * n, pa.int64()),
        }
    )
    tracker.observe(batch, np.zeros(n, np.int64), np.arange(n), topic="t", landed={}, events_from={})
    assert table.scans == 6  # once per day, though more days than are kept between batches
