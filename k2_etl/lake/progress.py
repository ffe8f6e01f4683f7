"""How far the streaming consumer has landed what loads produced.

A load records, per file, the offset range it produced to each topic-partition (the load
manifest). The consumer records, in each table's snapshots, the next offset it will read per
topic-partition (:mod:`k2_etl.lake.commits`). A load has landed when every table records, for
every partition the load wrote, an offset past the load's last record there. This is what
the daily load waits for (issue 6: a sensor that holds no worker slot).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from k2_etl.config import Settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import Offsets, committed_offsets
from k2_etl.lake.tables import tables_by_topic

#: Per file: topic -> partition (as text, as the manifest stores it) -> [first, last] offset produced.
FileOffsets = Mapping[str, Mapping[str, list[int]]]


def wanted_offsets(files: Iterable[FileOffsets]) -> Offsets:
    """Per topic-partition, the offset after the last record any of ``files`` produced there."""
    wanted: Offsets = {}
    for offsets in files:
        for topic, partitions in offsets.items():
            for partition, (_, last) in partitions.items():
                mine = wanted.setdefault(topic, {})
                mine[int(partition)] = max(mine.get(int(partition), 0), last + 1)
    return wanted


def pending_offsets(wanted: Offsets, landed: Offsets) -> dict[str, dict[int, tuple[int | None, int]]]:
    """The topic-partitions whose landed offset falls short: topic -> partition -> (landed, wanted)."""
    short: dict[str, dict[int, tuple[int | None, int]]] = {}
    for topic, partitions in wanted.items():
        for partition, offset in partitions.items():
            now = landed.get(topic, {}).get(partition)
            if now is None or now < offset:
                short.setdefault(topic, {})[partition] = (now, offset)
    return short


def landed_offsets(settings: Settings, topics: Iterable[str], group: str | None = None) -> Offsets:
    """The next offsets the tables record for ``topics`` (for the consumer group of ``settings``)."""
    table_of = tables_by_topic(settings)
    unknown = sorted(set(topics) - set(table_of))
    if unknown:
        raise ValueError(f"not K2 topics: {', '.join(unknown)}")
    catalog = open_catalog(settings)
    landed: Offsets = {}
    for name in sorted({table_of[t].name for t in topics}):
        recorded = committed_offsets(catalog.load_table((settings.namespace, name)), group or settings.stream_group)
        landed.update({t: p for t, p in recorded.items() if t in topics})
    return landed
