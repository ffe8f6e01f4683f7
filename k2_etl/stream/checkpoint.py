"""Landing the batch in hand, in the order that makes it exactly once.

For every topic with records in hand, one try of :meth:`Checkpoint.land` does, in this order:

1. **decode** what is not decoded yet (kept across tries, so a retry counts nothing twice);
2. **dead letters**: the batch's rejects are produced and known delivered before anything
   moves past their messages;
3. **sequence events** of the batch's records land in ``sequence_events``, recording the
   batch's next offsets there: after a crash between this and the next step the batch is read
   again, and the events table says its events are written already;
4. **data**: one append of the new rows (records whose id the table holds are dropped),
   recording the batch's next offsets in the same snapshot (:mod:`k2_etl.lake.commits`). That
   snapshot is the commit: the consumer resumes from what it records;
5. **Kafka's committed offsets** follow, for lag tools only.

Steps 3 and 4 are fenced: a table that records other offsets than the consumer expects was
written by another consumer that took the partitions meanwhile, and the topic's batch is dropped
(nothing of it lands; its partitions are placed again). A step that raises leaves the batch in
hand for the next try.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter

import pyarrow as pa
from confluent_kafka import Consumer, KafkaException, TopicPartition

from k2_etl.lake.commits import Fenced, append_with_offsets
from k2_etl.observability import (
    STREAM_BATCH_ROWS,
    STREAM_COMMIT_SECONDS,
    STREAM_CONSUMED,
    STREAM_DEDUPLICATED,
    STREAM_FENCED,
    STREAM_FRESHNESS_SECONDS,
    STREAM_LANDED,
    STREAM_REJECTED,
    STREAM_SEQUENCE_EVENTS,
    STREAM_SEQUENCE_MISSING,
)
from k2_etl.stream.batch import Batch, Counts, Decoded, Pending
from k2_etl.stream.dead_letters import DeadLetterSink
from k2_etl.stream.placement import Placement
from k2_etl.stream.tables import ConsumerTables

log = logging.getLogger(__name__)


class Checkpoint:
    """Lands a consumer's batch: the one place that knows the order of its writes."""

    def __init__(
        self,
        group: str,
        tables: ConsumerTables,
        placement: Placement,
        batch: Batch,
        dead_letters: DeadLetterSink,
        counts: Counts,
    ) -> None:
        self.group = group
        self.tables = tables
        self.placement = placement
        self.batch = batch
        self.dead_letters = dead_letters
        self.counts = counts

    def land(self, consumer: Consumer) -> None:
        """Land the batch in hand: one append per table, with the offsets it covers. Raises what a
        dependency raised; the batch then stays in hand (its decoding and rejects kept) for a retry.
        ``consumer``: its offsets are committed after the appends; a fenced topic's partitions are
        paused on it until they are placed again."""
        if not self.batch.pending:
            return
        self.tables.open()
        for topic, pending in self.batch.pending.items():
            table = self.tables.by_topic[topic]
            table.refresh()
            self.tables.indexes[topic].sync()  # ids removed by a rollback or replay must not count as landed
            if pending.decoded is None:
                pending.decoded = self.batch.decode(topic, pending, table)
        self.dead_letters.send(reject for pending in self.batch.pending.values() for reject in pending.dead.values())
        for topic, pending in list(self.batch.pending.items()):
            table = self.tables.by_topic[topic]
            decoded = pending.decoded
            assert decoded is not None
            batch = decoded.filter(self.tables.indexes[topic].fresh(decoded.table))
            data = batch.table
            received = decoded.table.num_rows
            expected = {topic: {p: self.placement.expected[topic].get(p) for p in pending.next_offsets}}
            ids = {topic: self.placement.topic_ids.get(topic)}
            name = table.name()[-1]
            try:
                kinds = self._land_events(topic, pending, batch)
                with STREAM_COMMIT_SECONDS.labels(name).time():
                    append_with_offsets(table, data, self.group, expected, {topic: pending.next_offsets}, ids)
            except Fenced as exc:
                log.warning("%s", exc)
                STREAM_FENCED.labels(name).inc()
                self.tables.clear()  # the dropped batch's ids and numbers were counted in
                self.batch.drop(topic)
                self.placement.unplace(consumer, topic, list(pending.next_offsets))
                continue
            self.batch.pending.pop(topic)
            STREAM_CONSUMED.labels(name).inc(pending.consumed)
            STREAM_REJECTED.labels(name).inc(pending.rejected)
            for kind, count in kinds.items():
                if kind == "missing":
                    STREAM_SEQUENCE_MISSING.labels(name).inc(count)
                else:
                    STREAM_SEQUENCE_EVENTS.labels(name, kind).inc(count)
            self.placement.landed(topic, pending.next_offsets)
            self.tables.indexes[topic].add(data)
            self.counts.landed += data.num_rows
            self.counts.deduplicated += received - data.num_rows
            STREAM_LANDED.labels(name).inc(data.num_rows)
            STREAM_DEDUPLICATED.labels(name).inc(received - data.num_rows)
            STREAM_BATCH_ROWS.labels(name).observe(data.num_rows)
            if pending.oldest_timestamp_ms is not None and pending.oldest_timestamp_ms > 0:
                STREAM_FRESHNESS_SECONDS.labels(name).observe(time.time() - pending.oldest_timestamp_ms / 1000)
            with contextlib.suppress(KafkaException):  # for lag tools only: the tables hold the offsets
                consumer.commit(
                    offsets=[TopicPartition(topic, p, o) for p, o in pending.next_offsets.items()], asynchronous=True
                )

    def _land_events(self, topic: str, pending: Pending, batch: Decoded) -> Counter[str]:
        """Classify the batch's sequence numbers; land its events first (fenced like the data).

        The events table records, per partition, the offset up to which it holds the events: after
        a crash between the two appends, the batch is read again and its events are not written twice.
        Returns the records per kind and the missing numbers, counted once the batch has landed.
        """
        tracker = self.tables.trackers.get(topic)
        if tracker is None or batch.table.num_rows == 0:
            return Counter()
        events_table = self.tables.sequence_events
        assert events_table is not None
        fence = self.placement.events_expected.setdefault(topic, {})
        written = self.placement.events_from.setdefault(topic, {})
        events, counts = tracker.observe(
            batch.table,
            batch.partitions,
            batch.offsets,
            topic=topic,
            landed=self.placement.expected[topic],
            events_from=written,
        )
        behind = {p: o for p, o in pending.next_offsets.items() if (written.get(p) or 0) < o}
        if events and behind:
            rows = pa.Table.from_pylist(events, schema=events_table.schema().as_arrow())
            append_with_offsets(
                events_table,
                rows,
                self.group,
                {topic: {p: fence.get(p) for p in behind}},
                {topic: behind},
                {topic: self.placement.topic_ids.get(topic)},
            )
            self.placement.events_landed(topic, behind)
        return counts
