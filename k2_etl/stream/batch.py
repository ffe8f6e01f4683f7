"""The batch in hand: messages taken per topic, then decoded into their table's rows.

Taking a message touches no dependency and costs as little as it can (a backlog is taken at
hundreds of thousands a second): its writer schema id is read from the framing, usually by
comparing the prefix with the message before, and the message is kept as bytes. Bodies are
decoded when the batch lands, all of one writer schema at once, by DuckDB's Avro reader
(:mod:`k2_etl.wire.avro_decode`); a group with a malformed body is decoded again message by
message so that only the bad ones are rejected.

A writer schema seen for the first time may add columns: the table gains them first (schema
evolution, decided once per schema id). Records of a writer schema the table cannot read,
bodies that cannot be decoded and records that break :func:`k2_etl.records.problems` become
reject records: for the dead-letter topic, or (poison on the dead-letter topic itself) rows of
the ``rejects`` table directly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from confluent_kafka import KafkaError, Message
from pyiceberg.schema import Schema as IcebergSchema
from pyiceberg.table import Table

from k2_etl.config import Settings
from k2_etl.errors import UnavailableError
from k2_etl.lake.tables import evolve_to_read, iceberg_schema_of
from k2_etl.records import PRODUCED_AT_HEADER, Problem, consume_reject, problems
from k2_etl.schemas import REJECT
from k2_etl.wire.avro_decode import BatchDecoder, Decoder, Undecodable, frame
from k2_etl.wire.registry import registry_client
from k2_etl.wire.retry import retry_lost_commits

log = logging.getLogger(__name__)

Taken = tuple[int, int, int, bytes, Message]  # writer schema id, partition, offset, value, message
Position = tuple[int, int]  # partition, offset


@dataclass
class Decoded:
    """A batch's rows and each row's Kafka partition and offset."""

    table: pa.Table
    partitions: np.ndarray
    offsets: np.ndarray

    def filter(self, mask: np.ndarray) -> Decoded:
        return Decoded(self.table.filter(pa.array(mask)), self.partitions[mask], self.offsets[mask])


@dataclass
class Pending:
    """Records of one topic waiting for their table's next append, and the offsets they take it to.

    A commit that fails keeps it whole and is tried again: what it already decided (the decoded
    batch, the messages it rejected) is kept, so a retry counts nothing twice. Its dead letters are
    produced again by every try (the rejects table drops the copies by ``reject_id``): a try only
    knows they reached Kafka when its own flush says so.
    """

    messages: list[Taken] = field(default_factory=list)  # decoded at commit
    schema_ids: set[int] = field(default_factory=set)  # writer schema ids among them
    known: tuple[bytes, int] | None = None  # the framing prefix last seen and its (known) schema id
    dead: dict[Position, dict[str, Any]] = field(default_factory=dict)  # rejects for the dead-letter topic
    rows: dict[Position, dict[str, Any]] = field(default_factory=dict)  # rejects of undecodable dead letters
    decoded: Decoded | None = None  # the valid records, once decoded
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read
    since: float | None = None  # when the oldest record arrived
    oldest_timestamp_ms: int | None = None  # when the oldest record was produced (for freshness): see produced_ms
    stamp_search: int = 0  # messages left to look at for a produced-at header
    consumed: int = 0  # messages taken (metrics are counted per batch: per message they cost more than decoding)

    @property
    def rejected(self) -> int:
        return len(self.dead) + len(self.rows)


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


class Batch:
    """The records taken since the last commit, per topic (:attr:`pending`)."""

    def __init__(
        self,
        settings: Settings,
        record_types: dict[str, str],
        placed: Mapping[str, Mapping[int, int | None]],
        counts: Counts,
    ) -> None:
        """``placed``: the partitions placed, by topic (messages of others are not taken); read,
        never changed. ``counts``: counted in as messages are taken and rejected."""
        self.settings = settings
        self.record_types = record_types
        self.placed = placed
        self.counts = counts
        self.dead_letters = REJECT.topic_name(settings)
        self.pending: dict[str, Pending] = {}
        self.decoder = Decoder(registry_client(settings))
        self.batch_decoder = BatchDecoder(settings.home / "tmp" / "stream")
        self._verdicts: dict[tuple[str, int], str | None] = {}  # (topic, writer schema id) -> why unreadable

    def close(self) -> None:
        self.decoder.close()

    # --- taking ----------------------------------------------------------------------------------
    def take(self, message: Message) -> None:
        """Note a message for the batch (no dependency is touched: schemas are looked up at commit)."""
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error.str())
            return
        topic, partition, offset = message.topic() or "", message.partition() or 0, message.offset() or 0
        if partition not in self.placed.get(topic, {}):
            return  # a partition given up in a rebalance (its new owner reads it), or not placed yet
        self.counts.consumed += 1
        pending = self.pending.get(topic)
        if pending is None:
            pending = self.pending[topic] = Pending()
        pending.consumed += 1
        if pending.since is None:
            pending.since = time.monotonic()
            pending.oldest_timestamp_ms = message.timestamp()[1]  # until a produced-at header says
            pending.stamp_search = STAMP_SEARCH
        if pending.stamp_search:  # the batch's first produced-at header (a load stamps one record in 64)
            pending.stamp_search -= 1
            stamp = produced_ms(message)
            if stamp is not None:
                pending.oldest_timestamp_ms, pending.stamp_search = stamp, 0
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

    def held(self) -> int:
        return sum(len(p.messages) + len(p.rows) for p in self.pending.values())

    def due(self) -> bool:
        """Full (``K2_STREAM_BATCH_ROWS``), or its oldest record has waited ``K2_STREAM_BATCH_SECONDS``."""
        held = self.held()
        oldest = min((p.since for p in self.pending.values() if p.since is not None), default=None)
        return held >= self.settings.stream_batch_rows or (
            oldest is not None and time.monotonic() - oldest >= self.settings.stream_batch_seconds
        )

    def drop(self, topic: str) -> None:
        """Drop the topic's records in hand, uncounted: they are read again (by this consumer or another)."""
        pending = self.pending.pop(topic, None)
        if pending is not None:
            self.counts.consumed -= pending.consumed
            self.counts.rejected -= pending.rejected

    # --- decoding --------------------------------------------------------------------------------
    def decode(self, topic: str, pending: Pending, table: Table) -> Decoded:
        """The valid records of the topic's batch as rows of ``table`` (refreshed by the caller),
        which first gains the columns its writer schemas add."""
        for schema_id in pending.schema_ids:
            self._unreadable(topic, table, schema_id)  # evolves the table first when the writer added columns
        return self._decode(topic, pending, table)

    def _poison(self, topic: str, pending: Pending, message: Message, reason: str | Problem) -> None:
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

    def _decode(self, topic: str, pending: Pending, table: Table) -> Decoded:
        """The batch's valid records as the table's Arrow schema: per writer schema, all at once with DuckDB.

        A group with a malformed body fails as a whole; it is then decoded message by message
        (fastavro) so that only the bad ones go to the dead letters. So do records of a writer
        schema the table cannot read, and records failing :func:`~k2_etl.records.problems`.
        """
        target = table.schema().as_arrow()
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
            why = self._unreadable(topic, table, schema_id)
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
        decoded = Decoded(
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

    def _unreadable(self, topic: str, table: Table, schema_id: int) -> str | None:
        """Why ``table`` (the topic's) cannot hold records of writer schema ``schema_id`` (None: it can).

        A writer schema seen for the first time may add columns: the table gains them (union by
        name) before the batch is decoded, so a compatible new version just flows on. One the
        table cannot read sends its records to the dead letters with the reason. Decided once per
        schema id (the table's schema only ever grows); an id the registry does not know is asked
        again next time (it may be registered meanwhile).
        """
        key = (topic, schema_id)
        if key not in self._verdicts:
            try:
                text = self._schema_text(schema_id)
            except Undecodable as exc:
                return str(exc)
            try:
                why = _evolve(table, iceberg_schema_of(json.loads(text)))
            except (ValueError, TypeError, KeyError, NotImplementedError) as exc:  # not convertible to Iceberg
                why = f"{type(exc).__name__}: {exc}"
            if why is not None:
                why = f"writer schema id {schema_id} cannot be read into table {table.name()[-1]}: {why}"
                log.warning("%s; its records go to the dead letters", why)
            else:
                table.refresh()
            self._verdicts[key] = why
        return self._verdicts[key]

    def _reject(self, message: Message, reason: str | Problem) -> dict[str, Any]:
        topic = message.topic() or ""
        headers = [
            (str(h[0]), h[1] if isinstance(h[1], bytes) else str(h[1] or "").encode()) for h in message.headers() or []
        ]
        record_type = self.record_types.get(topic) if topic != self.dead_letters else None
        return consume_reject(
            topic, message.partition() or 0, message.offset() or 0, message.value(), headers, reason, record_type
        )


@retry_lost_commits()
def _evolve(table: Table, writer: IcebergSchema) -> str | None:
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


#: How many of a batch's first messages are looked at for a produced-at header: a load stamps one
#: in 64 per block (k2_etl.ingest.producer.STAMP_EVERY); a batch with none (a live feed, another
#: producer) keeps its oldest message's Kafka timestamp, which such producers set as they produce.
STAMP_SEARCH = 256


def produced_ms(message: Message) -> int | None:
    """When a K2 load produced the message (its produced-at header), else None."""
    headers = message.headers() or []  # a consumed message's headers are a list of (key, bytes)
    for key, value in headers if isinstance(headers, list) else ():
        if key == PRODUCED_AT_HEADER and value:
            try:
                return int(value)
            except ValueError:
                return None  # not K2's
    return None
