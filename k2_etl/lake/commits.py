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
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.snapshots import Snapshot
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from k2_etl.errors import K2Error

OFFSETS_PROPERTY = "k2.kafka-offsets"  # {"group": {"topic": {"partition": next offset}}}

#: Offsets of one group: topic -> partition -> next offset to read.
Offsets = dict[str, dict[int, int]]


class Fenced(K2Error):
    """Another consumer committed a partition of this batch since this one took it."""


def _recorded(table: Table) -> dict[str, dict[str, dict[str, int]]]:
    """The offsets property of the newest snapshot that has one (maintenance snapshots do not)."""
    for snapshot in _back_to_offsets(table):
        value = snapshot.summary.additional_properties.get(OFFSETS_PROPERTY) if snapshot.summary else None
        if value is not None:
            return json.loads(value)
    return {}


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


def committed_offsets(table: Table, group: str) -> Offsets:
    """Next offsets to read for ``group``, as the table's current state records them."""
    return {
        topic: {int(p): offset for p, offset in partitions.items()}
        for topic, partitions in _recorded(table).get(group, {}).items()
    }


@retry(
    retry=retry_if_exception_type(CommitFailedException),
    stop=stop_after_attempt(10),
    wait=wait_random_exponential(multiplier=0.05, max=2),
    reraise=True,
)
def append_with_offsets(
    table: Table,
    data: pa.Table,
    group: str,
    expected: Mapping[str, Mapping[int, int | None]],
    next_offsets: Offsets,
) -> None:
    """Append ``data`` and record ``next_offsets`` for ``group``, if the table still records ``expected``.

    ``expected``: per topic-partition of the batch, the next offset the table recorded when the
    batch began (None: nothing recorded). Raises :class:`Fenced` when it records anything else.
    """
    table.refresh()
    without_commit_retries(table)
    recorded = _recorded(table)
    mine = recorded.get(group, {})
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
    recorded[group] = merged
    table.append(data, snapshot_properties={OFFSETS_PROPERTY: json.dumps(recorded, sort_keys=True)})


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
