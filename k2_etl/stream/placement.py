"""Where each partition the consumer owns stands: read from the tables, never from Kafka.

A partition is placed when it is assigned, and again when its batch was dropped (fenced, or
the topic was created again): the data table's offsets say where to resume and are the fence
of the data appends; the ``sequence_events`` table's offsets are the fence of the event
appends and say up to where the events are written already. Offsets belong to one life of a
topic: those recorded for another topic id are void and the partition is read from the
beginning (deduplication keeps what landed before out).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from k2_etl.config import Settings
from k2_etl.lake.commits import committed_offsets, recorded_topic_ids
from k2_etl.observability import STREAM_TOPIC_RESETS
from k2_etl.stream.steps import Step
from k2_etl.stream.tables import ConsumerTables
from k2_etl.wire.kafka import admin_client, topic_ids

log = logging.getLogger(__name__)

#: Per topic, per partition: an offset a table records (None: nothing recorded).
Fences = dict[str, dict[int, int | None]]


@dataclass
class Place:
    """Where a partition resumes, as the tables say."""

    read_from: int | None  # the offset to read from (None: the beginning)
    data: int | None  # what the data table records (the fence of its appends)
    events: int | None  # what the sequence-events table records (the fence of its appends)
    events_from: int | None  # events of records before this offset are in the events table already
    reset: str | None = None  # why the recorded offsets do not apply (the partition is read again)


class Placement:
    """The partitions owned, placed or waiting to be, and what the tables record for them.

    The dictionaries are only ever changed in place: the batch reads :attr:`expected` to know
    which messages to take, and the checkpoint moves the fences forward as batches land.
    """

    def __init__(self, settings: Settings, group: str, tables: ConsumerTables, step: Step) -> None:
        """``step``: the step that places partitions (tried again at once when partitions wait)."""
        self.settings = settings
        self.group = group
        self.tables = tables
        self.step = step
        self.admin = admin_client(settings)
        self.expected: Fences = {}  # placed partitions -> offset the data table records
        self.events_expected: Fences = {}  # placed partitions -> offset the events table records
        self.events_from: Fences = {}  # placed partitions -> events before it are written
        self.unplaced: dict[str, set[int]] = {}  # assigned partitions whose place is still to be read
        self.topic_ids: dict[str, str | None] = {}  # the life of each topic the places were read for

    def owned(self) -> int:
        return sum(len(owned) for owned in self.expected.values())

    def assign(self, partitions: list[TopicPartition]) -> None:
        """New partitions to place (the consumer holds them paused meanwhile)."""
        for tp in partitions:
            self.unplaced.setdefault(tp.topic, set()).add(tp.partition)
        self.step.retry_at = 0.0

    def place(self, consumer: Consumer, paused: bool) -> None:
        """Read where the tables stand for the unplaced partitions (in the topics' current lives),
        seek there and resume them (unless ``paused``: the consumer resumes them later). All or
        nothing: what is read is published (for fencing and for taking messages) only once every
        partition is sought and resumed, so a failure half-way leaves them all unplaced, paused,
        for the next try."""
        self.tables.open()
        events_table = self.tables.sequence_events
        assert events_table is not None
        ids = topic_ids(self.settings, self.unplaced, self.admin)
        events_table.refresh()
        found = {topic: self._read(consumer, topic, sorted(partitions), ids.get(topic))
                 for topic, partitions in sorted(self.unplaced.items())}  # fmt: skip
        for topic, places in found.items():
            for partition, place in places.items():
                offset = OFFSET_BEGINNING if place.read_from is None else place.read_from
                consumer.seek(TopicPartition(topic, partition, offset))
        placed = [TopicPartition(t, p) for t, partitions in self.unplaced.items() for p in partitions]
        if not paused:
            consumer.resume(placed)
        for topic, places in found.items():
            self.topic_ids[topic] = ids.get(topic)
            for partition, place in places.items():
                self.expected.setdefault(topic, {})[partition] = place.data
                self.events_expected.setdefault(topic, {})[partition] = place.events
                self.events_from.setdefault(topic, {})[partition] = place.events_from
                if place.reset is not None:
                    STREAM_TOPIC_RESETS.labels(topic).inc()
                    log.warning("%s[%d]: %s: reading the partition from the beginning (records landed before are "
                                "counted as deduplicated)", topic, partition, place.reset)  # fmt: skip
                log.info("assigned %s[%d]: resuming at %s", topic, partition, place.read_from or "the beginning")
        self.unplaced.clear()

    def forget(self, partitions: list[TopicPartition]) -> None:
        """``partitions`` are no longer ours."""
        for tp in partitions:
            self._drop_fences(tp.topic, tp.partition)
            self.unplaced.get(tp.topic, set()).discard(tp.partition)
        for topic in [t for t, owned in self.unplaced.items() if not owned]:
            del self.unplaced[topic]

    def unplace(self, consumer: Consumer, topic: str, partitions: list[int]) -> None:
        """Pause ``partitions``; they are placed again from where the tables stand."""
        if not partitions:
            return
        with contextlib.suppress(KafkaException):
            consumer.pause([TopicPartition(topic, p) for p in partitions])
        for partition in partitions:
            self._drop_fences(topic, partition)
            self.unplaced.setdefault(topic, set()).add(partition)
        self.step.retry_at = 0.0

    def landed(self, topic: str, next_offsets: dict[int, int]) -> None:
        """A data append recorded ``next_offsets``: the fence of the next one."""
        self.expected[topic].update(next_offsets)

    def events_landed(self, topic: str, next_offsets: dict[int, int]) -> None:
        """An events append recorded ``next_offsets``: its fence, and the events written up to there."""
        self.events_expected.setdefault(topic, {}).update(next_offsets)
        self.events_from.setdefault(topic, {}).update(next_offsets)

    def _drop_fences(self, topic: str, partition: int) -> None:
        self.expected.get(topic, {}).pop(partition, None)
        self.events_expected.get(topic, {}).pop(partition, None)
        self.events_from.get(topic, {}).pop(partition, None)

    def _read(self, consumer: Consumer, topic: str, partitions: list[int], topic_id: str | None) -> dict[int, Place]:
        """Where the tables stand for ``partitions``. Offsets recorded for another life of the topic
        are void (the partition is read from the beginning; deduplication keeps what landed before
        out), and so are offsets recorded without a topic id that lie beyond the partition's end.
        The caller refreshes the events table."""
        assert self.tables.sequence_events is not None
        table = self.tables.by_topic[topic]
        table.refresh()
        recorded = committed_offsets(table, self.group).get(topic, {})
        mine = committed_offsets(table, self.group, {topic: topic_id}).get(topic, {})
        recorded_id = recorded_topic_ids(table, self.group).get(topic)
        events = committed_offsets(self.tables.sequence_events, self.group, {topic: topic_id}).get(topic, {})
        places: dict[int, Place] = {}
        for partition in partitions:
            place = Place(mine.get(partition), mine.get(partition), events.get(partition), events.get(partition))
            if recorded.get(partition) is not None and mine.get(partition) is None:
                place.reset = (f"the tables record offset {recorded[partition]} for another life of the topic "
                               f"(id {recorded_id}, now {topic_id})")  # fmt: skip
            elif mine.get(partition) is not None and recorded_id is None:
                high = _end_of(consumer, topic, partition)
                if high is not None and mine[partition] > high:
                    # Still fenced against the offsets recorded (the first append replaces them); read from 0,
                    # and sequence events are written for every record again (none of this life was).
                    place.reset = (f"the tables record offset {mine[partition]}, recorded without a topic id, "
                                   f"beyond the partition's end at {high}")  # fmt: skip
                    place.read_from, place.events_from = None, None
            places[partition] = place
        return places


def _end_of(consumer: Consumer, topic: str, partition: int) -> int | None:
    """The partition's end as the broker reports it (None: not known). Used only for offsets
    recorded without a topic id: some brokers report an end short of the truth (the local
    broker's is the start of its last batch), so a false reset would read the partition again."""
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5, cached=False)
    except KafkaException:
        return None
    return high if high >= 0 else None
