"""Pure parts of "has the consumer landed what a load produced?"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from k2_etl.lake.progress import CLOCK_SKEW, Produced, Unlanded, not_landed, pending_offsets, wanted_offsets


def test_wanted_is_one_past_the_last_offset_of_any_file_per_partition() -> None:
    files = [
        {"k2.trades": {"0": [0, 9], "1": [0, 4]}},
        {"k2.trades": {"0": [10, 19]}, "k2.dead_letters": {"2": [5, 5]}},
    ]
    assert wanted_offsets(files) == {"k2.trades": {0: 20, 1: 5}, "k2.dead_letters": {2: 6}}
    assert wanted_offsets([]) == {}


def test_pending_lists_partitions_landed_short_or_not_at_all() -> None:
    wanted = {"k2.trades": {0: 20, 1: 5}, "k2.quotes": {0: 3}}
    landed = {"k2.trades": {0: 20, 1: 4, 2: 100}}
    assert pending_offsets(wanted, landed) == {"k2.trades": {1: (4, 5)}, "k2.quotes": {0: (None, 3)}}
    assert pending_offsets(wanted, {"k2.trades": {0: 21, 1: 5}, "k2.quotes": {0: 3}}) == {}


T0 = datetime(2026, 11, 2, 10, tzinfo=UTC)


def produced(first: int, last: int, started: datetime) -> Produced:
    return Produced(first, last, started, started + timedelta(seconds=3))


def test_a_load_has_landed_once_the_offset_is_past_its_records_and_was_moved_after_they_existed() -> None:
    load = produced(100, 149, T0)
    assert not_landed([load], None, None) == ([load], False)  # nothing landed in this life
    assert not_landed([load], 120, T0 + timedelta(seconds=2)) == ([load], False)  # part of it
    assert not_landed([load], 150, T0 + timedelta(seconds=4)) == ([], False)  # all of it
    assert not_landed([load], 150, T0 - timedelta(seconds=1)) == ([], False)  # within the clocks' skew


def test_an_offset_recorded_before_the_records_existed_is_stale_not_landed() -> None:
    """The consumer resumed beyond the partition's end: the offsets look past the load, but they
    were recorded before it began, so they cannot be the consumer's place after its records."""
    earlier, later = produced(0, 9, T0 - timedelta(hours=1)), produced(10, 19, T0)
    assert not_landed([earlier, later], 1_000_000, T0 - CLOCK_SKEW - timedelta(seconds=1)) == ([later], True)


def test_only_waiting_with_no_progress_is_a_stall() -> None:
    busy = Unlanded("k2.trades", 0, 50, 150, 100, False, waiting_seconds=600, idle_seconds=1)
    stuck = Unlanded("k2.trades", 0, 50, 150, 100, False, waiting_seconds=600, idle_seconds=600)
    never = Unlanded("k2.trades", 0, 50, 150, None, False, waiting_seconds=600, idle_seconds=None)
    fresh = Unlanded("k2.trades", 0, 50, 150, None, False, waiting_seconds=5, idle_seconds=None)
    assert [u.stalled(120) for u in (busy, stuck, never, fresh)] == [False, True, True, False]
    assert str(stuck) == (
        "k2.trades[0]: 50 record(s) produced 600 s ago not landed (landed up to offset 99; produced up to offset 149)"
    )
