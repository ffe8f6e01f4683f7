"""The checkpoint's order on real tables, a real broker and a real registry: dead letters, then
sequence events, then data with the batch's next offsets, then Kafka's committed offsets.

Each "member" is what one consumer process holds (its tables, placement, batch in hand and
checkpoint), with a Kafka consumer assigned its partitions by hand: two members of one group
play a rebalance that moved a partition while a batch was in hand.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from pyiceberg.table import Table

from k2_etl.bootstrap import init_platform
from k2_etl.config import Settings
from k2_etl.errors import UnavailableError
from k2_etl.lake.commits import committed_offsets
from k2_etl.records import consume_reject
from k2_etl.schemas import REJECT, TRADE
from k2_etl.schemas.registration import register_schemas
from k2_etl.stream.batch import Batch, Counts, Decoded, Pending
from k2_etl.stream.checkpoint import Checkpoint
from k2_etl.stream.dead_letters import DeadLetterSink
from k2_etl.stream.health import Health
from k2_etl.stream.placement import Placement
from k2_etl.stream.steps import Step
from k2_etl.stream.tables import ConsumerTables
from k2_etl.wire.avro_decode import Decoder
from k2_etl.wire.kafka import make_consumer
from k2_etl.wire.registry import registry_client
from tests.helpers import a_trade, poll

GROUP = "k2-checkpoint-test"
SYMBOLS = ("BHP", "CBA", "NAB")  # by partition (the key of a message is its symbol)


@dataclass
class Member:
    """One consumer's side of the checkpoint, its partitions placed from the tables."""

    settings: Settings
    topic: str
    kafka: Consumer
    tables: ConsumerTables
    placement: Placement
    batch: Batch
    counts: Counts
    checkpoint: Checkpoint

    def place(self) -> None:
        partitions = [TopicPartition(self.topic, p) for p in range(self.settings.topic_partitions)]
        self.placement.assign(partitions)
        self.placement.place(self.kafka, paused=True)

    def hold(self, rows: list[tuple[int, int, int]], dead: Sequence[tuple[int, int]] = ()) -> Pending:
        """Put a batch in hand as taking and decoding would: trades at ``(partition, offset,
        sequence number)`` (the event id names the position: the same message, the same record;
        the symbol names the partition), and rejects at ``(partition, offset)`` for the dead
        letters."""
        table = self.tables.by_topic[self.topic]
        records = [
            {**a_trade(), "event_id": f"p{p}-o{o}", "symbol": SYMBOLS[p], "sequence_number": seq} for p, o, seq in rows
        ]
        pending = Pending(
            decoded=Decoded(
                pa.Table.from_pylist(records, schema=table.schema().as_arrow()),
                np.array([p for p, _, _ in rows], dtype=np.int64),
                np.array([o for _, o, _ in rows], dtype=np.int64),
            ),
            dead={(p, o): consume_reject(self.topic, p, o, b"\x07junk", [], "not Avro", "trade") for p, o in dead},
        )
        for p, o in [(p, o) for p, o, _ in rows] + list(dead):
            pending.next_offsets[p] = max(pending.next_offsets.get(p, 0), o + 1)
        pending.consumed = len(rows) + len(dead)
        self.counts.consumed += pending.consumed
        self.counts.rejected += pending.rejected
        self.batch.pending[self.topic] = pending
        return pending

    def close(self) -> None:
        self.kafka.close()
        self.checkpoint.dead_letters.close()
        self.batch.close()


@pytest.fixture
def platform(own_settings: Settings) -> Settings:
    init_platform(own_settings)
    return own_settings


@pytest.fixture
def settings(platform: Settings) -> Settings:
    register_schemas(platform)
    return platform


@pytest.fixture
def members(platform: Settings) -> Iterator[list[Member]]:
    made: list[Member] = []
    yield made
    for member in made:
        member.close()


def member(settings: Settings, members: list[Member]) -> Member:
    topic = TRADE.topic_name(settings)
    counts = Counts()
    tables = ConsumerTables(settings, {topic: TRADE.name})
    placement = Placement(settings, GROUP, tables, Step("read where the tables stand", Health(60), settings))
    batch = Batch(settings, {topic: TRADE.name}, placement.expected, counts)
    checkpoint = Checkpoint(GROUP, tables, placement, batch, DeadLetterSink(settings), counts)
    kafka = make_consumer(settings, GROUP)
    kafka.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.topic_partitions)])
    made = Member(settings, topic, kafka, tables, placement, batch, counts, checkpoint)
    members.append(made)
    made.place()
    return made


def ids(table: Table) -> list[str]:
    table.refresh()
    return sorted(table.scan().to_arrow().column("event_id").to_pylist())


def events(member: Member) -> list[tuple[str, int, int]]:
    """(kind, received number, offset) of each sequence event."""
    table = member.tables.sequence_events
    assert table is not None
    table.refresh()
    rows = table.scan().to_arrow().to_pylist()
    return sorted((r["kind"], r["received_sequence"], r["kafka_offset"]) for r in rows)


def offsets(table: Table) -> dict[str, dict[int, int]]:
    table.refresh()
    return committed_offsets(table, GROUP)


def snapshot_id(table: Table) -> int | None:
    table.refresh()
    current = table.current_snapshot()
    return current.snapshot_id if current else None


def dead_letters(settings: Settings) -> list[dict[str, object]]:
    """The reject records on the dead-letter topic, decoded with the registry's schema."""
    topic = REJECT.topic_name(settings)
    reader = make_consumer(settings, "k2-checkpoint-test-reader", **{"enable.partition.eof": True})
    decoder = Decoder(registry_client(settings))
    try:
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.topic_partitions)])
        found, at_end = [], set()
        while len(at_end) < settings.topic_partitions:
            for message in reader.consume(100, 1.0):
                if message.error() is not None:
                    at_end.add(message.partition())
                else:
                    found.append(decoder.decode(message.value())[1])
        return found
    finally:
        reader.close()
        decoder.close()


def test_a_batch_lands_dead_letters_then_events_then_data_recording_its_next_offsets(
    settings: Settings, members: list[Member]
) -> None:
    a = member(settings, members)
    # partition 0: numbers 1, 2, 5 (a gap) and a poison message at offset 3; partition 1: one trade
    pending = a.hold([(0, 0, 1), (0, 1, 2), (0, 2, 5), (1, 0, 1)], dead=[(0, 3)])
    assert pending.next_offsets == {0: 4, 1: 1}
    a.checkpoint.land(a.kafka)

    trades, events_table = a.tables.by_topic[a.topic], a.tables.sequence_events
    assert events_table is not None
    assert ids(trades) == ["p0-o0", "p0-o1", "p0-o2", "p1-o0"]
    assert events(a) == [("gap", 5, 2)]
    # both tables record exactly the batch's next offsets, the events' snapshot first
    assert offsets(trades) == offsets(events_table) == {a.topic: {0: 4, 1: 1}}
    assert events_table.current_snapshot().timestamp_ms <= trades.current_snapshot().timestamp_ms  # type: ignore[union-attr]
    # the reject reached Kafka, framed with the registered reject schema
    assert [r["reject_id"] for r in dead_letters(settings)] == [pending.dead[(0, 3)]["reject_id"]]
    # the batch is no longer in hand; its offsets are the fences of the next appends
    assert a.batch.pending == {}
    assert [a.placement.expected[a.topic][p] for p in (0, 1)] == [4, 1]
    assert [a.placement.events_from[a.topic][p] for p in (0, 1)] == [4, 1]
    assert a.counts.to_dict() == {"consumed": 5, "landed": 4, "rejected": 1, "deduplicated": 0}
    # Kafka's committed offsets follow (asynchronously: for lag tools only)
    wanted = [TopicPartition(a.topic, 0), TopicPartition(a.topic, 1)]
    poll(lambda: [tp.offset for tp in a.kafka.committed(wanted, timeout=5)] == [4, 1] or None, 30, "Kafka's offsets")


def test_dead_letters_that_cannot_be_produced_stop_the_batch_before_anything_lands(
    platform: Settings, members: list[Member]
) -> None:
    """The reject schema is not registered yet: the dead letters cannot be framed, so nothing
    moves past their messages; the batch stays in hand, decided, and lands on the next try."""
    a = member(platform, members)
    pending = a.hold([(0, 0, 1), (0, 1, 3)], dead=[(0, 2)])
    trades, events_table = a.tables.by_topic[a.topic], a.tables.sequence_events
    assert events_table is not None
    with pytest.raises(UnavailableError, match="not registered") as failed:
        a.checkpoint.land(a.kafka)
    assert failed.value.dependency == "registry"
    assert snapshot_id(trades) is None and snapshot_id(events_table) is None
    assert a.batch.pending == {a.topic: pending} and pending.decoded is not None
    assert a.placement.expected[a.topic][0] is None

    register_schemas(platform)
    a.checkpoint.land(a.kafka)
    assert ids(trades) == ["p0-o0", "p0-o1"]
    assert events(a) == [("gap", 3, 1)]
    assert offsets(trades) == offsets(events_table) == {a.topic: {0: 3}}
    assert len(dead_letters(platform)) == 1


def test_a_stale_batch_is_fenced_dropped_and_lands_nothing(settings: Settings, members: list[Member]) -> None:
    """A rebalance moved partition 0 from B to A while B held a batch: A lands first, B is fenced
    (by the events table, the first it writes), lands nothing, and is placed where A left off."""
    a, b = member(settings, members), member(settings, members)
    a.hold([(0, 0, 1), (0, 1, 2), (0, 2, 4)])  # a gap: A writes an event, recording offset 3
    a.checkpoint.land(a.kafka)
    trades, events_table = a.tables.by_topic[a.topic], a.tables.sequence_events
    assert events_table is not None
    before = snapshot_id(trades), snapshot_id(events_table)

    b.hold([(0, 0, 1), (0, 1, 2), (0, 2, 4), (0, 3, 6)])
    b.checkpoint.land(b.kafka)  # fenced: not an error, the batch is dropped
    assert (snapshot_id(trades), snapshot_id(events_table)) == before
    assert ids(trades) == ["p0-o0", "p0-o1", "p0-o2"]
    assert events(a) == [("gap", 4, 2)]
    assert b.batch.pending == {}
    assert b.counts.to_dict() == {"consumed": 0, "landed": 0, "rejected": 0, "deduplicated": 0}
    assert b.placement.unplaced == {b.topic: {0}} and 0 not in b.placement.expected[b.topic]

    b.place()
    assert b.placement.expected[b.topic][0] == b.placement.events_from[b.topic][0] == 3


def test_events_land_before_their_data_and_are_not_written_again_when_the_data_is(
    settings: Settings, members: list[Member]
) -> None:
    """B is fenced by the data table after its events landed (A landed numbers 1-3 without an
    event, so the events table did not fence B): the events table is a batch ahead, never behind.
    Placed again, B lands the record at offset 3 without writing its gap event a second time."""
    a, b = member(settings, members), member(settings, members)
    a.hold([(0, 0, 1), (0, 1, 2), (0, 2, 3)])
    a.checkpoint.land(a.kafka)
    trades, events_table = a.tables.by_topic[a.topic], a.tables.sequence_events
    assert events_table is not None
    assert events(a) == [] and offsets(events_table) == {}

    b.hold([(0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 3, 5)])
    b.checkpoint.land(b.kafka)
    assert events(b) == [("gap", 5, 3)]
    assert offsets(events_table) == {b.topic: {0: 4}}
    assert ids(trades) == ["p0-o0", "p0-o1", "p0-o2"]
    assert offsets(trades) == {b.topic: {0: 3}}
    assert b.batch.pending == {}

    b.place()
    assert b.placement.expected[b.topic][0] == 3 and b.placement.events_from[b.topic][0] == 4
    b.hold([(0, 3, 5)])
    b.checkpoint.land(b.kafka)
    assert ids(trades) == ["p0-o0", "p0-o1", "p0-o2", "p0-o3"]
    assert offsets(trades) == offsets(events_table) == {b.topic: {0: 4}}
    assert events(b) == [("gap", 5, 3)]
