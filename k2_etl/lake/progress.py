"""How far the streaming consumer has landed what loads produced.

A load records, per file, the offset range it produced to each topic-partition and the id of
each topic (the load manifest). The consumer records, in each table's snapshots, the next offset
it will read per topic-partition and the topic's id (:mod:`k2_etl.lake.commits`). A load has
landed when every table records, for every partition the load wrote, an offset past the load's
last record there, in the same life of the topic. This is what the daily load waits for (a
sensor that holds no worker slot), and what tells a stalled consumer from a busy one: records a
load produced that have waited unlanded, with the partition's landed offset not moving, for
``K2_STREAM_STALL_SECONDS`` (:func:`unlanded`; `k2 status` and the consumer's /healthz).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pyiceberg.catalog import Catalog

from k2_etl.config import Settings
from k2_etl.lake.catalog import open_catalog, reaching
from k2_etl.lake.commits import Offsets, TopicIds, committed_offsets, unchanged_since
from k2_etl.lake.manifest import Manifest
from k2_etl.lake.tables import tables_by_topic

#: How far back loads are compared with what landed (Kafka's default retention: older records
#: may be gone from the topics anyway).
LOOKBACK = timedelta(days=7)

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


#: Per topic-partition not landed yet: topic -> partition -> (landed, wanted).
Pending = dict[str, dict[int, tuple[int | None, int]]]


def pending_offsets(wanted: Offsets, landed: Offsets) -> Pending:
    """The topic-partitions whose landed offset falls short: topic -> partition -> (landed, wanted)."""
    short: Pending = {}
    for topic, partitions in wanted.items():
        for partition, offset in partitions.items():
            now = landed.get(topic, {}).get(partition)
            if now is None or now < offset:
                short.setdefault(topic, {})[partition] = (now, offset)
    return short


def files_pending(settings: Settings, files: Iterable[Mapping[str, Any]]) -> tuple[Offsets, Pending]:
    """What loaded ``files`` (the loader's per-file results: their ``offsets`` and ``topic_ids``)
    produced, and the topic-partitions of it the tables have not landed yet (empty: all landed), in
    the topics' lives the files were produced to. Raises UnavailableError while the catalog is."""
    files = list(files)
    wanted = wanted_offsets(f.get("offsets") or {} for f in files)
    lives = {topic: topic_id for f in files for topic, topic_id in (f.get("topic_ids") or {}).items()}
    return wanted, pending_offsets(wanted, landed_offsets(settings, wanted, topic_ids=lives))


def landed_offsets(
    settings: Settings,
    topics: Iterable[str],
    group: str | None = None,
    topic_ids: TopicIds | None = None,
    catalog: Catalog | None = None,
) -> Offsets:
    """The next offsets the tables record for ``topics`` (for the consumer group of ``settings``).

    ``topic_ids``: which life of each topic is meant (a load's, or the broker's now); offsets the
    tables recorded for another life are left out, as if nothing had landed.
    """
    table_of = tables_by_topic(settings)
    unknown = sorted(set(topics) - set(table_of))
    if unknown:
        raise ValueError(f"not K2 topics: {', '.join(unknown)}")
    catalog = catalog or open_catalog(settings)
    landed: Offsets = {}
    for name in sorted({table_of[t].name for t in topics}):
        with reaching(name):
            table = catalog.load_table((settings.namespace, name))
        recorded = committed_offsets(table, group or settings.stream_group, topic_ids)
        landed.update({t: p for t, p in recorded.items() if t in topics})
    return landed


#: How far the clocks of the hosts that load and that consume may disagree (NTP keeps them far closer).
CLOCK_SKEW = timedelta(seconds=5)


@dataclass(frozen=True)
class Produced:
    """What one load produced to one topic-partition (from the load manifest)."""

    first: int
    last: int
    started: datetime
    finished: datetime


def not_landed(loads: Iterable[Produced], landed: int | None, moved: datetime | None) -> tuple[list[Produced], bool]:
    """The loads whose records on one partition the table has not landed, and whether the table's
    offset is stale: recorded (``moved``: when it last changed) before those records were produced,
    so it cannot be the consumer's place after them. Stale offsets lie beyond the partition's end
    (a broker that lost records but kept the topic; an earlier life recorded without a topic id):
    a consumer resuming there waits for ever while the offsets look landed."""
    behind, stale = [], False
    for load in loads:
        if landed is None or landed <= load.last:
            behind.append(load)
        elif moved is not None and moved < load.started - CLOCK_SKEW:
            behind.append(load)
            stale = True
    return behind, stale


@dataclass(frozen=True)
class Unlanded:
    """Records loads produced to one topic-partition that the tables have not landed."""

    topic: str
    partition: int
    records: int
    produced: int  # the offset after the last record produced there
    landed: int | None  # the next offset the table records (None: nothing in this life of the topic)
    stale: bool  # the table's offset was recorded before these records existed (beyond the end)
    waiting_seconds: float  # since the oldest load with records not landed there finished
    idle_seconds: float | None  # since the table's offset for the partition last moved (None: never recorded)

    def stalled(self, after_seconds: float) -> bool:
        """Waiting that long with no progress: the consumer is not landing it (a busy one moves the offset)."""
        idle = self.idle_seconds if self.idle_seconds is not None else self.waiting_seconds
        return self.waiting_seconds >= after_seconds and idle >= after_seconds

    def __str__(self) -> str:
        if self.landed is None:
            at = "nothing landed"
        elif self.stale:
            at = (f"the table records offset {self.landed:,}, recorded before these records existed: "
                  "an offset past the partition's end?")  # fmt: skip
        else:
            at = f"landed up to offset {self.landed - 1:,}"
        return (
            f"{self.topic}[{self.partition}]: {self.records:,} record(s) produced {self.waiting_seconds:.0f} s ago "
            f"not landed ({at}; produced up to offset {self.produced - 1:,})"
        )


def unlanded(
    settings: Settings,
    topic_ids: TopicIds,
    *,
    group: str | None = None,
    catalog: Catalog | None = None,
    at: datetime | None = None,
) -> list[Unlanded]:
    """Per topic-partition, what the loads of the last :data:`LOOKBACK` produced (the load
    manifest) and the tables have not landed (:func:`not_landed`), in the topics' current lives
    (``topic_ids``, from the broker: a load into an earlier life of a topic is not compared)."""
    return progress(settings, topic_ids, group=group, catalog=catalog, at=at)[1]


@dataclass(frozen=True)
class PartitionProgress:
    """Where loads and the table stand on one topic-partition (in the topic's current life)."""

    topic: str
    partition: int
    produced: int  # the offset after the last record the loads of the last LOOKBACK produced there
    landed: int | None  # the next offset the table records (None: nothing in this life of the topic)


def progress(
    settings: Settings,
    topic_ids: TopicIds,
    *,
    group: str | None = None,
    catalog: Catalog | None = None,
    at: datetime | None = None,
) -> tuple[list[PartitionProgress], list[Unlanded]]:
    """Per topic-partition loads wrote to: the offsets produced and landed, and what is unlanded
    (:func:`unlanded`)."""
    at = at or datetime.now(UTC)
    catalog = catalog or open_catalog(settings)
    group = group or settings.stream_group
    produced: dict[tuple[str, int], list[Produced]] = {}
    for entry in Manifest(catalog, settings.namespace).after(at - LOOKBACK):
        if entry.finished_at is None:
            continue
        for topic, partitions in entry.offsets.items():
            if topic_ids.get(topic) is None or entry.topic_ids.get(topic) != topic_ids[topic]:
                continue  # another life of the topic (or one K2 did not record): not comparable
            for key, (first, last) in partitions.items():
                load = Produced(first, last, entry.started_at, entry.finished_at)
                produced.setdefault((topic, int(key)), []).append(load)
    if not produced:
        return [], []
    table_of = tables_by_topic(settings)
    topics = {topic for topic, _ in produced} & set(table_of)
    landed: Offsets = {}
    since: dict[str, dict[int, int]] = {}  # topic -> partition -> when its landed offset last moved (ms)
    for name in sorted({table_of[t].name for t in topics}):
        with reaching(name):
            table = catalog.load_table((settings.namespace, name))
        landed.update({t: p for t, p in committed_offsets(table, group, topic_ids).items() if t in topics})
        since.update({t: p for t, p in unchanged_since(table, group, topic_ids).items() if t in topics})
    out, where = [], []
    for (topic, partition), loads in sorted(produced.items()):
        if topic not in topics:
            continue
        now = landed.get(topic, {}).get(partition)
        where.append(PartitionProgress(topic, partition, max(load.last for load in loads) + 1, now))
        moved_ms = since.get(topic, {}).get(partition)
        moved = None if moved_ms is None else datetime.fromtimestamp(moved_ms / 1000, UTC)
        behind, stale = not_landed(loads, now, moved)
        if not behind:
            continue
        end = max(load.last for load in behind) + 1
        records = sum(load.last - load.first + 1 for load in behind) if stale else end - (now or 0)
        out.append(
            Unlanded(
                topic, partition, records, end, now, stale,
                max(0.0, (at - min(load.finished for load in behind)).total_seconds()),
                None if moved is None else max(0.0, (at - moved).total_seconds()),
            )
        )  # fmt: skip
    return where, out
