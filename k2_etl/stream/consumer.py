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

Bodies are decoded at commit time, all of a writer schema at once
(:mod:`~k2_etl.stream.batch`); records whose id the table already holds are
dropped at the append (:mod:`~k2_etl.stream.dedup`): re-sent loads never
show twice. A message that cannot be decoded or breaks a record rule goes to
the dead-letter topic (:mod:`~k2_etl.stream.dead_letters`), durable before
the append that moves past it (:mod:`~k2_etl.stream.checkpoint` owns that
order), and lands in the ``rejects`` table from there. SIGTERM or SIGINT: the
batch in hand is committed, then exit 0.

Never crash on a dependency: the poll loop itself touches nothing but
Kafka's client. Everything that needs the catalog, its storage, the
registry or the broker's admin API (placing assigned partitions, commits
with their dedup and sequence-state loads and schema evolution, the
progress check) runs as a step that, when it fails, keeps what it had,
pauses the partitions, and is tried again with backoff while `/healthz`
answers 503 naming the dependency. Rebalance callbacks record what changed;
the only dependency one touches is a single try to land the batch in hand
before its partitions are revoked, skipped while landing is failing.

This module is the poll loop, the rebalance callbacks, and the health, lag
and progress checks; partitions are placed by :mod:`~k2_etl.stream.placement`,
and steps back off as :mod:`~k2_etl.stream.steps` says.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from k2_etl.config import Settings
from k2_etl.errors import K2Error, UnavailableError
from k2_etl.lake.progress import Unlanded, unlanded
from k2_etl.lake.tables import TABLES_BY_RECORD
from k2_etl.observability import (
    STREAM_COMMIT_FAILURES,
    STREAM_LAG,
    STREAM_UNLANDED_MESSAGES,
    STREAM_UNLANDED_SECONDS,
    zero_stream_series,
)
from k2_etl.schemas import SEQUENCE_EVENT, TOPIC_RECORD_TYPES
from k2_etl.stream.batch import Batch, Counts
from k2_etl.stream.checkpoint import Checkpoint
from k2_etl.stream.dead_letters import DeadLetterSink
from k2_etl.stream.health import Health, serve
from k2_etl.stream.placement import Placement
from k2_etl.stream.steps import Step, failure
from k2_etl.stream.tables import ConsumerTables
from k2_etl.wire.kafka import make_consumer, topic_ids

__all__ = ["Counts", "StreamConsumer"]

log = logging.getLogger(__name__)

POLL_MESSAGES = 5_000
POLL_SECONDS = 0.2
LAG_SECONDS = 5.0  # how often the lag gauge is updated
PROGRESS_SECONDS = 15.0  # how often topic ids and landed-vs-produced are checked (a manifest scan)
STALLED = "land what loads produced"  # the health problem's key while records wait unlanded


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
        record_types = {t: by_topic[t].name for t in self.topics}
        self.counts = Counts()
        self._stopping = False
        self._paused = False  # every assigned partition paused while the batch in hand cannot land
        self.health = Health(stale_after_seconds=max(10.0, 3 * settings.stream_batch_seconds))
        self._land = Step("land the batch in hand", self.health, settings)
        self._progress = Step("compare what loads produced with what landed", self.health, settings)
        self.tables = ConsumerTables(settings, record_types)  # loaded by the first step that needs them
        landed_in = {TABLES_BY_RECORD[r].name for r in [*record_types.values(), SEQUENCE_EVENT.name]}
        zero_stream_series(sorted(landed_in), self.topics)
        self.dead_letters = DeadLetterSink(settings)
        self.placement = Placement(
            settings, self.group, self.tables, Step("read where the tables stand", self.health, settings)
        )
        self.batch = Batch(settings, record_types, self.placement.expected, self.counts)
        self.checkpoint = Checkpoint(
            self.group, self.tables, self.placement, self.batch, self.dead_letters, self.counts
        )
        self.health.details = lambda: {
            "group": self.group,
            "partitions": self.placement.owned(),
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
        place = self.placement.step
        take = self.batch.take
        check = functools.partial(self._check_progress, consumer)
        try:
            while not self._stopping:
                self.health.beat()
                if self.placement.unplaced and place.due():
                    self._attempt(place, consumer, lambda: self.placement.place(consumer, self._paused))
                for message in consumer.consume(self._room(), POLL_SECONDS):
                    take(message)
                if not self.batch.pending and (self._land.failures or self._paused):  # the batch was dropped meanwhile
                    self._land.settle()
                    self._resume(consumer)
                if not self.placement.unplaced and place.failures:  # the partitions went meanwhile
                    place.settle()
                if not self.placement.expected and (self._progress.failures or STALLED in self.health.problems):
                    self._progress.settle()  # nothing owned: nothing to check
                    self.health.clear(STALLED)
                if self.batch.due() and self._land.due():
                    landed = self._attempt(self._land, consumer, lambda: self.checkpoint.land(consumer))
                    if landed and on_commit is not None:
                        on_commit(self.counts)
                if time.monotonic() >= lag_due:
                    self._observe_lag(consumer)
                    lag_due = time.monotonic() + LAG_SECONDS
                if self.placement.expected and self._progress.due() and self._attempt(self._progress, consumer, check):
                    self._progress.retry_at = time.monotonic() + PROGRESS_SECONDS
            self._final_commit(consumer)
        finally:
            consumer.close()
            self.dead_letters.close()
            self.batch.close()
        log.info("stopped: %s", json.dumps(self.counts.to_dict()))
        return self.counts

    def _room(self) -> int:
        """How many records one poll may take: a batch never grows past ``stream_batch_rows`` (its
        memory and its commit's size are bounded by the setting, also when a backlog is waiting)."""
        return max(1, min(POLL_MESSAGES, self.settings.stream_batch_rows - self.batch.held()))

    def _final_commit(self, consumer: Consumer) -> None:
        """On a stop: one more try to land the batch in hand; what cannot land is read again on restart."""
        if not self.batch.pending:
            return
        try:
            self.checkpoint.land(consumer)
        except Exception as exc:
            why = failure(exc, self.settings)[1]
            raise UnavailableError(
                f"stopped without landing the batch in hand: {why}; it is read again on restart"
            ) from None

    # --- steps that need a dependency ---------------------------------------------------------------
    def _attempt(self, step: Step, consumer: Consumer, action: Callable[[], None]) -> bool:
        """Run ``action`` as ``step``. A batch that cannot land is kept and its partitions paused
        (back-pressure: no more is read meanwhile) until it lands. True: it succeeded."""
        if step.attempt(action):
            if step is self._land:
                self._resume(consumer)
            return True
        if step is self._land:
            for topic in self.batch.pending:
                STREAM_COMMIT_FAILURES.labels(self.tables.name(topic)).inc()
            self.tables.clear()  # sequence state may hold the failed batch: rebuilt from the tables
            self._pause(consumer)
        return False

    def _pause(self, consumer: Consumer) -> None:
        if not self._paused:
            with contextlib.suppress(KafkaException):
                consumer.pause(consumer.assignment())
            self._paused = True

    def _resume(self, consumer: Consumer) -> None:
        if self._paused:
            placed = [TopicPartition(t, p) for t, partitions in self.placement.expected.items() for p in partitions]
            with contextlib.suppress(KafkaException):
                consumer.resume(placed)
            self._paused = False

    # --- rebalances ------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Take the partitions paused; the loop places them (reads where the tables stand) and resumes
        them. No dependency is touched here: an error in a callback would end the consumer."""
        self.tables.clear()
        for tp in partitions:
            tp.offset = OFFSET_BEGINNING  # a placeholder: nothing is fetched before the seek to the real place
        consumer.assign(partitions)
        with contextlib.suppress(KafkaException):  # unpaused, it fetches from the placeholder: ignored, then sought
            consumer.pause(partitions)
        self.placement.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """What is in hand is still ours: one try to land it before the partitions move (not while
        landing is failing: then the batch is dropped, and the partitions' owner reads it again)."""
        if self.batch.pending and not self._land.failures:
            self._attempt(self._land, consumer, lambda: self.checkpoint.land(consumer))
        self._forget(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(consumer, partitions)  # no longer ours: a commit would be fenced anyway

    def _forget(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.tables.clear()  # includes the previous owner's rows, when they come back
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.placement.forget(partitions)
        for tp in partitions:
            for gauge in (STREAM_LAG, STREAM_UNLANDED_SECONDS, STREAM_UNLANDED_MESSAGES):
                with contextlib.suppress(KeyError):  # another consumer reports it now
                    gauge.remove(tp.topic, str(tp.partition))
        for topic in {tp.topic for tp in partitions}:
            pending = self.batch.pending.get(topic)
            if pending is None or not gone & {(topic, p) for p in pending.next_offsets}:
                continue
            # A batch spans the topic's partitions: drop it whole. The lost partitions' new owner reads
            # their part; the part of partitions still ours is read again from where the table stands.
            self._drop(consumer, topic, [p for p in pending.next_offsets if (topic, p) not in gone])

    def _drop(self, consumer: Consumer, topic: str, replace: list[int]) -> None:
        """Drop the topic's batch in hand (uncounted: it is read again) and place ``replace`` anew."""
        self.batch.drop(topic)
        self.placement.unplace(consumer, topic, replace)

    # --- progress: topic lives, and what loads produced against what landed --------------------
    def _check_progress(self, consumer: Consumer) -> None:
        """Every :data:`PROGRESS_SECONDS`: a topic created again while we read it is read again from
        the beginning; records loads produced to our partitions that wait unlanded are measured,
        and /healthz is unhealthy while any has waited ``K2_STREAM_STALL_SECONDS`` with no progress.
        It needs the broker and the catalog: an idle consumer tells the truth about them too."""
        expected = self.placement.expected
        owned = {t: set(p) for t, p in expected.items() if p}
        ids = topic_ids(self.settings, owned, self.placement.admin)
        for topic in sorted(owned):
            known = self.placement.topic_ids
            if ids.get(topic) is not None and topic in known and known[topic] != ids[topic]:
                log.warning("%s was created again (topic id %s, now %s)", topic, known[topic], ids[topic])
                self._drop(consumer, topic, sorted(owned[topic]))
        found = unlanded(self.settings, ids, group=self.group, catalog=self.tables.catalog)
        waiting: dict[tuple[str, int], Unlanded] = {(u.topic, u.partition): u for u in found}
        for topic, partitions in expected.items():
            for partition in partitions:
                u = waiting.get((topic, partition))
                STREAM_UNLANDED_SECONDS.labels(topic, str(partition)).set(u.waiting_seconds if u else 0)
                STREAM_UNLANDED_MESSAGES.labels(topic, str(partition)).set(u.records if u else 0)
        stalled = [
            str(u) for u in found
            if u.partition in expected.get(u.topic, {}) and u.stalled(self.settings.stall_after_seconds)
        ]  # fmt: skip
        if stalled:
            if STALLED not in self.health.problems:
                log.warning("not landing what loads produced: %s", "; ".join(stalled))
            self.health.fail(STALLED, "stalled", "; ".join(stalled))
        else:
            self.health.clear(STALLED)

    def _observe_lag(self, consumer: Consumer) -> None:
        """Lag per owned partition from the high watermarks the fetches brought (no extra request)."""
        for topic, partitions in self.placement.expected.items():
            for partition, landed in partitions.items():
                try:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                except KafkaException:
                    continue
                if high >= 0:  # -1: not known yet
                    STREAM_LAG.labels(topic, str(partition)).set(max(0, high - (landed if landed is not None else low)))
