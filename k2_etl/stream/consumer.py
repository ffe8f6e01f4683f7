"""`k2 consume`: Kafka topics → Iceberg tables, exactly once, about a second after production.

One consumer-group member. Each message is decoded with its registered
schema and buffered for its table; when the buffer holds
``K2_STREAM_BATCH_ROWS`` records or its oldest has waited
``K2_STREAM_BATCH_SECONDS``, every table with records gets one append
carrying the offsets it covers (:mod:`k2_etl.lake.commits`). Partitions
resume from the offsets the tables record, never from Kafka's committed
offsets (those are committed too, after each append, so lag shows in the
usual tools), and only in the life of the topic they were recorded for: a
topic created again (new topic id) is read from the beginning.

Bodies are decoded at commit time, all of a writer schema at once, by
DuckDB's Avro reader (:mod:`k2_etl.wire.avro_decode`). Records whose id the
table already holds are dropped at the append
(:mod:`k2_etl.stream.dedup`): re-sent loads never show twice.

A message that cannot be decoded goes to the dead-letter topic with its
bytes, headers, position and the reason (flushed before the append that
moves past it) and lands in the ``rejects`` table from there; an
undecodable message on the dead-letter topic itself becomes a reject row
directly. SIGTERM or SIGINT: the batch in hand is committed, then exit 0.

Never crash on a dependency: the poll loop itself touches nothing but
Kafka's client. Everything that needs the catalog, its storage, the
registry or the broker's admin API (placing assigned partitions, commits
with their dedup and sequence-state loads and schema evolution, the
progress check) runs as a step that, when it fails, keeps what it had,
pauses the partitions, and is tried again with backoff while `/healthz`
answers 503 naming the dependency. Rebalance callbacks record what changed;
the only dependency one touches is a single try to land the batch in hand
before its partitions are revoked, skipped while landing is failing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.schema import Schema as IcebergSchema
from pyiceberg.table import Table
from sqlalchemy.exc import SQLAlchemyError

from k2_etl.config import Settings, redact_url
from k2_etl.errors import K2Error, SchemaError, UnavailableError
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import Fenced, append_with_offsets, committed_offsets, recorded_topic_ids
from k2_etl.lake.progress import Unlanded, unlanded
from k2_etl.lake.tables import TABLES_BY_RECORD, evolve_to_read, iceberg_schema_of, tables_by_topic
from k2_etl.observability import (
    STREAM_BATCH_ROWS,
    STREAM_COMMIT_FAILURES,
    STREAM_COMMIT_SECONDS,
    STREAM_CONSUMED,
    STREAM_DEDUPLICATED,
    STREAM_DEPENDENCY_UP,
    STREAM_FENCED,
    STREAM_FRESHNESS_SECONDS,
    STREAM_LAG,
    STREAM_LANDED,
    STREAM_REJECTED,
    STREAM_SEQUENCE_EVENTS,
    STREAM_SEQUENCE_MISSING,
    STREAM_TOPIC_RESETS,
    STREAM_UNLANDED_MESSAGES,
    STREAM_UNLANDED_SECONDS,
)
from k2_etl.records import Problem, consume_reject, encode_reject, problems
from k2_etl.schemas import REJECT, SEQUENCE_EVENT, TOPIC_RECORD_TYPES
from k2_etl.stream.dedup import IdIndex
from k2_etl.stream.health import Health, serve
from k2_etl.stream.sequences import SequenceTracker
from k2_etl.wire.avro_decode import BatchDecoder, Decoder, Undecodable, frame
from k2_etl.wire.avro_encode import confluent_prefix
from k2_etl.wire.kafka import admin_client, make_consumer, make_producer, topic_ids
from k2_etl.wire.registry import registry_client, schema_ids
from k2_etl.wire.retry import retry_lost_commits

log = logging.getLogger(__name__)

POLL_MESSAGES = 5_000
POLL_SECONDS = 0.2
LAG_SECONDS = 5.0  # how often the lag gauge is updated
PROGRESS_SECONDS = 15.0  # how often topic ids and landed-vs-produced are checked (a manifest scan)
LOG_EVERY_SECONDS = 30.0  # a failing dependency is logged when it starts failing, then at most this often
BACKOFF_MAX_SECONDS = 30.0
STALLED = "land what loads produced"  # the health problem's key while records wait unlanded


_Taken = tuple[int, int, int, bytes, Message]  # writer schema id, partition, offset, value, message
_Position = tuple[int, int]  # partition, offset


@dataclass
class _Pending:
    """Records of one topic waiting for their table's next append, and the offsets they take it to.

    A commit that fails keeps it whole and is tried again: what it already decided (the decoded
    batch, the messages it rejected) is kept, so a retry counts nothing twice. Its dead letters are
    produced again by every try (the rejects table drops the copies by ``reject_id``): a try only
    knows they reached Kafka when its own flush says so.
    """

    messages: list[_Taken] = field(default_factory=list)  # decoded at commit
    schema_ids: set[int] = field(default_factory=set)  # writer schema ids among them
    known: tuple[bytes, int] | None = None  # the framing prefix last seen and its (known) schema id
    dead: dict[_Position, dict[str, Any]] = field(default_factory=dict)  # rejects for the dead-letter topic
    rows: dict[_Position, dict[str, Any]] = field(default_factory=dict)  # rejects of undecodable dead letters
    decoded: _Decoded | None = None  # the valid records, once decoded
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read
    since: float | None = None  # when the oldest record arrived
    oldest_timestamp_ms: int | None = None  # Kafka timestamp of the oldest record (for freshness)
    consumed: int = 0  # messages taken (metrics are counted per batch: per message they cost more than decoding)

    @property
    def rejected(self) -> int:
        return len(self.dead) + len(self.rows)


@dataclass
class _Place:
    """Where a partition resumes, as the tables say."""

    read_from: int | None  # the offset to read from (None: the beginning)
    data: int | None  # what the data table records (the fence of its appends)
    events: int | None  # what the sequence-events table records (the fence of its appends)
    events_from: int | None  # events of records before this offset are in the events table already
    reset: str | None = None  # why the recorded offsets do not apply (the partition is read again)


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


@dataclass
class _Step:
    """A step that needs a dependency: whether it is failing, and when to try it again."""

    what: str  # e.g. "land the batch", for the health reason
    failures: int = 0
    dependency: str = "unexpected"  # the metric label of what it failed on last
    down: set[str] = field(default_factory=set)  # the labels it set to 0 (1 again once it succeeds)
    retry_at: float = 0.0
    logged_at: float = float("-inf")

    def due(self) -> bool:
        return time.monotonic() >= self.retry_at

    def failed(self) -> float:
        """Note a failure; the seconds until the next try (exponential, jittered, capped).

        Computed here, not by tenacity: a tenacity retry blocks its caller, and the poll loop must
        keep turning (group heartbeats, /healthz, SIGTERM) while a dependency is down."""
        self.failures += 1
        wait = random.uniform(0.5, 1.0) * min(BACKOFF_MAX_SECONDS, 0.5 * 2 ** min(self.failures, 10))
        self.retry_at = time.monotonic() + wait
        return wait


def _failure(exc: BaseException, settings: Settings) -> tuple[str, str]:
    """Which dependency an exception says is failing (the metric's label) and why, in one line for
    the health reason and the log: no SQL statements, parameters or tracebacks."""
    text = str(exc).strip().splitlines()[0].split(" [SQL: ")[0][:300] if str(exc).strip() else ""
    if isinstance(exc, K2Error):  # K2's own errors say what failed themselves
        return (exc.dependency or "other") if isinstance(exc, UnavailableError) else "other", text
    brief = f"{type(exc).__name__}: {text}"
    if isinstance(exc, SQLAlchemyError | NoSuchTableError) or type(exc).__module__.startswith("pyiceberg"):
        return "catalog", f"the catalog at K2_CATALOG_URI={redact_url(settings.catalog_uri)} failed ({brief})"
    if isinstance(exc, OSError):
        return "storage", f"the warehouse storage at K2_WAREHOUSE={settings.warehouse} failed ({brief})"
    if isinstance(exc, KafkaException | BufferError):
        return "broker", f"the Kafka broker at K2_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} failed ({brief})"
    return "unexpected", f"an unexpected error ({brief})"


class StreamConsumer:
    """Create once per process; :meth:`run` until :meth:`stop` (or a signal)."""

    def __init__(self, settings: Settings, *, topics: list[str] | None = None, group: str | None = None) -> None:
        """Nothing here touches a dependency: the catalog may be down when the process starts."""
        self.settings = settings
        self.group = group or settings.stream_group
        by_topic = {r.topic_name(settings): r for r in TOPIC_RECORD_TYPES}
        self.topics = topics or list(by_topic)
        unknown = [t for t in self.topics if t not in by_topic]
        if unknown:
            raise K2Error(f"not K2 topics: {', '.join(unknown)} (known: {', '.join(by_topic)})")
        self.record_types = {t: by_topic[t].name for t in self.topics}
        self.catalog: Catalog | None = None  # opened by the first step that needs it (_open), with the tables
        self.tables: dict[str, Table] = {}
        self.indexes: dict[str, IdIndex] = {}
        self.trackers: dict[str, SequenceTracker] = {}
        self.sequence_events: Table | None = None
        self.events_expected: dict[str, dict[int, int | None]] = {}  # partitions -> offset the events table records
        self.events_from: dict[str, dict[int, int | None]] = {}  # partitions -> events before it are written
        self._verdicts: dict[tuple[str, int], str | None] = {}  # (topic, writer schema id) -> why unreadable
        self.dead_letters = REJECT.topic_name(settings)
        self.decoder = Decoder(registry_client(settings))
        self.batch_decoder = BatchDecoder(settings.home / "tmp" / "stream")
        self.producer = make_producer(settings)
        self.admin = admin_client(settings)
        self._reject_prefix: bytes | None = None  # looked up at the first dead letter (schemas may come later)
        self.expected: dict[str, dict[int, int | None]] = {}  # placed partitions -> offset the table records
        self.unplaced: dict[str, set[int]] = {}  # assigned partitions whose place is still to be read
        self.topic_ids: dict[str, str | None] = {}  # the life of each topic the places were read for
        self.pending: dict[str, _Pending] = {}
        self.counts = Counts()
        self._stopping = False
        self._paused = False  # every assigned partition paused while the batch in hand cannot land
        self._place = _Step("read where the tables stand")
        self._land = _Step("land the batch in hand")
        self._progress = _Step("compare what loads produced with what landed")
        self.health = Health(stale_after_seconds=max(10.0, 3 * settings.stream_batch_seconds))
        self.health.details = lambda: {
            "group": self.group,
            "partitions": sum(len(owned) for owned in self.expected.values()),
            **self.counts.to_dict(),
        }

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
        consumer = make_consumer(
            self.settings,
            self.group,
            **{
                "auto.offset.reset": "earliest",
                "session.timeout.ms": int(self.settings.stream_session_timeout_seconds * 1000),
                "heartbeat.interval.ms": int(self.settings.stream_session_timeout_seconds * 200),
                "max.poll.interval.ms": int(self.settings.stream_max_poll_interval_seconds * 1000),
                "logger": log,
            },
        )
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("consuming %s as group %s", ", ".join(self.topics), self.group)
        lag_due = 0.0
        check = functools.partial(self._check_progress, consumer)
        try:
            while not self._stopping:
                self.health.beat()
                if self.unplaced and self._place.due():
                    self._attempt(self._place, consumer, lambda: self._place_partitions(consumer))
                for message in consumer.consume(self._room(), POLL_SECONDS):
                    self._take(message)
                if not self.pending and (self._land.failures or self._paused):  # the batch was dropped meanwhile
                    self._settle(self._land)
                    self._resume(consumer)
                if not self.unplaced and self._place.failures:  # the partitions went meanwhile
                    self._settle(self._place)
                if not self.expected and (self._progress.failures or STALLED in self.health.problems):
                    self._settle(self._progress)  # nothing owned: nothing to check
                    self.health.clear(STALLED)
                if self._due() and self._land.due():
                    landed = self._attempt(self._land, consumer, lambda: self._commit(consumer))
                    if landed and on_commit is not None:
                        on_commit(self.counts)
                if time.monotonic() >= lag_due:
                    self._observe_lag(consumer)
                    lag_due = time.monotonic() + LAG_SECONDS
                if self.expected and self._progress.due() and self._attempt(self._progress, consumer, check):
                    self._progress.retry_at = time.monotonic() + PROGRESS_SECONDS
            self._final_commit(consumer)
        finally:
            consumer.close()
            self.producer.flush(10)
            self.decoder.close()
        log.info("stopped: %s", json.dumps(self.counts.to_dict()))
        return self.counts

    def _final_commit(self, consumer: Consumer) -> None:
        """On a stop: one more try to land the batch in hand; what cannot land is read again on restart."""
        if not self.pending:
            return
        try:
            self._commit(consumer)
        except Exception as exc:
            why = _failure(exc, self.settings)[1]
            raise UnavailableError(
                f"stopped without landing the batch in hand: {why}; it is read again on restart"
            ) from None

    # --- steps that need a dependency ---------------------------------------------------------------
    def _attempt(self, step: _Step, consumer: Consumer, action: Callable[[], None]) -> bool:
        """Run ``action``; on failure keep the state, pause the partitions and say why. True: it succeeded."""
        try:
            action()
        except Exception as exc:  # whatever a dependency raises: never out of the poll loop
            step.dependency, why = _failure(exc, self.settings)
            wait = step.failed()
            self.health.fail(step.what, step.dependency, f"cannot {step.what}: {why}")
            STREAM_DEPENDENCY_UP.labels(step.dependency).set(0)
            step.down.add(step.dependency)
            if step is self._land:
                for topic in self.pending:
                    STREAM_COMMIT_FAILURES.labels(self._table_name(topic)).inc()
                self._clear_state()  # sequence state may hold the failed batch: rebuilt from the tables
                self._pause(consumer)  # back-pressure: the batch in hand waits, no more is read meanwhile
            if time.monotonic() - step.logged_at >= LOG_EVERY_SECONDS:
                step.logged_at = time.monotonic()
                log.warning(
                    "%s; trying again in %.1f s (failing %d time(s) in a row)",
                    self.health.problems[step.what], wait, step.failures,
                    exc_info=step.dependency == "unexpected",
                )  # fmt: skip
            return False
        if step.failures:
            log.info("%s again after %d failed attempt(s)", step.what, step.failures)
        self._settle(step)
        if step is self._land:
            self._resume(consumer)
        return True

    def _settle(self, step: _Step) -> None:
        """The step succeeded, or has nothing left to do (its batch dropped, its partitions gone):
        whatever it said was failing no longer holds."""
        step.failures, step.retry_at = 0, 0.0
        self.health.clear(step.what)
        for label in step.down:
            STREAM_DEPENDENCY_UP.labels(label).set(1)
        step.down.clear()

    def _table_name(self, topic: str) -> str:
        return self.tables[topic].name()[-1] if topic in self.tables else topic

    def _pause(self, consumer: Consumer) -> None:
        if not self._paused:
            with contextlib.suppress(KafkaException):
                consumer.pause(consumer.assignment())
            self._paused = True

    def _resume(self, consumer: Consumer) -> None:
        if self._paused:
            placed = [TopicPartition(t, p) for t, partitions in self.expected.items() for p in partitions]
            with contextlib.suppress(KafkaException):
                consumer.resume(placed)
            self._paused = False

    def _open(self) -> None:
        """Load the tables (once): the first step to reach the catalog does it."""
        if self.sequence_events is not None:
            return
        catalog = open_catalog(self.settings)
        table_of = tables_by_topic(self.settings)
        try:
            tables = {t: catalog.load_table((self.settings.namespace, table_of[t].name)) for t in self.topics}
            events_table = TABLES_BY_RECORD[SEQUENCE_EVENT.name].name
            events = catalog.load_table((self.settings.namespace, events_table))
        except NoSuchTableError as exc:
            raise K2Error(f"{exc}; run `k2 init`") from None
        for t in self.topics:
            definition = table_of[t]
            assert definition.id_column is not None, f"{definition.name} is not landed from a topic"
            self.indexes[t] = IdIndex(tables[t], definition.id_column, definition.day_column)
            if "sequence_number" in tables[t].schema().column_names:
                self.trackers[t] = SequenceTracker(tables[t], events, self.record_types[t])
        self.tables, self.sequence_events, self.catalog = tables, events, catalog

    # --- rebalances ------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Take the partitions paused; the loop places them (reads where the tables stand) and resumes
        them. No dependency is touched here: an error in a callback would end the consumer."""
        self._clear_state()
        for tp in partitions:
            tp.offset = OFFSET_BEGINNING  # a placeholder: nothing is fetched before the seek to the real place
        consumer.assign(partitions)
        with contextlib.suppress(KafkaException):  # unpaused, it fetches from the placeholder: ignored, then sought
            consumer.pause(partitions)
        for tp in partitions:
            self.unplaced.setdefault(tp.topic, set()).add(tp.partition)
        self._place.retry_at = 0.0

    def _place_partitions(self, consumer: Consumer) -> None:
        """Read where the tables stand for the unplaced partitions (in the topics' current lives),
        seek there and resume them. All or nothing: what is read is published (for fencing and
        for taking messages) only once every partition is sought and resumed, so a failure
        half-way leaves them all unplaced, paused, for the next try."""
        self._open()
        assert self.sequence_events is not None
        ids = topic_ids(self.settings, self.unplaced, self.admin)
        self.sequence_events.refresh()
        found = {topic: self._read_places(consumer, topic, sorted(partitions), ids.get(topic))
                 for topic, partitions in sorted(self.unplaced.items())}  # fmt: skip
        for topic, places in found.items():
            for partition, place in places.items():
                offset = OFFSET_BEGINNING if place.read_from is None else place.read_from
                consumer.seek(TopicPartition(topic, partition, offset))
        placed = [TopicPartition(t, p) for t, partitions in self.unplaced.items() for p in partitions]
        if not self._paused:
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

    def _read_places(
        self, consumer: Consumer, topic: str, partitions: list[int], topic_id: str | None
    ) -> dict[int, _Place]:
        """Where the tables stand for ``partitions``. Offsets recorded for another life of the topic
        are void (the partition is read from the beginning; deduplication keeps what landed before
        out), and so are offsets recorded without a topic id that lie beyond the partition's end.
        The caller refreshes the events table."""
        assert self.sequence_events is not None
        table = self.tables[topic]
        table.refresh()
        recorded = committed_offsets(table, self.group).get(topic, {})
        mine = committed_offsets(table, self.group, {topic: topic_id}).get(topic, {})
        recorded_id = recorded_topic_ids(table, self.group).get(topic)
        events = committed_offsets(self.sequence_events, self.group, {topic: topic_id}).get(topic, {})
        places: dict[int, _Place] = {}
        for partition in partitions:
            place = _Place(mine.get(partition), mine.get(partition), events.get(partition), events.get(partition))
            if recorded.get(partition) is not None and mine.get(partition) is None:
                place.reset = (f"the tables record offset {recorded[partition]} for another life of the topic "
                               f"(id {recorded_id}, now {topic_id})")  # fmt: skip
            elif mine.get(partition) is not None and recorded_id is None:
                high = self._end_of(consumer, topic, partition)
                if high is not None and mine[partition] > high:
                    # Still fenced against the offsets recorded (the first append replaces them); read from 0,
                    # and sequence events are written for every record again (none of this life was).
                    place.reset = (f"the tables record offset {mine[partition]}, recorded without a topic id, "
                                   f"beyond the partition's end at {high}")  # fmt: skip
                    place.read_from, place.events_from = None, None
            places[partition] = place
        return places

    def _end_of(self, consumer: Consumer, topic: str, partition: int) -> int | None:
        """The partition's end as the broker reports it (None: not known). Used only for offsets
        recorded without a topic id: some brokers report an end short of the truth (the local
        broker's is the start of its last batch), so a false reset would read the partition again."""
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5, cached=False)
        except KafkaException:
            return None
        return high if high >= 0 else None

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """What is in hand is still ours: one try to land it before the partitions move (not while
        landing is failing: then the batch is dropped, and the partitions' owner reads it again)."""
        if self.pending and not self._land.failures:
            self._attempt(self._land, consumer, lambda: self._commit(consumer))
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
            self.events_from.get(tp.topic, {}).pop(tp.partition, None)
            self.unplaced.get(tp.topic, set()).discard(tp.partition)
            for gauge in (STREAM_LAG, STREAM_UNLANDED_SECONDS, STREAM_UNLANDED_MESSAGES):
                with contextlib.suppress(KeyError):  # another consumer reports it now
                    gauge.remove(tp.topic, str(tp.partition))
        self.unplaced = {t: p for t, p in self.unplaced.items() if p}
        for topic in {tp.topic for tp in partitions}:
            pending = self.pending.get(topic)
            if pending is None or not gone & {(topic, p) for p in pending.next_offsets}:
                continue
            # A batch spans the topic's partitions: drop it whole. The lost partitions' new owner reads
            # their part; the part of partitions still ours is read again from where the table stands.
            self._drop(consumer, topic, [p for p in pending.next_offsets if (topic, p) not in gone])

    def _drop(self, consumer: Consumer, topic: str, replace: list[int]) -> None:
        """Drop the topic's batch in hand (uncounted: it is read again) and place ``replace`` anew."""
        pending = self.pending.pop(topic, None)
        if pending is not None:
            self._uncount(pending)
        self._unplace(consumer, topic, replace)

    def _unplace(self, consumer: Consumer, topic: str, partitions: list[int]) -> None:
        """Pause ``partitions``; the loop places them again from where the tables stand."""
        if not partitions:
            return
        with contextlib.suppress(KafkaException):
            consumer.pause([TopicPartition(topic, p) for p in partitions])
        for partition in partitions:
            self.expected.get(topic, {}).pop(partition, None)
            self.events_expected.get(topic, {}).pop(partition, None)
            self.events_from.get(topic, {}).pop(partition, None)
            self.unplaced.setdefault(topic, set()).add(partition)
        self._place.retry_at = 0.0

    # --- progress: topic lives, and what loads produced against what landed --------------------
    def _check_progress(self, consumer: Consumer) -> None:
        """Every :data:`PROGRESS_SECONDS`: a topic created again while we read it is read again from
        the beginning; records loads produced to our partitions that wait unlanded are measured,
        and /healthz is unhealthy while any has waited ``K2_STREAM_STALL_SECONDS`` with no progress.
        It needs the broker and the catalog: an idle consumer tells the truth about them too."""
        owned = {t: set(p) for t, p in self.expected.items() if p}
        ids = topic_ids(self.settings, owned, self.admin)
        for topic in sorted(owned):
            if ids.get(topic) is not None and topic in self.topic_ids and self.topic_ids[topic] != ids[topic]:
                log.warning("%s was created again (topic id %s, now %s)", topic, self.topic_ids[topic], ids[topic])
                self._drop(consumer, topic, sorted(owned[topic]))
        found = unlanded(self.settings, ids, group=self.group, catalog=self.catalog)
        waiting: dict[tuple[str, int], Unlanded] = {(u.topic, u.partition): u for u in found}
        for topic, partitions in self.expected.items():
            for partition in partitions:
                u = waiting.get((topic, partition))
                STREAM_UNLANDED_SECONDS.labels(topic, str(partition)).set(u.waiting_seconds if u else 0)
                STREAM_UNLANDED_MESSAGES.labels(topic, str(partition)).set(u.records if u else 0)
        stalled = [
            str(u) for u in found
            if u.partition in self.expected.get(u.topic, {}) and u.stalled(self.settings.stall_after_seconds)
        ]  # fmt: skip
        if stalled:
            if STALLED not in self.health.problems:
                log.warning("not landing what loads produced: %s", "; ".join(stalled))
            self.health.fail(STALLED, "stalled", "; ".join(stalled))
        else:
            self.health.clear(STALLED)

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

    # --- records ---------------------------------------------------------------------------------
    def _take(self, message: Message) -> None:
        """Note a message for the batch (no dependency is touched: schemas are looked up at commit)."""
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error.str())
            return
        topic, partition, offset = message.topic() or "", message.partition() or 0, message.offset() or 0
        if partition not in self.expected.get(topic, {}):
            return  # a partition given up in a rebalance (its new owner reads it), or not placed yet
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
            except Undecodable as exc:
                self._poison(topic, pending, message, str(exc))
                return
            pending.known = (bytes(value[:5]), schema_id) if value is not None else None
            pending.schema_ids.add(schema_id)
        pending.messages.append((schema_id, partition, offset, value or b"", message))

    def _poison(self, topic: str, pending: _Pending, message: Message, reason: str | Problem) -> None:
        """Reject a message (once per position, however often a failing commit is tried)."""
        position = (message.partition() or 0, message.offset() or 0)
        if position in pending.dead or position in pending.rows:
            return
        self.counts.rejected += 1
        reject = self._reject(message, reason)
        if topic == self.dead_letters:
            pending.rows[position] = reject  # never send the dead-letter topic's own poison back to it
        else:
            pending.dead[position] = reject

    def _schema_text(self, schema_id: int) -> str:
        """The writer schema (cached); :class:`Undecodable` for an id the registry does not know."""
        try:
            return self.decoder.schema_text(schema_id)
        except UnavailableError as exc:
            raise UnavailableError(
                f"the schema registry at K2_SCHEMA_REGISTRY_URL={self.settings.schema_registry_url} failed "
                f"({exc} while fetching schema id {schema_id})",
                "registry",
            ) from None

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
                batch = self.batch_decoder.decode(self._schema_text(schema_id), pa.array(values, pa.binary()), target)
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
            parts.append(pa.Table.from_pylist(list(pending.rows.values()), schema=target))
            partitions.append(np.array([p for p, _ in pending.rows], dtype=np.int64))
            offsets.append(np.array([o for _, o in pending.rows], dtype=np.int64))
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
        for row, problem in invalid.items():
            position = (int(decoded.partitions[row]), int(decoded.offsets[row]))
            self._poison(topic, pending, by_position[position], problem)
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
        schema id (the table's schema only ever grows); an id the registry does not know is asked
        again next time (it may be registered meanwhile).
        """
        key = (topic, schema_id)
        if key not in self._verdicts:
            table = self.tables[topic]
            try:
                text = self._schema_text(schema_id)
            except Undecodable as exc:
                return str(exc)
            try:
                why = self._evolve(table, iceberg_schema_of(json.loads(text)))
            except (ValueError, TypeError, KeyError, NotImplementedError) as exc:  # not convertible to Iceberg
                why = f"{type(exc).__name__}: {exc}"
            if why is not None:
                why = f"writer schema id {schema_id} cannot be read into table {table.name()[-1]}: {why}"
                log.warning("%s; its records go to the dead letters", why)
            else:
                table.refresh()
            self._verdicts[key] = why
        return self._verdicts[key]

    @retry_lost_commits()
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

    def _reject(self, message: Message, reason: str | Problem) -> dict[str, Any]:
        topic = message.topic() or ""
        headers = [
            (str(h[0]), h[1] if isinstance(h[1], bytes) else str(h[1] or "").encode()) for h in message.headers() or []
        ]
        record_type = self.record_types.get(topic) if topic != self.dead_letters else None
        return consume_reject(
            topic, message.partition() or 0, message.offset() or 0, message.value(), headers, reason, record_type
        )

    def _reject_schema_id(self) -> int:
        try:
            return schema_ids(self.settings, [REJECT])[REJECT.name]
        except SchemaError as exc:  # not registered: the registry is what this step waits for
            raise UnavailableError(str(exc), "registry") from None

    def _send_dead_letters(self) -> None:
        """Produce the batch's rejects to the dead-letter topic and wait until Kafka has them: they must
        be durable before the offsets move past their messages."""
        failed: list[str] = []  # delivery reports of this try (a message librdkafka gave up on is not in flush's count)
        for pending in self.pending.values():
            for reject in pending.dead.values():
                if self._reject_prefix is None:
                    self._reject_prefix = confluent_prefix(self._reject_schema_id())
                self.producer.produce(
                    self.dead_letters,
                    encode_reject(self._reject_prefix, reject),
                    (reject["kafka_topic"] or "").encode(),
                    on_delivery=lambda err, _msg: failed.append(err.str()) if err is not None else None,
                )
                self.producer.poll(0)
        if self.producer.flush(30) > 0 or failed:
            why = failed[0] if failed else "not delivered within 30 s"
            raise UnavailableError(
                f"the Kafka broker at K2_KAFKA_BOOTSTRAP={self.settings.kafka_bootstrap} did not take the dead "
                f"letters ({why})",
                "broker",
            )

    # --- commits ---------------------------------------------------------------------------------
    def _held(self) -> int:
        return sum(len(p.messages) + len(p.rows) for p in self.pending.values())

    def _room(self) -> int:
        """How many records one poll may take: a batch never grows past ``stream_batch_rows`` (its
        memory and its commit's size are bounded by the setting, also when a backlog is waiting)."""
        return max(1, min(POLL_MESSAGES, self.settings.stream_batch_rows - self._held()))

    def _due(self) -> bool:
        held = self._held()
        oldest = min((p.since for p in self.pending.values() if p.since is not None), default=None)
        return held >= self.settings.stream_batch_rows or (
            oldest is not None and time.monotonic() - oldest >= self.settings.stream_batch_seconds
        )

    def _commit(self, consumer: Consumer) -> None:
        """Land the batch in hand: one append per table, with the offsets it covers. Raises what a
        dependency raised; the batch then stays in hand (its decoding and rejects kept) for a retry."""
        if not self.pending:
            return
        self._open()
        for topic, pending in self.pending.items():
            table = self.tables[topic]
            table.refresh()
            self.indexes[topic].sync()  # ids removed by a rollback or replay must not count as landed
            if pending.decoded is None:
                for schema_id in pending.schema_ids:
                    self._unreadable(topic, schema_id)  # evolves the table first when the writer added columns
                pending.decoded = self._decode(topic, pending, table.schema().as_arrow())
        self._send_dead_letters()
        for topic, pending in list(self.pending.items()):
            table = self.tables[topic]
            decoded = pending.decoded
            assert decoded is not None
            batch = decoded.filter(self.indexes[topic].fresh(decoded.table))
            data = batch.table
            received = decoded.table.num_rows
            expected = {topic: {p: self.expected[topic].get(p) for p in pending.next_offsets}}
            ids = {topic: self.topic_ids.get(topic)}
            name = table.name()[-1]
            try:
                kinds = self._track_sequences(topic, pending, batch)
                with STREAM_COMMIT_SECONDS.labels(name).time():
                    append_with_offsets(table, data, self.group, expected, {topic: pending.next_offsets}, ids)
            except Fenced as exc:
                log.warning("%s", exc)
                STREAM_FENCED.labels(name).inc()
                self._clear_state()  # the dropped batch's ids and numbers were counted in
                self._drop(consumer, topic, list(pending.next_offsets))
                continue
            self.pending.pop(topic)
            STREAM_CONSUMED.labels(name).inc(pending.consumed)
            STREAM_REJECTED.labels(name).inc(pending.rejected)
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
            with contextlib.suppress(KafkaException):  # for lag tools only: the tables hold the offsets
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
        assert self.sequence_events is not None
        fence = self.events_expected.setdefault(topic, {})
        written = self.events_from.setdefault(topic, {})
        events, counts = tracker.observe(
            batch.table,
            batch.partitions,
            batch.offsets,
            topic=topic,
            landed=self.expected[topic],
            events_from=written,
        )
        behind = {p: o for p, o in pending.next_offsets.items() if (written.get(p) or 0) < o}
        if events and behind:
            rows = pa.Table.from_pylist(events, schema=self.sequence_events.schema().as_arrow())
            append_with_offsets(
                self.sequence_events,
                rows,
                self.group,
                {topic: {p: fence.get(p) for p in behind}},
                {topic: behind},
                {topic: self.topic_ids.get(topic)},
            )
            fence.update(behind)
            written.update(behind)
        return counts

    def _uncount(self, pending: _Pending) -> None:
        """A dropped batch is read again (by this consumer or another): its messages are not counted twice."""
        self.counts.consumed -= pending.consumed
        self.counts.rejected -= pending.rejected
