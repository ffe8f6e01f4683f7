"""`k2 consume`: Kafka topics → Iceberg tables, exactly once, about a second after production.

One consumer-group member. Each message is decoded with its registered
schema and buffered for its table; when the buffer holds
``K2_STREAM_BATCH_ROWS`` records or its oldest has waited
``K2_STREAM_BATCH_SECONDS``, every table with records gets one append
carrying the offsets it covers (:mod:`k2_etl.lake.commits`). Partitions
resume from the offsets the tables record, never from Kafka's committed
offsets (those are committed too, after each append, so lag shows in the
usual tools).

Bodies are decoded at commit time, all of a writer schema at once, by
DuckDB's Avro reader (:mod:`k2_etl.stream.decode`). Records whose id the
table already holds are dropped at the append
(:mod:`k2_etl.stream.dedup`): re-sent loads never show twice.

A message that cannot be decoded goes to the dead-letter topic with its
bytes, headers, position and the reason (flushed before the append that
moves past it) and lands in the ``rejects`` table from there; an
undecodable message on the dead-letter topic itself becomes a reject row
directly. SIGTERM or SIGINT: the batch in hand is committed, then exit 0.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import duckdb
import fastavro
import numpy as np
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.schema_registry import Schema
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.schema import Schema as IcebergSchema
from pyiceberg.table import Table
from tenacity import (
    RetryCallState,
    Retrying,
    retry,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from k2_etl.config import Settings
from k2_etl.errors import K2Error, SchemaError, UnavailableError
from k2_etl.ingest.avro_frame import confluent_prefix
from k2_etl.ingest.producer import make_producer
from k2_etl.kafka import client_config
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import Fenced, append_with_offsets, committed_offsets
from k2_etl.lake.tables import TABLES, evolve_to_read, iceberg_schema_of
from k2_etl.observability import (
    STREAM_BATCH_ROWS,
    STREAM_COMMIT_FAILURES,
    STREAM_COMMIT_SECONDS,
    STREAM_CONSUMED,
    STREAM_DEDUPLICATED,
    STREAM_FENCED,
    STREAM_FRESHNESS_SECONDS,
    STREAM_LAG,
    STREAM_LANDED,
    STREAM_REJECTED,
    STREAM_SEQUENCE_EVENTS,
    STREAM_SEQUENCE_MISSING,
)
from k2_etl.schemas import REJECT, SEQUENCE_EVENT, TOPIC_RECORD_TYPES
from k2_etl.schemas.registration import registry_client
from k2_etl.stream.decode import BatchDecoder, Decoder, Undecodable, frame
from k2_etl.stream.dedup import IdIndex
from k2_etl.stream.health import Health, serve
from k2_etl.stream.sequences import SequenceTracker
from k2_etl.stream.validate import problems

log = logging.getLogger(__name__)

POLL_MESSAGES = 5_000
POLL_SECONDS = 0.2
LAG_SECONDS = 5.0  # how often the lag gauge is updated


_Taken = tuple[int, int, int, bytes, Message]  # writer schema id, partition, offset, value, message


@dataclass
class _Pending:
    """Records of one topic waiting for their table's next append, and the offsets they take it to."""

    messages: list[_Taken] = field(default_factory=list)  # decoded at commit
    schema_ids: set[int] = field(default_factory=set)  # writer schema ids among them
    known: tuple[bytes, int] | None = None  # the framing prefix last seen and its (known) schema id
    rows: list[dict[str, Any]] = field(default_factory=list)  # rejects of undecodable dead letters, as rows
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read
    since: float | None = None  # when the oldest record arrived
    oldest_timestamp_ms: int | None = None  # Kafka timestamp of the oldest record (for freshness)
    consumed: int = 0  # messages taken (metrics are counted per batch: per message they cost more than decoding)
    rejected: int = 0


@dataclass
class _Decoded:
    """A batch's rows and each row's Kafka partition and offset."""

    table: pa.Table
    partitions: np.ndarray
    offsets: np.ndarray

    def filter(self, mask: np.ndarray) -> _Decoded:
        return _Decoded(self.table.filter(pa.array(mask)), self.partitions[mask], self.offsets[mask])


@dataclass
class Counts:
    """They reconcile: consumed = landed + rejected + deduplicated (once the batch in hand is committed)."""

    consumed: int = 0
    landed: int = 0
    rejected: int = 0
    deduplicated: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "consumed": self.consumed,
            "landed": self.landed,
            "rejected": self.rejected,
            "deduplicated": self.deduplicated,
        }


class StreamConsumer:
    """Create once per process; :meth:`run` until :meth:`stop` (or a signal)."""

    def __init__(self, settings: Settings, *, topics: list[str] | None = None, group: str | None = None) -> None:
        self.settings = settings
        self.group = group or settings.stream_group
        by_topic = {r.topic_name(settings): r for r in TOPIC_RECORD_TYPES}
        self.topics = topics or list(by_topic)
        unknown = [t for t in self.topics if t not in by_topic]
        if unknown:
            raise K2Error(f"not K2 topics: {', '.join(unknown)} (known: {', '.join(by_topic)})")
        self.record_types = {t: by_topic[t].name for t in self.topics}
        catalog = open_catalog(settings)
        table_of = {d.record.name: d for d in TABLES}
        self.tables: dict[str, Table] = {
            t: catalog.load_table((settings.namespace, table_of[self.record_types[t]].name)) for t in self.topics
        }
        self.indexes: dict[str, IdIndex] = {}
        for t in self.topics:
            definition = table_of[self.record_types[t]]
            assert definition.id_column is not None, f"{definition.name} is not landed from a topic"
            self.indexes[t] = IdIndex(self.tables[t], definition.id_column, definition.day_column)
        self.sequence_events = catalog.load_table((settings.namespace, table_of[SEQUENCE_EVENT.name].name))
        self.trackers: dict[str, SequenceTracker] = {
            t: SequenceTracker(self.tables[t], self.sequence_events, self.record_types[t])
            for t in self.topics
            if "sequence_number" in self.tables[t].schema().column_names
        }
        self.events_expected: dict[str, dict[int, int | None]] = {}  # partitions -> offset the events table records
        self._verdicts: dict[tuple[str, int], str | None] = {}  # (topic, writer schema id) -> why unreadable
        self.dead_letters = REJECT.topic_name(settings)
        self.decoder = Decoder(registry_client(settings))
        self.batch_decoder = BatchDecoder(settings.home / "tmp" / "stream")
        self.producer = make_producer(settings)
        self.reject_schema = fastavro.parse_schema(REJECT.schema)
        self._reject_prefix: bytes | None = None  # looked up at the first dead letter (schemas may come later)
        self.expected: dict[str, dict[int, int | None]] = {}  # owned partitions -> offset the table records
        self.pending: dict[str, _Pending] = {}
        self.counts = Counts()
        self._stopping = False
        self.health = Health(stale_after_seconds=max(10.0, 3 * settings.stream_batch_seconds))
        self.health.details = lambda: {
            "group": self.group,
            "partitions": sum(len(owned) for owned in self.expected.values()),
            **self.counts.to_dict(),
        }

    @retry(retry=retry_if_exception_type(K2Error), wait=wait_random_exponential(multiplier=0.5, max=30))
    def _reject_schema_id(self) -> int:
        """Waited for (unhealthy meanwhile) while the registry is down or the schema not yet registered."""
        subject = REJECT.subject(self.settings)
        try:
            with registry_client(self.settings) as client:
                schema_id = client.lookup_schema(subject, Schema(REJECT.schema_str, "AVRO")).schema_id
        except Exception as exc:
            self.health.problem = f"cannot look up the reject schema under {subject} ({exc}); run `k2 schemas register`"
            log.warning("%s", self.health.problem)
            raise SchemaError(self.health.problem) from None
        self.health.problem = None
        return schema_id

    # --- lifecycle ---------------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self._stopping = True

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("%s: committing the batch in hand, then stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def serve_health(self) -> None:
        """/healthz and /metrics on K2_STREAM_METRICS_PORT (0: not served); a busy port costs a warning."""
        if self.settings.stream_metrics_port == 0:
            return
        host, port = self.settings.stream_metrics_host, self.settings.stream_metrics_port
        try:
            serve(self.health, host, port)
        except OSError as exc:
            log.warning("cannot serve /healthz and /metrics on %s:%d (%s); consuming anyway", host, port, exc.strerror)
        else:
            log.info("health and metrics at http://%s:%d/healthz and /metrics", host, port)

    def run(self, on_commit: Callable[[Counts], None] | None = None) -> Counts:
        consumer = Consumer(
            client_config(
                self.settings,
                **{
                    "group.id": self.group,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": int(self.settings.stream_session_timeout_seconds * 1000),
                    "heartbeat.interval.ms": int(self.settings.stream_session_timeout_seconds * 200),
                    "max.poll.interval.ms": int(self.settings.stream_max_poll_interval_seconds * 1000),
                    "logger": log,
                },
            )
        )
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("consuming %s as group %s", ", ".join(self.topics), self.group)
        lag_due = 0.0
        try:
            while not self._stopping:
                self.health.beat()
                for message in consumer.consume(POLL_MESSAGES, POLL_SECONDS):
                    self._take(message)
                if self._due():
                    self._commit(consumer)
                    if on_commit is not None:
                        on_commit(self.counts)
                if time.monotonic() >= lag_due:
                    self._observe_lag(consumer)
                    lag_due = time.monotonic() + LAG_SECONDS
            self._commit(consumer)
        finally:
            consumer.close()
            self.producer.flush(10)
            self.decoder.close()
        log.info("stopped: %s", json.dumps(self.counts.to_dict()))
        return self.counts

    def _observe_lag(self, consumer: Consumer) -> None:
        """Lag per owned partition from the high watermarks the fetches brought (no extra request)."""
        for topic, partitions in self.expected.items():
            for partition, landed in partitions.items():
                try:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                except KafkaException:
                    continue
                if high >= 0:  # -1: not known yet
                    STREAM_LAG.labels(topic, str(partition)).set(max(0, high - (landed if landed is not None else low)))

    # --- rebalances ------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._clear_state()
        self.sequence_events.refresh()
        for topic in dict.fromkeys(tp.topic for tp in partitions):
            mine = [tp for tp in partitions if tp.topic == topic]
            positions = self._read_positions(topic, [tp.partition for tp in mine])
            for tp in mine:
                offset = positions[tp.partition]
                tp.offset = OFFSET_BEGINNING if offset is None else offset
                log.info("assigned %s[%d]: resuming at %s", tp.topic, tp.partition, offset or "the beginning")
        consumer.assign(partitions)

    def _read_positions(self, topic: str, partitions: list[int]) -> dict[int, int | None]:
        """Where the tables stand for ``partitions`` (remembered for fencing): the next offsets the data
        table records, which are returned, and those the sequence-events table records. The caller
        refreshes the events table (once for all topics)."""
        table = self.tables[topic]
        table.refresh()
        recorded = committed_offsets(table, self.group).get(topic, {})
        events = committed_offsets(self.sequence_events, self.group).get(topic, {})
        for partition in partitions:
            self.expected.setdefault(topic, {})[partition] = recorded.get(partition)
            self.events_expected.setdefault(topic, {})[partition] = events.get(partition)
        return {partition: recorded.get(partition) for partition in partitions}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit(consumer)  # what is in hand is still ours: land it before the partitions move
        self._forget(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(consumer, partitions)  # no longer ours: a commit would be fenced anyway

    def _clear_state(self) -> None:
        """Partitions moved or a batch was dropped: ids and sequence state reload from the tables."""
        for index in self.indexes.values():
            index.clear()
        for tracker in self.trackers.values():
            tracker.clear()

    def _forget(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._clear_state()  # includes the previous owner's rows, when they come back
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for tp in partitions:
            self.expected.get(tp.topic, {}).pop(tp.partition, None)
            self.events_expected.get(tp.topic, {}).pop(tp.partition, None)
            with contextlib.suppress(KeyError):  # another consumer reports it now
                STREAM_LAG.remove(tp.topic, str(tp.partition))
        for topic in {tp.topic for tp in partitions}:
            pending = self.pending.get(topic)
            if pending is None or not gone & {(topic, p) for p in pending.next_offsets}:
                continue
            # A batch spans the topic's partitions: drop it whole. The lost partitions' new owner reads
            # their part; the part of partitions still ours is read again from where the table stands.
            self.pending.pop(topic)
            self._uncount(pending)
            kept = [p for p in pending.next_offsets if (topic, p) not in gone]
            if kept:
                self._resume_from_table(consumer, topic, kept)

    # --- records ---------------------------------------------------------------------------------
    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error.str())
            return
        topic, partition, offset = message.topic() or "", message.partition() or 0, message.offset() or 0
        if partition not in self.expected.get(topic, {}):
            return  # a partition given up in a rebalance: its new owner reads it
        self.counts.consumed += 1
        pending = self.pending.get(topic)
        if pending is None:
            pending = self.pending[topic] = _Pending()
        pending.consumed += 1
        if pending.since is None:
            pending.since = time.monotonic()
            pending.oldest_timestamp_ms = message.timestamp()[1]
        pending.next_offsets[partition] = offset + 1
        value = message.value()
        known = pending.known
        if known is not None and value is not None and value.startswith(known[0]):
            schema_id = known[1]  # the usual case: the same writer schema as the message before
        else:
            try:
                schema_id = frame(value)
                try:
                    self.decoder.schema_text(schema_id)  # a known schema id (fetched once)
                except UnavailableError:  # the registry is down: wait for it (rare; no retry machinery per message)
                    self._schema_when_available(schema_id)
            except Undecodable as exc:
                self._poison(topic, pending, message, str(exc))
                return
            pending.known = (bytes(value[:5]), schema_id) if value is not None else None
            pending.schema_ids.add(schema_id)
        pending.messages.append((schema_id, partition, offset, value or b"", message))

    def _poison(self, topic: str, pending: _Pending, message: Message, reason: str) -> None:
        self.counts.rejected += 1
        pending.rejected += 1
        reject = self._reject(message, reason)
        if topic == self.dead_letters:
            pending.rows.append(reject)  # never send the dead-letter topic's own poison back to it
        else:
            self._send_dead_letter(reject)

    @retry(retry=retry_if_exception_type(UnavailableError), wait=wait_random_exponential(multiplier=0.5, max=30))
    def _schema_when_available(self, schema_id: int) -> str:
        return self.decoder.schema_text(schema_id)  # an unreachable registry is waited for, forever

    def _decode(self, topic: str, pending: _Pending, target: pa.Schema) -> _Decoded:
        """The batch's valid records as the table's Arrow schema: per writer schema, all at once with DuckDB.

        A group with a malformed body fails as a whole; it is then decoded message by message
        (fastavro) so that only the bad ones go to the dead letters. So do records of a writer
        schema the table cannot read, and records failing :func:`~k2_etl.stream.validate.problems`.
        """
        if len(pending.schema_ids) == 1:
            groups = {next(iter(pending.schema_ids)): pending.messages}
        else:
            groups = {}
            for taken in pending.messages:
                groups.setdefault(taken[0], []).append(taken)
        parts: list[pa.Table] = []
        partitions: list[np.ndarray] = []
        offsets: list[np.ndarray] = []
        for schema_id, group in groups.items():
            why = self._unreadable(topic, schema_id)
            if why is not None:
                for taken in group:
                    self._poison(topic, pending, taken[4], why)
                continue
            _, group_partitions, group_offsets, values, _ = zip(*group, strict=True)
            try:
                batch = self.batch_decoder.decode(
                    self.decoder.schema_text(schema_id), pa.array(values, pa.binary()), target
                )
            except (duckdb.Error, Undecodable, pa.ArrowException):
                rows, kept = [], []
                for taken in group:
                    try:
                        rows.append(self._row(taken[3], target))
                        kept.append(taken)
                    except Undecodable as exc:
                        self._poison(topic, pending, taken[4], str(exc))
                batch = pa.concat_tables(rows) if rows else target.empty_table()
                group_partitions, group_offsets = tuple(t[1] for t in kept), tuple(t[2] for t in kept)
            parts.append(batch)
            partitions.append(np.array(group_partitions, dtype=np.int64))
            offsets.append(np.array(group_offsets, dtype=np.int64))
        if pending.rows:
            parts.append(pa.Table.from_pylist(pending.rows, schema=target))
            partitions.append(np.array([r["kafka_partition"] for r in pending.rows], dtype=np.int64))
            offsets.append(np.array([r["kafka_offset"] for r in pending.rows], dtype=np.int64))
        decoded = _Decoded(
            pa.concat_tables(parts) if parts else target.empty_table(),
            np.concatenate(partitions) if partitions else np.empty(0, np.int64),
            np.concatenate(offsets) if offsets else np.empty(0, np.int64),
        )
        if topic == self.dead_letters:
            return decoded
        invalid = problems(decoded.table, self.record_types[topic])
        if not invalid:
            return decoded
        by_position = {(t[1], t[2]): t[4] for t in pending.messages}
        for row, why in invalid.items():
            position = (int(decoded.partitions[row]), int(decoded.offsets[row]))
            self._poison(topic, pending, by_position[position], why)
        keep = np.ones(decoded.table.num_rows, dtype=bool)
        keep[list(invalid)] = False
        return decoded.filter(keep)

    def _row(self, value: bytes, target: pa.Schema) -> pa.Table:
        """One message as a one-row table (fastavro): the slow path that isolates a bad message."""
        record = self.decoder.decode(value)[1]
        try:
            return pa.Table.from_pylist([record], schema=target)
        except (pa.ArrowException, TypeError, ValueError) as exc:  # e.g. a value beyond the column's type
            raise Undecodable(f"does not fit the table's columns: {exc}") from None

    def _unreadable(self, topic: str, schema_id: int) -> str | None:
        """Why the topic's table cannot hold records of writer schema ``schema_id`` (None: it can).

        A writer schema seen for the first time may add columns: the table gains them (union by
        name) before the batch is decoded, so a compatible new version just flows on. One the
        table cannot read sends its records to the dead letters with the reason. Decided once per
        schema id (the table's schema only ever grows).
        """
        key = (topic, schema_id)
        if key not in self._verdicts:
            table = self.tables[topic]
            try:
                writer = iceberg_schema_of(json.loads(self.decoder.schema_text(schema_id)))
                why = self._evolve(table, writer)
            except (ValueError, TypeError, KeyError, NotImplementedError) as exc:  # not convertible to Iceberg
                why = f"{type(exc).__name__}: {exc}"
            if why is not None:
                why = f"writer schema id {schema_id} cannot be read into table {table.name()[-1]}: {why}"
                log.warning("%s; its records go to the dead letters", why)
            else:
                table.refresh()
            self._verdicts[key] = why
        return self._verdicts[key]

    @retry(
        retry=retry_if_exception_type(CommitFailedException),
        stop=stop_after_attempt(10),
        wait=wait_random_exponential(multiplier=0.05, max=2),
        reraise=True,
    )
    def _evolve(self, table: Table, writer: IcebergSchema) -> str | None:
        table.refresh()  # another consumer may have evolved it first
        before = table.schema().column_names
        why = evolve_to_read(table, writer)
        table.refresh()
        if why is None and table.schema().column_names != before:
            log.info(
                "%s: added column(s) %s",
                table.name()[-1],
                ", ".join(c for c in table.schema().column_names if c not in before),
            )
        return why

    def _reject(self, message: Message, reason: str) -> dict[str, Any]:
        topic, partition, offset = message.topic() or "", message.partition() or 0, message.offset() or 0
        raw_headers = [
            (str(h[0]), h[1] if isinstance(h[1], bytes) else str(h[1] or "").encode()) for h in message.headers() or []
        ]
        headers = {k: base64.b64encode(v).decode() for k, v in raw_headers}
        load_id = next((v.decode(errors="replace") for k, v in raw_headers if k == "k2-load-id" and v), None)
        return {
            "reject_id": hashlib.md5(f"{topic}|{partition}|{offset}".encode(), usedforsecurity=False).hexdigest(),
            "rejected_at": datetime.now(UTC),
            "stage": "consume",
            "record_type": self.record_types.get(topic) if topic != self.dead_letters else None,
            "reason": f"{topic}[{partition}] offset {offset}: {reason}",
            "field": None,
            "value": None,
            "source": topic,
            "line_number": None,
            "raw_line": None,
            "kafka_topic": topic,
            "kafka_partition": partition,
            "kafka_offset": offset,
            "raw_bytes": message.value(),
            "headers": json.dumps(headers, sort_keys=True) if headers else None,
            "load_id": load_id,
        }

    def _send_dead_letter(self, reject: dict[str, Any]) -> None:
        if self._reject_prefix is None:
            self._reject_prefix = confluent_prefix(self._reject_schema_id())
        buffer = io.BytesIO()
        buffer.write(self._reject_prefix)
        fastavro.schemaless_writer(buffer, self.reject_schema, reject)
        self.producer.produce(self.dead_letters, buffer.getvalue(), (reject["kafka_topic"] or "").encode())
        self.producer.poll(0)

    # --- commits ---------------------------------------------------------------------------------
    def _due(self) -> bool:
        held = sum(len(p.messages) + len(p.rows) for p in self.pending.values())
        oldest = min((p.since for p in self.pending.values() if p.since is not None), default=None)
        return held >= self.settings.stream_batch_rows or (
            oldest is not None and time.monotonic() - oldest >= self.settings.stream_batch_seconds
        )

    def _commit(self, consumer: Consumer) -> None:
        if not self.pending:
            return
        decoded = {}
        for topic, pending in self.pending.items():
            table = self.tables[topic]
            table.refresh()
            self.indexes[topic].sync()  # ids removed by a rollback or replay must not count as landed
            for schema_id in pending.schema_ids:
                self._unreadable(topic, schema_id)  # evolves the table first when the writer added columns
            decoded[topic] = self._decode(topic, pending, table.schema().as_arrow())
        if self.producer.flush(30) > 0:  # dead letters must be durable before the offsets move past them
            raise UnavailableError("dead letters could not be delivered to Kafka within 30 s")
        for topic, pending in list(self.pending.items()):
            table = self.tables[topic]
            batch = decoded[topic].filter(self.indexes[topic].fresh(decoded[topic].table))
            data = batch.table
            received = decoded[topic].table.num_rows
            expected = {topic: {p: self.expected[topic].get(p) for p in pending.next_offsets}}
            name = table.name()[-1]
            STREAM_CONSUMED.labels(name).inc(pending.consumed)
            STREAM_REJECTED.labels(name).inc(pending.rejected)
            try:
                kinds = self._track_sequences(topic, pending, batch)
                with STREAM_COMMIT_SECONDS.labels(name).time():
                    self._append(table, data, expected, {topic: pending.next_offsets})
            except Fenced as exc:
                log.warning("%s", exc)
                STREAM_FENCED.labels(name).inc()
                self._uncount(pending)
                self._clear_state()  # the dropped batch's ids and numbers were counted in
                self._resume_from_table(consumer, topic, list(pending.next_offsets))
                continue
            finally:
                self.pending.pop(topic, None)
            for kind, count in kinds.items():
                if kind == "missing":
                    STREAM_SEQUENCE_MISSING.labels(name).inc(count)
                else:
                    STREAM_SEQUENCE_EVENTS.labels(name, kind).inc(count)
            self.expected[topic].update(pending.next_offsets)
            self.indexes[topic].add(data)
            self.counts.landed += data.num_rows
            self.counts.deduplicated += received - data.num_rows
            STREAM_LANDED.labels(name).inc(data.num_rows)
            STREAM_DEDUPLICATED.labels(name).inc(received - data.num_rows)
            STREAM_BATCH_ROWS.labels(name).observe(data.num_rows)
            if pending.oldest_timestamp_ms is not None and pending.oldest_timestamp_ms > 0:
                STREAM_FRESHNESS_SECONDS.labels(name).observe(time.time() - pending.oldest_timestamp_ms / 1000)
            consumer.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in pending.next_offsets.items()], asynchronous=True
            )

    def _track_sequences(self, topic: str, pending: _Pending, batch: _Decoded) -> Counter[str]:
        """Classify the batch's sequence numbers; land its events first (fenced like the data).

        The events table records, per partition, the offset up to which it holds the events: after
        a crash between the two appends, the batch is read again and its events are not written twice.
        Returns the records per kind and the missing numbers, counted once the batch has landed.
        """
        tracker = self.trackers.get(topic)
        if tracker is None or batch.table.num_rows == 0:
            return Counter()
        events_from = self.events_expected.setdefault(topic, {})
        events, counts = tracker.observe(
            batch.table,
            batch.partitions,
            batch.offsets,
            topic=topic,
            landed=self.expected[topic],
            events_from=events_from,
        )
        if events:
            behind = {p: o for p, o in pending.next_offsets.items() if (events_from.get(p) or 0) < o}
            rows = pa.Table.from_pylist(events, schema=self.sequence_events.schema().as_arrow())
            self._append(
                self.sequence_events,
                rows,
                {topic: {p: events_from.get(p) for p in behind}},
                {topic: behind},
            )
            events_from.update(behind)
        return counts

    def _uncount(self, pending: _Pending) -> None:
        """A dropped batch is read again (by this consumer or another): its messages are not counted twice."""
        self.counts.consumed -= pending.consumed
        self.counts.rejected -= pending.rejected

    def _append(self, table: Table, data: pa.Table, expected: Any, next_offsets: dict[str, dict[int, int]]) -> None:
        """Append, retrying an unreachable catalog or storage forever (unhealthy meanwhile); not a fenced batch."""

        def failed(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            self.health.problem = f"cannot append to {table.name()[-1]}: {type(error).__name__}: {error}"
            STREAM_COMMIT_FAILURES.labels(table.name()[-1]).inc()
            log.warning("%s; retrying", self.health.problem)

        try:
            for attempt in Retrying(
                retry=retry_if_not_exception_type(Fenced),
                wait=wait_random_exponential(multiplier=0.5, max=30),
                stop=lambda _: self._stopping,  # a stop request ends the retries: the batch is read again later
                before_sleep=failed,
                reraise=True,
            ):
                with attempt:
                    append_with_offsets(table, data, self.group, expected, next_offsets)
        except (Fenced, K2Error):
            raise
        except Exception as exc:  # stopped while the catalog or storage was still failing
            raise UnavailableError(
                f"stopped without landing the batch in hand ({type(exc).__name__}: {exc}); it is read again on restart"
            ) from None
        self.health.problem = None

    def _resume_from_table(self, consumer: Consumer, topic: str, partitions: list[int]) -> None:
        self.sequence_events.refresh()
        for partition, offset in self._read_positions(topic, partitions).items():
            consumer.seek(TopicPartition(topic, partition, OFFSET_BEGINNING if offset is None else offset))
