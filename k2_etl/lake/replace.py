"""Replacing part of a table in one snapshot: the lake side of replays and rollbacks.

Both work like compaction (:mod:`k2_etl.lake.maintenance`): the data files holding the rows
concerned are read whole, the rows they should hold are written as new files, and one snapshot
swaps exactly those files for the new ones (pyiceberg's file-level overwrite). Readers see the
old rows or the new ones, never a mix; rows the stream appends meanwhile are in other files and
stay. Neither moves the consumers' Kafka offsets, so nothing is landed again afterwards.

* :func:`replace_range`: the rows of a time range ``[start, end)`` become the rows a replay
  re-processed from the source. Rows of the same days outside the range are written back as
  they were. A replay never drops an id the table holds: if the source lacks one (Kafka
  retention, a landing file moved away), nothing changes and the error names it.
* :func:`remove_load`: the rollback of a batch load. The table becomes what it was at the
  snapshot before the load landed, plus everything landed since by anything else. Rolling
  the table's snapshot back instead would also roll back the offsets the consumer resumes
  from, and the consumer would land the load (and everything after it) again.

:func:`checksum` makes "the same rows" checkable: the count and an order-independent 64-bit
digest of every row's values (all columns but ``ingest_time``, which records when K2 read
the record: a replay from files reads it again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.table.update.validate import ValidationException
from pyiceberg.transforms import DayTransform
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from k2_etl.errors import K2Error
from k2_etl.lake.commits import OFFSETS_PROPERTY, committed_offsets, without_commit_retries
from k2_etl.lake.maintenance import (
    MAINTENANCE_PROPERTY,
    LiveFile,
    PartitionKey,
    first_of_each_id,
    has_deletes,
    live_files,
    read_in_landing_order,
    write_sorted,
)
from k2_etl.lake.tables import TableDef
from k2_etl.observability import MAINTENANCE_CONFLICTS, MAINTENANCE_SECONDS
from k2_etl.wire.duckdb_conn import connect

NOT_CHECKSUMMED = ("ingest_time",)  # when K2 read the record: a replay from the files reads it anew
REPLAY_RANGE_PROPERTY = "k2.replay.range"
ROLLBACK_LOAD_PROPERTY = "k2.rollback.load-id"
ATTEMPTS = 3  # a replace that meets a concurrent change starts over (re-reads the files) this often
EPOCH = date(1970, 1, 1)


class ReplaceError(K2Error):
    """A replay or rollback that would lose data, or cannot apply to this table; nothing changed."""


@dataclass(frozen=True)
class Checksum:
    rows: int
    digest: str  # 16 hex digits: the sum of the rows' 64-bit hashes, modulo 2**64

    def __str__(self) -> str:
        return f"{self.rows:,} rows, digest {self.digest}"


@dataclass
class RangeReport:
    """What replacing a range did (or, in a dry run, would do)."""

    table: str
    start: str
    end: str
    dry_run: bool
    before: Checksum
    after: Checksum  # of the committed range (dry run: of the rows that would be written)
    ids_added: int  # ids the table lacked in the range
    ids_changed: int  # ids whose values differ
    files_replaced: int = 0
    files_written: int = 0
    snapshot_before: int | None = None
    snapshot_after: int | None = None
    seconds: float = 0.0

    @property
    def identical(self) -> bool:
        return self.before == self.after

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "identical": self.identical}


@dataclass
class RollbackReport:
    table: str
    load_id: str
    dry_run: bool
    snapshot_before_load: int | None  # the snapshot the table returns to (plus what others landed since)
    rows_removed: int
    rows_restored: int = 0  # later loads' records the consumer had dropped as duplicates of the load's
    files_replaced: int = 0
    files_written: int = 0
    snapshot_after: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- checksums ----------------------------------------------------------------------------------
def _row_hashes(rows: pa.Table, id_column: str) -> pa.Table:
    """``(id, h)``: each row's id and a 64-bit hash of its checksummed values (DuckDB's ``hash``).

    Each column is hashed on its own and the hashes combined in column order: ``hash(a, b)``
    of two list columns hashes their concatenation (``[x], []`` would equal ``[], [x]``). Lists
    are hashed as text, as ``hash`` does not tell an empty list from a null one.
    """

    def quoted(column: str) -> str:
        return '"' + column.replace('"', '""') + '"'  # the table's own column names

    parts = [f"{quoted(f.name)}::VARCHAR" if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
             else quoted(f.name) for f in rows.schema if f.name not in NOT_CHECKSUMMED]  # fmt: skip
    combined = "hash([" + ", ".join(f"hash({p})" for p in parts) + "])"
    con = connect()
    try:
        con.register("r", rows)
        return con.execute(f"SELECT {quoted(id_column)} AS id, {combined} AS h FROM r").to_arrow_table()
    finally:
        con.close()


def _checksum_of(hashes: pa.Table) -> Checksum:
    values = hashes.column("h").to_numpy()
    total = int(np.asarray(values, dtype=np.uint64).sum(dtype=np.uint64))  # wraps modulo 2**64, as meant
    return Checksum(hashes.num_rows, f"{total:016x}")


def checksum(rows: pa.Table, id_column: str = "event_id") -> Checksum:
    """The rows' count and order-independent digest (see the module docstring)."""
    return _checksum_of(_row_hashes(rows, id_column))


def range_checksum(table: Table, definition: TableDef, start: datetime, end: datetime) -> Checksum:
    """:func:`checksum` of the table's current rows in ``[start, end)``."""
    table.refresh()
    return checksum(_scan_range(table, _day_column(definition), start, end), _id_column(definition))


def _scan_range(
    table: Table, day_column: str, start: datetime, end: datetime, snapshot_id: int | None = None
) -> pa.Table:
    # pyiceberg's signature is (term, literal); its pydantic models confuse mypy
    row_filter = And(GreaterThanOrEqual(day_column, start.isoformat()),  # type: ignore[call-arg,arg-type]
                     LessThan(day_column, end.isoformat()))  # type: ignore[call-arg,arg-type]  # fmt: skip
    return table.scan(row_filter=row_filter, snapshot_id=snapshot_id).to_arrow()


# --- replacing a range --------------------------------------------------------------------------
class RangeChanged(K2Error):
    """The table changed under a replace (files of its partitions, or the offsets its source was
    read up to): re-read the source and start over."""


@dataclass(frozen=True)
class SourceBound:
    """What a source was read up to: the next offset per partition of ``topic`` that ``group``
    had landed (the replace goes on only if the table still records exactly that)."""

    group: str
    topic: str
    offsets: dict[int, int]
    topic_id: str | None = None  # the life of the topic they are offsets in


def replace_range(
    table: Table,
    definition: TableDef,
    start: datetime,
    end: datetime,
    rows: pa.Table,
    *,
    dry_run: bool = False,
    properties: Mapping[str, str] | None = None,
    bound: SourceBound | None = None,
) -> RangeReport:
    """Make ``rows`` (re-processed records of ``[start, end)``, first of each id kept) the table's
    rows of that range, in one snapshot; see the module docstring. ``properties`` go into the
    snapshot's summary. Raises :class:`RangeChanged` when the range's partitions or the offsets
    ``bound`` changed before the commit (the caller re-reads its source and tries again)."""
    started = time.perf_counter()
    day_column, id_column = _day_column(definition), _id_column(definition)
    if not start < end:
        raise ReplaceError(f"the range is empty: start {start.isoformat()} is not before end {end.isoformat()}")
    name = table.name()[-1]
    table.refresh()
    target = table.schema().as_arrow()
    outside = in_range(rows, day_column, start, end, inside=False).num_rows
    if outside:
        raise ReplaceError(f"{outside:,} of the rows to write are outside [{start.isoformat()}, {end.isoformat()})")
    rows = first_of_each_id(rows.select(target.names).cast(target), id_column)
    snapshot = table.current_snapshot()
    life = {bound.topic: bound.topic_id} if bound is not None else None
    if bound is not None and committed_offsets(table, bound.group, life).get(bound.topic, {}) != bound.offsets:
        raise RangeChanged(f"table {name}: the consumer landed more since the source was read")
    keys = _day_partitions(table, day_column, start, end)
    live, deletes = live_files(table)
    read = [f for key in keys for f in live.get(key, [])]
    if any(has_deletes(key, deletes) for key in keys):
        raise ReplaceError(f"table {name}: the range's partitions have delete files (merge-on-read writes of "
                           "another engine); replaying would restore the rows they delete")  # fmt: skip
    current = read_in_landing_order(table, read)
    held = in_range(current, day_column, start, end, inside=True)
    held_hashes, new_hashes = _row_hashes(held, id_column), _row_hashes(rows, id_column)
    kept_ids = pc.is_in(held_hashes.column("id"), value_set=new_hashes.column("id"))
    if held.num_rows and not pc.all(kept_ids).as_py():
        missing = held_hashes.filter(pc.invert(kept_ids)).column("id")
        raise ReplaceError(
            f"table {name}: the source lacks {len(missing):,} of the {held.num_rows:,} rows the range holds "
            f"(e.g. id {missing[0].as_py()}): Kafka's retention, or landing files moved? Nothing changed"
        )
    joined = new_hashes.join(held_hashes, "id", join_type="left outer", right_suffix="_held")
    added = joined.filter(pc.is_null(joined.column("h_held"))).num_rows
    changed = joined.filter(pc.not_equal(joined.column("h"), joined.column("h_held"))).num_rows
    report = RangeReport(name, start.isoformat(), end.isoformat(), dry_run, _checksum_of(held_hashes),
                         _checksum_of(new_hashes), added, changed, len(read), 0,
                         snapshot.snapshot_id if snapshot else None)  # fmt: skip
    if dry_run or (held.num_rows == 0 and rows.num_rows == 0):
        return report  # (nothing to replace: no snapshot, so no consumer reloads its ids for nothing)
    kept = in_range(current, day_column, start, end, inside=False)
    written = write_sorted(table, definition, pa.concat_tables([kept, rows]))
    summary = {MAINTENANCE_PROPERTY: "replay", REPLAY_RANGE_PROPERTY: f"{start.isoformat()}/{end.isoformat()}",
               **(properties or {})}  # fmt: skip
    committed = _swap(table, keys, read, written, summary, exact=True)
    report.files_written, report.snapshot_after = len(written), committed
    landed = checksum(_scan_range(table, day_column, start, end, snapshot_id=committed), id_column)
    if landed != report.after:  # cannot happen: the snapshot holds what was written
        raise K2Error(f"table {name}: snapshot {committed} holds {landed} in the range, not the {report.after} "
                      "written")  # fmt: skip
    report.seconds = round(time.perf_counter() - started, 3)
    MAINTENANCE_SECONDS.labels("replay", name).observe(report.seconds)
    return report


def while_range_changes() -> Retrying:
    """The one policy for a replace that meets a concurrent change (:class:`RangeChanged`): start
    over from reading the files, up to :data:`ATTEMPTS` times in all, then raise the last change."""
    return Retrying(retry=retry_if_exception_type(RangeChanged), stop=stop_after_attempt(ATTEMPTS),
                    wait=wait_random_exponential(multiplier=0.5, max=5), reraise=True)  # fmt: skip


# --- rolling back a load ------------------------------------------------------------------------
def remove_load(
    table: Table,
    definition: TableDef,
    load_id: str,
    *,
    restore: pa.Table | None = None,
    before: Snapshot | None = None,
    dry_run: bool = False,
) -> RollbackReport:
    """Remove every row of load ``load_id`` from ``table``, and add ``restore``: records of later
    loads with ids the load held, which the consumer dropped as duplicates of the load's (the
    first of each id is kept). ``before``: the snapshot before the load (reported).
    """
    started = time.perf_counter()
    id_column, name = _id_column(definition), table.name()[-1]
    ofload = EqualTo("load_id", load_id)  # type: ignore[call-arg,arg-type]
    report = RollbackReport(name, load_id, dry_run, before.snapshot_id if before else None, 0)
    for attempt in while_range_changes():
        with attempt:
            table.refresh()
            target = table.schema().as_arrow()
            live, deletes = live_files(table)
            paths = {task.file.file_path for task in table.scan(row_filter=ofload).plan_files()}
            read_by_key = {key: [f for f in files if f.data_file.file_path in paths] for key, files in live.items()}
            read_by_key = {key: files for key, files in read_by_key.items() if files}
            if any(has_deletes(key, deletes) for key in read_by_key):
                raise ReplaceError(f"table {name}: the load's partitions have delete files (merge-on-read writes "
                                   "of another engine); rewriting them would restore deleted rows")  # fmt: skip
            read = [f for files in read_by_key.values() for f in files]
            current = read_in_landing_order(table, read)
            going = pc.fill_null(pc.equal(current.column("load_id"), load_id), False)
            removed = current.filter(going)
            back = target.empty_table()
            if restore is not None and restore.num_rows and removed.num_rows:
                back = restore.select(target.names).cast(target)
                theirs = pc.is_in(back.column(id_column), value_set=removed.column(id_column))
                back = first_of_each_id(back.filter(theirs), id_column)
            report.rows_removed, report.rows_restored = removed.num_rows, back.num_rows
            report.files_replaced = len(read)
            if dry_run or removed.num_rows == 0:
                break
            written = write_sorted(table, definition, pa.concat_tables([current.filter(pc.invert(going)), back]))
            summary = {MAINTENANCE_PROPERTY: "rollback", ROLLBACK_LOAD_PROPERTY: load_id}
            report.snapshot_after = _swap(table, list(read_by_key), read, written, summary, exact=False)
            report.files_written = len(written)
    report.seconds = round(time.perf_counter() - started, 3)
    if not dry_run:
        MAINTENANCE_SECONDS.labels("rollback", name).observe(report.seconds)
    return report


def snapshot_before(table: Table, group: str, topic: str, first_offsets: Mapping[int, int]) -> Snapshot | None:
    """The newest snapshot of the current lineage at which ``group`` had not yet landed any
    offset of ``first_offsets`` (a snapshot without offsets, e.g. a compaction, counts with the
    offsets of its nearest ancestor that has them). None: the load landed with the first commit."""
    lineage: list[Snapshot] = []
    snapshot = table.current_snapshot()
    while snapshot is not None:
        lineage.append(snapshot)
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    found = None
    landed: dict[str, int] = {}
    for snapshot in reversed(lineage):  # oldest first: the offsets in force at each snapshot
        recorded = snapshot.summary.additional_properties.get(OFFSETS_PROPERTY) if snapshot.summary else None
        if recorded is not None:
            landed = json.loads(recorded).get(group, {}).get(topic, {})
        if all(landed.get(str(p), 0) <= first for p, first in first_offsets.items()):
            found = snapshot
        else:
            break
    return found


# --- shared -------------------------------------------------------------------------------------
def _day_column(definition: TableDef) -> str:
    if definition.day_column is None:
        raise ReplaceError(f"table {definition.name} is not partitioned by day; only trades and quotes are replayed")
    return definition.day_column


def _id_column(definition: TableDef) -> str:
    if definition.id_column is None:
        raise ReplaceError(f"table {definition.name} has no record id")
    return definition.id_column


def _day_partitions(table: Table, day_column: str, start: datetime, end: datetime) -> list[PartitionKey]:
    """The partition keys of the days ``[start, end)`` touches (the table's one day-partitioned spec)."""
    spec = table.spec()
    source = table.schema().find_field(day_column).field_id
    fields = [f for f in spec.fields if isinstance(f.transform, DayTransform) and f.source_id == source]
    if len(spec.fields) != 1 or len(fields) != 1 or len(table.specs()) != 1:
        raise ReplaceError(f"table {table.name()[-1]} is not partitioned by day({day_column}) alone; not replaying")
    first = start.astimezone(UTC).date()
    last = (end.astimezone(UTC) - timedelta(microseconds=1)).date()
    return [(spec.spec_id, (first - EPOCH).days + n) for n in range((last - first).days + 1)]


def in_range(rows: pa.Table, column: str, start: datetime, end: datetime, *, inside: bool) -> pa.Table:
    values = rows.column(column)
    within = pc.and_(pc.greater_equal(values, pa.scalar(start, values.type)),
                     pc.less(values, pa.scalar(end, values.type)))  # fmt: skip
    within = pc.fill_null(within, False)
    return rows.filter(within if inside else pc.invert(within))


def _swap(
    table: Table,
    keys: list[PartitionKey],
    read: list[LiveFile],
    written: list[DataFile],
    summary: dict[str, str],
    *,
    exact: bool,
) -> int:
    """Replace the files ``read`` by ``written`` in one snapshot, if the partitions ``keys`` still
    hold every file read, no delete files, and (``exact``) no file added since; the snapshot's id.

    pyiceberg's own retry of a conflicting commit is off (it would rebuild the commit on the new
    head, past this check): a conflict raises :class:`RangeChanged` for the caller to start over,
    after deleting ``written`` (never referenced). Any other failure leaves them: the commit may
    have landed (an interrupt after it, a commit state unknown), and orphan removal takes them
    if not.
    """
    try:
        table.refresh()
        without_commit_retries(table)
        live, deletes = live_files(table)
        now = {f.data_file.file_path: f.data_file for key in keys for f in live.get(key, [])}
        wanted = {f.data_file.file_path for f in read}
        if not wanted <= set(now) or (exact and set(now) != wanted) or any(has_deletes(k, deletes) for k in keys):
            raise RangeChanged(f"table {table.name()[-1]}: the files read changed before the commit")
        with table.transaction() as transaction, \
                transaction.update_snapshot(snapshot_properties=summary).overwrite() as rewrite:  # fmt: skip
            for path in sorted(wanted):
                rewrite.delete_data_file(now[path])
            for data_file in written:
                rewrite.append_data_file(data_file)
    except (RangeChanged, CommitFailedException, ValidationException) as exc:
        for data_file in written:
            table.io.delete(data_file.file_path)
        MAINTENANCE_CONFLICTS.labels(summary[MAINTENANCE_PROPERTY], table.name()[-1]).inc()
        raise exc if isinstance(exc, RangeChanged) else RangeChanged(f"table {table.name()[-1]}: {exc}") from exc
    snapshot = table.current_snapshot()  # this commit's (the table object is not refreshed since)
    assert snapshot is not None
    return snapshot.snapshot_id
