"""Pure parts of "has the consumer landed what a load produced?"."""

from __future__ import annotations

from k2_etl.lake.progress import pending_offsets, wanted_offsets


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
