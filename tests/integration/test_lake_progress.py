"""Whether the tables record a load's offsets as landed, read from real tables on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from k2_etl.lake.commits import append_with_offsets
from k2_etl.lake.progress import landed_offsets, pending_offsets, wanted_offsets
from k2_etl.schemas import QUOTE, TRADE
from tests.integration.lake_helpers import batch, trades_table


def test_landed_offsets_come_from_the_table_of_each_topic(tmp_path: Path) -> None:
    settings, table = trades_table(tmp_path)
    trades, quotes = TRADE.topic_name(settings), QUOTE.topic_name(settings)
    wanted = wanted_offsets([{trades: {"0": [0, 9]}}, {quotes: {"1": [0, 2]}}])
    assert landed_offsets(settings, wanted) == {}

    append_with_offsets(table, batch(table, ["p-1"]), settings.stream_group, {trades: {0: None}}, {trades: {0: 10}})

    landed = landed_offsets(settings, wanted)
    assert landed == {trades: {0: 10}}  # the quotes table records nothing yet
    assert pending_offsets(wanted, landed) == {quotes: {1: (None, 3)}}
    assert landed_offsets(settings, [trades], group="another-group") == {}
    with pytest.raises(ValueError, match="not K2 topics: nope"):
        landed_offsets(settings, ["nope"])
