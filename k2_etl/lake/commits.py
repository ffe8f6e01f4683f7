"""Appends that carry the Kafka offsets they cover: what makes landing exactly once.

Each append by the streaming consumer stores, in the new snapshot's summary,
the next offset to read for every topic-partition it has landed, per consumer
group (one JSON property). Data and offsets commit atomically, so the table
alone says where to resume: a crash before the commit re-reads the batch, a
crash after it does not.

Fencing: a consumer remembers, per partition, the offset the table recorded
when it took the partition (or when it last committed). At commit time the
table must still record exactly that; otherwise another consumer has
committed the partition since (a rebalance moved it) and this batch is stale:
:class:`Fenced` is raised and nothing is written. Commit conflicts with other
writers (another consumer, maintenance) are retried on a refreshed table, the
check included (pyiceberg's own retry, which would skip it, is turned off).

Topic lives: offsets mean something only for the topic they were read from. A
topic deleted and created again (or a memory-only local broker restarted) starts
again at offset 0 under a new topic id, so the id of each topic is recorded
beside its offsets. Offsets recorded for another id are void: readers given the
current ids see none, and the first append for the new id replaces them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import pyarrow as pa
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.snapshots import Snapshot

from k2_etl.errors import K2Error
from k2_etl.lake import cleanup
from k2_etl.wire.retry import retry_lost_commits

OFFSETS_PROPERTY = "k2.kafka-offsets"  # {"group": {"topic": {"partition": next offset}}}
TOPIC_IDS_PROPERTY = "k2.kafka-topic-ids"  # {"group": {"topic": "id of the topic the offsets were read from"}}

#: Offsets of one group: topic -> partition -> next offset to read.
Offsets = dict[str, dict[int, int]]
#: The broker's id of each topic (new each time the topic is created); None or missing: not known.
TopicIds = Mapping[str, str | None]


class Fenced(K2Error):
    """Another consumer committed a partition of this batch since this one took it."""


def _recorded(table: Table) -> tuple[dict[str, dict[str, dict[str, int]]], dict[str, dict[str, str]]]:
    """The offsets and topic ids of the newest snapshot that records offsets (maintenance snapshots
    do not); both properties are written by the same append."""
    for snapshot in _back_to_offsets(table):
        properties = snapshot.summary.additional_properties if snapshot.summary else {}
        value = properties.get(OFFSETS_PROPERTY)
        if value is not None:
            return json.loads(value), json.loads(properties.get(TOPIC_IDS_PROPERTY, "{}"))
    return {}, {}


def _void(recorded_id: str | None, topic_id: str | None) -> bool:
    """Offsets recorded for ``recorded_id`` are void for the topic now named by ``topic_id``.
    Offsets recorded with no id (before K2 recorded ids) stand until the next append records one."""
    return recorded_id is not None and topic_id is not None and recorded_id != topic_id


def _back_to_offsets(table: Table) -> Iterator[Snapshot]:
    """The current snapshot and its ancestors, newest first, down to the newest that records offsets."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        yield snapshot
        if snapshot.summary is not None and OFFSETS_PROPERTY in snapshot.summary.additional_properties:
            return
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None


def offsets_lineage(table: Table) -> set[int]:
    """The snapshots the table's offsets are found through (the current one back to the newest
    that records them): snapshot expiry must keep them, or consumers would lose their place.
    Empty when no snapshot records offsets (a table no consumer landed)."""
    lineage = list(_back_to_offsets(table))
    last = lineage[-1].summary if lineage else None
    return (
        {s.snapshot_id for s in lineage}
        if last is not None and OFFSETS_PROPERTY in last.additional_properties
        else set()
    )


def committed_offsets(table: Table, group: str, topic_ids: TopicIds | None = None) -> Offsets:
    """Next offsets to read for ``group``, as the table's current state records them.

    ``topic_ids``: the topics' current ids; offsets recorded for another id of a topic are void
    (left out). Without it, offsets are returned whatever life of the topic they belong to.
    """
    offsets, ids = _recorded(table)
    known = ids.get(group, {})
    current = topic_ids or {}
    return {
        topic: {int(p): offset for p, offset in partitions.items()}
        for topic, partitions in offsets.get(group, {}).items()
        if not _void(known.get(topic), current.get(topic))
    }


def unchanged_since(table: Table, group: str, topic_ids: TopicIds | None = None) -> dict[str, dict[int, int]]:
    """Per topic-partition ``group`` has an offset for, when that offset was first recorded: the
    timestamp (ms) of the oldest snapshot of the current lineage from which on it is the same.
    As old as the lineage reaches, when expiry removed the snapshot that first recorded it."""
    current = committed_offsets(table, group, topic_ids)
    since: dict[str, dict[int, int]] = {}
    open_ = {(topic, p) for topic, partitions in current.items() for p in partitions}
    # By id once: snapshot_by_id scans the list, and a walk back over thousands of kept snapshots
    # (a consumer commits every second) would be quadratic.
    by_id = {s.snapshot_id: s for s in table.metadata.snapshots}
    snapshot = table.current_snapshot()
    while snapshot is not None and open_:
        properties = snapshot.summary.additional_properties if snapshot.summary else {}
        if OFFSETS_PROPERTY in properties:  # snapshots without it (maintenance) keep their parent's offsets
            offsets = json.loads(properties[OFFSETS_PROPERTY]).get(group, {})
            ids = json.loads(properties.get(TOPIC_IDS_PROPERTY, "{}")).get(group, {})
            for topic, partition in list(open_):
                void = _void(ids.get(topic), (topic_ids or {}).get(topic))
                if not void and offsets.get(topic, {}).get(str(partition)) == current[topic][partition]:
                    since.setdefault(topic, {})[partition] = snapshot.timestamp_ms
                else:
                    open_.discard((topic, partition))
        snapshot = by_id.get(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    return since


def recorded_topic_ids(table: Table, group: str) -> dict[str, str]:
    """The topic ids ``group``'s offsets in the table were read from (topics recorded without one are left out)."""
    return dict(_recorded(table)[1].get(group, {}))


@retry_lost_commits()
def append_with_offsets(
    table: Table,
    data: pa.Table,
    group: str,
    expected: Mapping[str, Mapping[int, int | None]],
    next_offsets: Offsets,
    topic_ids: TopicIds | None = None,
) -> None:
    """Append ``data`` and record ``next_offsets`` for ``group``, if the table still records ``expected``.

    ``expected``: per topic-partition of the batch, the next offset the table recorded when the
    batch began (None: nothing recorded). Raises :class:`Fenced` when it records anything else.
    ``topic_ids``: the ids of the topics the batch was read from, recorded with the offsets; the
    offsets recorded for another id of a topic are void (compared as None) and replaced.
    """
    table.refresh()
    without_commit_retries(table)
    recorded, recorded_ids = _recorded(table)
    ids = recorded_ids.setdefault(group, {})
    given = topic_ids or {}
    mine = {
        topic: partitions
        for topic, partitions in recorded.get(group, {}).items()
        if not _void(ids.get(topic), given.get(topic))
    }
    for topic, partitions in expected.items():
        for partition, offset in partitions.items():
            now = mine.get(topic, {}).get(str(partition))
            if now != offset:
                raise Fenced(
                    f"{table.name()[-1]}: {topic}[{partition}] is at offset {now} in the table, "
                    f"not {offset}: another consumer committed it; dropping this batch"
                )
    merged = {topic: dict(partitions) for topic, partitions in mine.items()}
    for topic, partitions in next_offsets.items():
        merged.setdefault(topic, {}).update({str(p): o for p, o in partitions.items()})
        if given.get(topic) is not None:
            ids[topic] = str(given[topic])
        else:  # offsets of a life not known: they must not pass for those of the id recorded before
            ids.pop(topic, None)
    recorded[group] = merged
    properties = {OFFSETS_PROPERTY: json.dumps(recorded, sort_keys=True)}
    if any(recorded_ids.values()):
        properties[TOPIC_IDS_PROPERTY] = json.dumps({g: i for g, i in recorded_ids.items() if i}, sort_keys=True)
    cleanup.append(table, data, properties)  # a failed attempt removes its files


def without_commit_retries(table: Table) -> None:
    """Turn off pyiceberg's own retry of a conflicting commit, for this table object.

    pyiceberg rebuilds a conflicting append on the new head with the same snapshot properties,
    so a stale consumer's offsets would commit without the fencing check above (its batch
    landing twice, other groups' offsets rolled back). The whole append is retried here instead,
    check included. Only the in-memory metadata changes: a commit applies its updates to the
    catalog's current metadata, so the stored table properties are untouched.
    """
    properties = {**table.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}
    table.metadata = table.metadata.model_copy(update={"properties": properties})
