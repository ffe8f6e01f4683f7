"""Replays (`k2 replay`, the ``k2_replay`` DAG).

A replay re-processes a time range of trades or quotes from a source, and replaces exactly
that range of the table with the result, in one snapshot
(:func:`~k2_etl.lake.replace.replace_range`). The records go through the same steps as on
their first way in:

* ``kafka``: the table's topic, read from the first offset at or after ``start`` (Kafka's
  time index: K2 stamps each record with its event time, so no record of the range comes
  before that offset) to the end of the log; decoded with their writer
  schemas from the registry, checked like the consumer checks them, first of each id kept.
* ``landing``: the vendor files in the landing folder for each day of the range and one
  either side (``<K2_LANDING>/<format>/<YYYY-MM-DD>/`` is a trading date, which can be a day
  off the UTC date), parsed and validated as the daily load does,
  encoded to Avro and decoded back like the consumer (nothing is produced to Kafka).

Records outside the range are read and left alone. A replay never removes an id the table
holds; records the source has and the table lacks are added, and changed values replaced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from pyiceberg.table import Table

from k2_etl.config import Settings
from k2_etl.errors import ConfigError, K2Error, UnavailableError
from k2_etl.formats import load_format
from k2_etl.ingest.public import (
    LoadIds,
    Preparer,
    Source,
    day_files,
    expand,
    file_checksum,
    prepared_blocks,
    registered_schema_ids,
)
from k2_etl.jobs import REPLAY_SOURCES, REPLAYABLE, ReplaySource
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import committed_offsets
from k2_etl.lake.maintenance import first_of_each_id
from k2_etl.lake.manifest import Manifest
from k2_etl.lake.replace import (
    ATTEMPTS,
    RangeChanged,
    RangeReport,
    ReplaceError,
    SourceBound,
    in_range,
    replace_range,
    while_range_changes,
)
from k2_etl.lake.tables import TABLES_BY_NAME, TableDef
from k2_etl.records import problems
from k2_etl.wire.avro_decode import BatchDecoder, Decoder, Undecodable
from k2_etl.wire.duckdb_conn import connect
from k2_etl.wire.kafka import make_consumer, topic_ids
from k2_etl.wire.registry import registry_client

CHUNK = 50_000  # messages decoded at once
READ_TIMEOUT_SECONDS = 300.0  # with no message at all for this long, the broker is taken to be gone


@dataclass
class ReplayReport:
    """A replay: what the source gave, and what replacing the range did."""

    table: str
    source: str
    records_read: int  # from the source, any time
    records_in_range: int
    rejected: int  # invalid or undecodable: not written (they were rejected the first time too)
    duplicates: int  # ids seen before in the range (the first is kept)
    rolled_back: int  # records of loads `k2 rollback` undid: left out
    files: list[str] = field(default_factory=list)  # landing files read
    replaced: RangeReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "replaced": self.replaced.to_dict() if self.replaced else None}


@dataclass
class _Sourced:
    rows: list[pa.Table] = field(default_factory=list)
    read: int = 0
    rejected: int = 0
    files: list[str] = field(default_factory=list)


def replayable(table_name: str) -> TableDef:
    if table_name not in REPLAYABLE:
        raise ConfigError(f"table {table_name!r} cannot be replayed; choose from {', '.join(REPLAYABLE)}")
    return TABLES_BY_NAME[table_name]


def replay(
    settings: Settings,
    table_name: str,
    start: datetime,
    end: datetime,
    *,
    source: ReplaySource = "kafka",
    dry_run: bool = False,
    on_records: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Re-process ``[start, end)`` of ``table_name`` from ``source`` and replace that range with it
    (``dry_run``: only report what would change). ``on_records`` is told of records read (progress).

    When the table changes under it (the consumer landed more, a file of the range's days was
    added), the source is read again: up to :data:`ATTEMPTS` times in all.
    """
    definition = replayable(table_name)
    if source not in REPLAY_SOURCES:
        raise ConfigError(f"source {source!r}: choose from {', '.join(REPLAY_SOURCES)}")
    if not start < end:
        raise ConfigError(f"start {start.isoformat()} must be before end {end.isoformat()}")
    catalog = open_catalog(settings)
    table = catalog.load_table((settings.namespace, definition.name))
    rolled_back = Manifest(catalog, settings.namespace).rolled_back()
    progress = on_records or (lambda _n: None)
    try:
        for attempt in while_range_changes():
            with attempt:
                return _replay_once(settings, table, definition, start, end, source, dry_run, rolled_back, progress)
    except RangeChanged as exc:
        raise ReplaceError(f"{exc}; the range kept changing in {ATTEMPTS} attempts (is the stream still "
                           "landing into it?); nothing changed. Try again later") from None  # fmt: skip
    raise AssertionError("unreachable")  # pragma: no cover


def _replay_once(
    settings: Settings,
    table: Table,
    definition: TableDef,
    start: datetime,
    end: datetime,
    source: ReplaySource,
    dry_run: bool,
    rolled_back: set[str],
    progress: Callable[[int], None],
) -> ReplayReport:
    table.refresh()
    target = table.schema().as_arrow()
    bound = None
    if source == "kafka":
        topic = definition.record.topic_name(settings)
        life = topic_ids(settings, [topic])  # offsets landed from an earlier life of the topic are not in it
        landed = committed_offsets(table, settings.stream_group, life).get(topic, {})
        bound = SourceBound(settings.stream_group, topic, landed, life.get(topic))
        sourced = _from_kafka(settings, definition, start, end, target, bound.offsets, progress)
    else:
        sourced = _from_landing(settings, definition, start, end, target, progress)
    rows = pa.concat_tables(sourced.rows) if sourced.rows else target.empty_table()
    undone = pc.fill_null(pc.is_in(rows.column("load_id"), value_set=pa.array(sorted(rolled_back), pa.string())),
                          False)  # fmt: skip
    excluded = pc.sum(pc.cast(undone, pa.int64())).as_py() or 0
    rows = rows.filter(pc.invert(undone))
    unique = first_of_each_id(rows, definition.id_column)
    report = ReplayReport(definition.name, source, sourced.read, rows.num_rows, sourced.rejected,
                          rows.num_rows - unique.num_rows, excluded, sourced.files)  # fmt: skip
    properties = {"k2.replay.source": source}
    report.replaced = replace_range(table, definition, start, end, unique, dry_run=dry_run, properties=properties,
                                    bound=bound)  # fmt: skip
    return report


def _checked(batch: pa.Table, definition: TableDef, start: datetime, end: datetime) -> tuple[pa.Table, int]:
    """The batch's valid records inside the range, and how many were invalid (the consumer's checks)."""
    invalid = problems(batch, definition.record.name)
    if invalid:
        keep = np.ones(batch.num_rows, dtype=bool)
        keep[list(invalid)] = False
        batch = batch.filter(pa.array(keep))
    return in_range(batch, "event_time", start, end, inside=True), len(invalid)


def _from_kafka(
    settings: Settings,
    definition: TableDef,
    start: datetime,
    end: datetime,
    target: pa.Schema,
    landed: dict[int, int],
    progress: Callable[[int], None],
) -> _Sourced:
    """Each partition read from its first record at or after ``start`` up to ``landed`` (the next
    offset the consumer had landed: records past it are the consumer's to land, not the replay's)."""
    topic = definition.record.topic_name(settings)
    consumer = make_consumer(settings, "k2-replay", **{"enable.partition.eof": True, "auto.offset.reset": "error"})
    decoder = Decoder(registry_client(settings))
    batch_decoder = BatchDecoder(settings.home / "tmp" / "replay")
    sourced = _Sourced()
    floor_ms = int(start.timestamp() * 1000)  # a record stamped before start has an earlier event time
    try:
        firsts = _first_offsets(consumer, topic, sorted(landed), start)
        remaining = {p: landed[p] for p, first in firsts.items() if first is not None and first < landed[p]}
        if not remaining:
            return sourced
        consumer.assign([TopicPartition(topic, p, firsts[p]) for p in sorted(remaining)])  # type: ignore[arg-type]
        pending: list[bytes] = []
        quiet_since = time.monotonic()
        while remaining:
            messages = consumer.consume(num_messages=10_000, timeout=0.5)
            if not messages and time.monotonic() - quiet_since > READ_TIMEOUT_SECONDS:
                raise UnavailableError(f"replay: nothing from {topic} for {READ_TIMEOUT_SECONDS:g} s; still to "
                                       f"read: {remaining}")  # fmt: skip
            if messages:
                quiet_since = time.monotonic()
            for message in messages:
                error, partition, offset = message.error(), message.partition() or 0, message.offset() or 0
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.pop(partition, None)  # (a broker whose log ends before the offsets landed)
                    elif error.code() == KafkaError._AUTO_OFFSET_RESET or error.fatal():
                        raise KafkaException(error)  # e.g. retention deleted the range's start meanwhile
                    continue
                if partition not in remaining or offset >= remaining[partition]:
                    continue
                sourced.read += 1
                stamp_type, stamp = message.timestamp()
                if stamp_type == TIMESTAMP_NOT_AVAILABLE or stamp >= floor_ms:
                    pending.append(message.value() or b"")
                if offset + 1 >= remaining[partition]:
                    del remaining[partition]
            if len(pending) >= CHUNK or (pending and not remaining):
                _decode_chunk(pending, decoder, batch_decoder, definition, start, end, target, sourced)
                progress(len(pending))
                pending = []
    except KafkaException as exc:
        raise UnavailableError(f"replay: cannot read {topic} from Kafka: {exc}") from None
    finally:
        consumer.close()
        decoder.close()
    return sourced


def _first_offsets(consumer: Consumer, topic: str, partitions: list[int], start: datetime) -> dict[int, int | None]:
    """Per partition, the first offset whose timestamp is at or after ``start`` (Kafka's time
    index; the log's start when the broker cannot say), None when no record is that new."""
    stamp = int(start.timestamp() * 1000)
    try:
        found = consumer.offsets_for_times([TopicPartition(topic, p, stamp) for p in partitions], timeout=10)
    except KafkaException:
        return dict.fromkeys(partitions, OFFSET_BEGINNING)
    return {tp.partition: OFFSET_BEGINNING if tp.error is not None else None if tp.offset < 0 else tp.offset
            for tp in found}  # fmt: skip


def _decode_chunk(
    pending: list[bytes],
    decoder: Decoder,
    batch_decoder: BatchDecoder,
    definition: TableDef,
    start: datetime,
    end: datetime,
    target: pa.Schema,
    sourced: _Sourced,
) -> None:
    """Decode messages (grouped by writer schema, in order within each partition) into the range's rows."""
    groups: dict[int, list[bytes]] = {}
    for value in pending:
        try:
            schema_id = int.from_bytes(value[1:5], "big") if len(value) > 5 and value[0] == 0 else -1
        except (TypeError, ValueError):
            schema_id = -1
        groups.setdefault(schema_id, []).append(value)
    for schema_id, values in groups.items():
        if schema_id < 0:
            sourced.rejected += len(values)  # not framed Avro: the consumer sent it to the dead letters
            continue
        try:
            batch = batch_decoder.decode(decoder.schema_text(schema_id), pa.array(values, pa.binary()), target)
        except (duckdb.Error, Undecodable, pa.ArrowException):
            rows = []
            for value in values:
                try:
                    rows.append(pa.Table.from_pylist([decoder.decode(value)[1]], schema=target))
                except (Undecodable, pa.ArrowException, TypeError, ValueError):
                    sourced.rejected += 1
            batch = pa.concat_tables(rows) if rows else target.empty_table()
        kept, invalid = _checked(batch, definition, start, end)
        sourced.rejected += invalid
        sourced.rows.append(kept)


def _from_landing(
    settings: Settings,
    definition: TableDef,
    start: datetime,
    end: datetime,
    target: pa.Schema,
    progress: Callable[[int], None],
) -> _Sourced:
    record = definition.record
    schema_ids = registered_schema_ids(settings)
    batch_decoder = BatchDecoder(settings.home / "tmp" / "replay")
    sourced = _Sourced()
    con = connect()
    ingest_time = datetime.now(UTC)
    try:
        for day in _days(start, end):
            for name, paths in sorted(day_files(settings, day).items()):
                fmt = load_format(name, settings.formats_dir)
                planned, failed = expand(paths, fmt)
                if failed:
                    raise K2Error(f"replay from the landing folder: {failed[0].message}")
                preparer, load_ids = Preparer(fmt, schema_ids, day), LoadIds(fmt, day)
                for path, spec in planned:
                    if spec.type != record.name:
                        continue
                    sourced.files.append(str(path))
                    source = Source(path, load_ids.of(path, spec, file_checksum(path)), ingest_time)
                    for prepared in prepared_blocks(preparer, con, path, spec, source):
                        sourced.read += prepared.rows_read
                        sourced.rejected += len(prepared.rejects)
                        if prepared.values:
                            values = pa.array(prepared.values, pa.binary())
                            batch = batch_decoder.decode(record.schema_str, values, target)
                            kept, invalid = _checked(batch, definition, start, end)
                            sourced.rejected += invalid
                            sourced.rows.append(kept)
                        progress(prepared.rows_read)
    finally:
        con.close()
    return sourced


def _days(start: datetime, end: datetime) -> list[date]:
    """The landing folders (trading dates) that may hold records of ``[start, end)``: the range's
    UTC days and one either side, as an exchange's trading date can be a day off the UTC date."""
    first, last = start.date() - timedelta(days=1), (end - timedelta(microseconds=1)).date() + timedelta(days=1)
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]
