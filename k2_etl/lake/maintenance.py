"""Table maintenance beside the stream: compaction, snapshot expiry, orphan file removal.

The streaming consumer commits about once a second: a snapshot per commit and a
small file per day partition it touched. Queries slow down with the files, and
metadata grows with the snapshots. These three operations keep tables fast, and
each is safe while the consumer streams:

* :func:`compact`: each partition holding at least ``min_files`` data files is
  read whole, duplicate ids are dropped (the first landed wins), the rows are
  sorted by the table's sort order and written as large files, and one snapshot
  replaces exactly the files read with the files written (pyiceberg's file-level
  overwrite). Rows appended meanwhile are in other files, so they stay. Snapshot
  isolation (:data:`~k2_etl.lake.tables.TABLE_PROPERTIES`) lets that commit land
  beside appends, and still refuses it when a file it rewrote was removed
  meanwhile (a concurrent compaction): that partition is left for the next run.
* :func:`expire_snapshots`: drops snapshots older than a retention, keeping the
  newest ``retain_last``, every branch head and tag (pinned time travel), and
  the snapshots the consumers' Kafka offsets are found through
  (:func:`~k2_etl.lake.commits.offsets_lineage`). It only edits metadata.
* :func:`remove_orphan_files`: deletes files under the table's location that no
  remaining snapshot or metadata file references, once older than a safety
  window (younger ones may belong to a commit in flight), and at any age those
  of compactions whose process is certainly gone (:mod:`k2_etl.lake.cleanup`:
  a compaction records itself in a marker file and names its files after its
  run id, so a killed run's files are known; the next compaction removes them too).

pyiceberg 0.12 has no compaction or orphan removal of its own; these use its
scan, writer and snapshot APIs rather than writing Iceberg metadata by hand.
"""

from __future__ import annotations

import posixpath
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan, PyArrowFileIO, _dataframe_to_data_files
from pyiceberg.manifest import DataFile, DataFileContent, ManifestContent
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.update.validate import ValidationException

from k2_etl.errors import K2Error
from k2_etl.lake.cleanup import Run, dead_runs, recorded_run
from k2_etl.lake.commits import offsets_lineage
from k2_etl.lake.tables import TableDef
from k2_etl.observability import (
    MAINTENANCE_CONFLICTS,
    MAINTENANCE_DUPLICATES_REMOVED,
    MAINTENANCE_FILES_REWRITTEN,
    MAINTENANCE_FILES_WRITTEN,
    MAINTENANCE_ORPHANS_REMOVED,
    MAINTENANCE_SECONDS,
    MAINTENANCE_SNAPSHOTS_EXPIRED,
)
from k2_etl.wire.retry import retry_lost_commits

MAINTENANCE_PROPERTY = "k2.maintenance"  # in the summary of snapshots maintenance commits: what it did
DEFAULT_MIN_FILES = 5  # a partition with fewer data files is left alone (Spark's rewrite default too)

_ROW = "_k2_row"  # the landing order of a row while a partition is rewritten


@dataclass
class PartitionCompaction:
    """What compaction did to one partition (``outcome``: compacted, or why not)."""

    partition: str
    outcome: str
    files_before: int
    bytes_before: int
    rows_before: int
    files_after: int = 0
    bytes_after: int = 0
    rows_after: int = 0

    @property
    def duplicates_removed(self) -> int:
        return self.rows_before - self.rows_after if self.outcome == "compacted" else 0


@dataclass
class CompactionReport:
    table: str
    partitions: list[PartitionCompaction] = field(default_factory=list)
    files_before: int = 0  # data files of the whole table, before and after
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    leftovers_removed: int = 0  # files of earlier compactions that were killed (see remove_orphan_files)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "partitions": [{**asdict(p), "duplicates_removed": p.duplicates_removed}
                                               for p in self.partitions]}  # fmt: skip


@dataclass
class ExpiryReport:
    table: str
    snapshots_before: int
    snapshots_after: int
    expired: list[int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OrphanReport:
    table: str
    files_seen: int
    referenced: int
    orphans: int
    bytes: int
    removed: list[str]
    dry_run: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LiveFile:
    """A live data file of the current snapshot and its data sequence number (landing order)."""

    data_file: DataFile
    sequence_number: int


def compact(
    table: Table,
    definition: TableDef,
    *,
    min_files: int = DEFAULT_MIN_FILES,
    on_partition: Callable[[PartitionCompaction], None] | None = None,
) -> CompactionReport:
    """Rewrite each partition holding at least ``min_files`` data files (see the module docstring).

    Each partition is planned on fresh metadata just before it is rewritten, and checked again
    just before its commit. Partitions with delete files (merge-on-read writes of another
    engine) are skipped: rewriting their data files would bring deleted rows back.
    ``on_partition`` is told of each partition done (progress). The files of earlier runs that
    were killed are removed first; this run records itself the same way while it runs.
    """
    started = time.perf_counter()
    name = table.name()[-1]
    report = CompactionReport(name)
    if dead_runs(table):
        report.leftovers_removed = remove_orphan_files(table, older_than=_NEVER).orphans
    with recorded_run(table, "compact") as run:
        _compact(table, definition, report, min_files, on_partition, run)
    report.seconds = round(time.perf_counter() - started, 3)
    MAINTENANCE_SECONDS.labels("compact", name).observe(report.seconds)
    return report


_NEVER = datetime(1970, 1, 1, tzinfo=UTC)  # "older than never": only the files of dead runs are orphans


def _compact(
    table: Table,
    definition: TableDef,
    report: CompactionReport,
    min_files: int,
    on_partition: Callable[[PartitionCompaction], None] | None,
    run: Run,
) -> None:
    table.refresh()
    by_partition, _ = live_files(table)
    report.files_before = sum(len(files) for files in by_partition.values())
    report.bytes_before = sum(f.data_file.file_size_in_bytes for files in by_partition.values() for f in files)
    candidates = sorted((_partition_path(table, files[0].data_file), key)
                        for key, files in by_partition.items() if len(files) >= min_files)  # fmt: skip
    for partition_name, key in candidates:
        table.refresh()
        live, deletes = live_files(table)
        files = live.get(key, [])
        if len(files) < min_files:
            continue  # compacted meanwhile (another run)
        partition = PartitionCompaction(partition_name, "compacted", len(files),
                                        sum(f.data_file.file_size_in_bytes for f in files),
                                        sum(f.data_file.record_count for f in files))  # fmt: skip
        if has_deletes(key, deletes):
            partition.outcome = "skipped: the partition has delete files (rewriting would restore deleted rows)"
        else:
            _rewrite(table, definition, key, files, partition, run)
        report.partitions.append(partition)
        if on_partition is not None:
            on_partition(partition)
    table.refresh()
    after, _ = live_files(table)
    report.files_after = sum(len(files) for files in after.values())
    report.bytes_after = sum(f.data_file.file_size_in_bytes for files in after.values() for f in files)


class _Conflict(Exception):
    """The partition changed under a rewrite in a way the rewrite must not overwrite."""


def _rewrite(
    table: Table,
    definition: TableDef,
    key: PartitionKey,
    files: list[LiveFile],
    partition: PartitionCompaction,
    run: Run,
) -> None:
    name = table.name()[-1]
    rows = first_of_each_id(read_in_landing_order(table, files), definition.id_column)
    write_id = run.new_id()  # its data files, manifests and manifest list are named after it
    written = write_sorted(table, definition, rows, write_uuid=write_id)
    try:
        _commit_rewrite(table, key, {f.data_file.file_path for f in files}, written, write_id)
    except (_Conflict, CommitFailedException, ValidationException) as exc:
        for data_file in written:  # never referenced: remove rather than leave orphans
            table.io.delete(data_file.file_path)
        partition.outcome = f"conflict: {exc} (left for the next run)"
        MAINTENANCE_CONFLICTS.labels("compact", name).inc()
        return
    partition.files_after = len(written)
    partition.bytes_after = sum(f.file_size_in_bytes for f in written)
    partition.rows_after = rows.num_rows
    MAINTENANCE_FILES_REWRITTEN.labels(name).inc(len(files))
    MAINTENANCE_FILES_WRITTEN.labels(name).inc(len(written))
    MAINTENANCE_DUPLICATES_REMOVED.labels(name).inc(partition.duplicates_removed)


@retry_lost_commits(attempts=5)
def _commit_rewrite(
    table: Table, key: PartitionKey, read: set[str], written: list[DataFile], commit_uuid: uuid.UUID
) -> None:
    """Replace the files ``read`` of partition ``key`` by ``written``, in one snapshot.

    Checked on fresh metadata first: every file read is still live (no other rewrite removed
    it) and the partition has no delete files (none committed while it was rewritten). Commits
    after that are checked by pyiceberg itself (snapshot isolation: appends beside are fine, a
    removed file or a new delete file on a rewritten file is not); a conflicting commit starts
    over here.
    """
    table.refresh()
    live, deletes = live_files(table)
    current = {f.data_file.file_path: f.data_file for f in live.get(key, [])}
    gone = sorted(read - set(current))
    if gone:
        raise _Conflict(f"{len(gone)} of the files rewritten were removed meanwhile, e.g. {gone[0]}")
    if has_deletes(key, deletes):
        raise _Conflict("delete files were committed to the partition while it was rewritten")
    with table.transaction() as transaction:
        properties = {MAINTENANCE_PROPERTY: "compact"}
        with transaction.update_snapshot(snapshot_properties=properties).overwrite(commit_uuid) as rewrite:
            for path in sorted(read):
                rewrite.delete_data_file(current[path])
            for data_file in written:
                rewrite.append_data_file(data_file)


def read_in_landing_order(table: Table, files: list[LiveFile]) -> pa.Table:
    """The rows of ``files`` in landing order (data sequence number), as the table's schema
    (pyiceberg's scan projects older files to it)."""
    ordered = sorted(files, key=lambda f: (f.sequence_number, f.data_file.file_path))
    scan = ArrowScan(table.metadata, table.io, projected_schema=table.schema(), row_filter=AlwaysTrue())
    return scan.to_table([FileScanTask(f.data_file) for f in ordered])  # in task order


def write_sorted(
    table: Table,
    definition: TableDef,
    rows: pa.Table,
    *,
    write_uuid: uuid.UUID | None = None,
) -> list[DataFile]:
    """``rows`` sorted by the table's sort order (then time and id) and written as new data files
    of the table, not yet committed; none for no rows. Files are named ``00000-<n>-<write_uuid>``
    (a new uuid per call: names must not repeat)."""
    if rows.num_rows == 0:
        return []
    sort_keys = [*definition.sort, *(c for c in ("event_time", definition.id_column) if c and c not in definition.sort)]
    rows = rows.sort_by([(column, "ascending") for column in sort_keys if column in rows.column_names])
    return list(_dataframe_to_data_files(table.metadata, rows, table.io, write_uuid=write_uuid or uuid.uuid4()))


def first_of_each_id(rows: pa.Table, id_column: str | None) -> pa.Table:
    """The rows without repeated ids, each id's first row kept (rows are in landing order)."""
    if id_column is None or rows.num_rows == 0:
        return rows
    numbered = rows.append_column(_ROW, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    first = numbered.group_by(id_column, use_threads=False).aggregate([(_ROW, "min")]).column(f"{_ROW}_min")
    if len(first) == rows.num_rows:
        return rows
    return rows.take(np.sort(first.to_numpy()))


PartitionKey = tuple[Any, ...]  # a partition: (spec id, partition values...)
_EVERY_PARTITION: PartitionKey = ("*",)  # the key of delete files of an unpartitioned spec: they apply everywhere


def live_files(table: Table) -> tuple[dict[PartitionKey, list[LiveFile]], set[PartitionKey]]:
    """The current snapshot's data files by partition, and the partitions with delete files."""
    snapshot = table.current_snapshot()
    by_partition: dict[PartitionKey, list[LiveFile]] = {}
    with_deletes: set[PartitionKey] = set()
    if snapshot is None:
        return by_partition, with_deletes
    specs = table.specs()
    for manifest in snapshot.manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            data_file = entry.data_file
            key = (data_file.spec_id, *(data_file.partition[i] for i in range(len(data_file.partition))))
            if manifest.content == ManifestContent.DELETES or data_file.content != DataFileContent.DATA:
                with_deletes.add(key if specs[data_file.spec_id].fields else _EVERY_PARTITION)
            else:
                by_partition.setdefault(key, []).append(LiveFile(data_file, entry.sequence_number or 0))
    return by_partition, with_deletes


def has_deletes(key: PartitionKey, with_deletes: set[PartitionKey]) -> bool:
    return key in with_deletes or _EVERY_PARTITION in with_deletes


def _partition_path(table: Table, data_file: DataFile) -> str:
    spec = table.specs()[data_file.spec_id]
    return spec.partition_to_path(data_file.partition, table.schema()) if spec.fields else "(unpartitioned)"


@retry_lost_commits()
def expire_snapshots(table: Table, *, older_than: datetime, retain_last: int) -> ExpiryReport:
    """Expire the snapshots committed before ``older_than``, except the newest ``retain_last``,
    branch heads and tags, and the consumers' offsets lineage. A commit conflict (the consumer
    committed meanwhile) starts over on the refreshed table."""
    if retain_last < 1:
        raise K2Error(f"retain_last must be at least 1, not {retain_last}")
    started = time.perf_counter()
    table.refresh()
    snapshots = sorted(table.snapshots(), key=lambda s: (s.timestamp_ms, s.snapshot_id), reverse=True)
    keep = {s.snapshot_id for s in snapshots[:retain_last]} | offsets_lineage(table)
    keep |= {ref.snapshot_id for ref in table.metadata.refs.values()}
    cutoff = int(older_than.timestamp() * 1000)
    expired = [s.snapshot_id for s in snapshots if s.timestamp_ms < cutoff and s.snapshot_id not in keep]
    if expired:
        table.maintenance.expire_snapshots().by_ids(expired).commit()
        MAINTENANCE_SNAPSHOTS_EXPIRED.labels(table.name()[-1]).inc(len(expired))
    seconds = round(time.perf_counter() - started, 3)
    MAINTENANCE_SECONDS.labels("expire", table.name()[-1]).observe(seconds)
    return ExpiryReport(table.name()[-1], len(snapshots), len(snapshots) - len(expired), expired, seconds)


def remove_orphan_files(table: Table, *, older_than: datetime, dry_run: bool = False) -> OrphanReport:
    """Delete the files under the table's location that nothing references and that were last
    modified before ``older_than``, or that belong to a run whose process is certainly gone
    (:func:`~k2_etl.lake.cleanup.dead_runs`: its files and its marker). ``dry_run``: only report them."""
    started = time.perf_counter()
    dead = dead_runs(table)  # then the metadata, fresh: a run found dead committed all it ever will before
    table.refresh()
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        raise K2Error(f"orphan removal lists files through pyarrow; table {table.name()[-1]} uses {type(io).__name__}")
    scheme, netloc, root = io.parse_location(table.location(), io.properties)
    fs = io.fs_by_scheme(scheme, netloc)
    root = _normalized(root)
    references = [
        (_normalized(io.parse_location(path, io.properties)[2]), needed) for path, needed in _referenced(table)
    ]
    referenced = {path for path, _ in references}
    listed = [
        info
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        if info.type == pafs.FileType.File
    ]
    found = {_normalized(info.path) for info in listed}
    unseen = sorted(p for p, needed in references if needed and p.startswith(root + "/") and p not in found)
    if unseen:  # paths spelled differently from the listing, or files missing: deleting could corrupt
        raise K2Error(f"table {table.name()[-1]}: {len(unseen)} referenced files are not among the files listed "
                      f"under {root} (e.g. {unseen[0]}); removing no orphans")  # fmt: skip
    orphans = [info for info in listed if _normalized(info.path) not in referenced and info.mtime is not None
               and (info.mtime.timestamp() < older_than.timestamp() or _of_runs(info.path, dead))]  # fmt: skip
    if not dry_run:
        for info in orphans:
            fs.delete_file(info.path)
        MAINTENANCE_ORPHANS_REMOVED.labels(table.name()[-1]).inc(len(orphans))
    seconds = round(time.perf_counter() - started, 3)
    MAINTENANCE_SECONDS.labels("clean_orphans", table.name()[-1]).observe(seconds)
    return OrphanReport(table.name()[-1], len(listed), len(referenced), len(orphans),
                        sum(info.size or 0 for info in orphans), sorted(info.path for info in orphans), dry_run,
                        seconds)  # fmt: skip


def _of_runs(path: str, ids: set[str]) -> bool:
    name = posixpath.basename(path)
    return any(i in name for i in ids)


def _normalized(path: str) -> str:
    """One spelling of a path for comparing references with a listing (percent-escapes, ``..``, ``//``)."""
    return posixpath.normpath(unquote(path))


def _referenced(table: Table) -> Iterable[tuple[str, bool]]:
    """Every file the table's metadata reaches, and whether reading the table needs it: metadata
    files (the current one; logged ones may already be gone), statistics, and for each snapshot
    its manifest list, manifests and their live data and delete files."""
    metadata = table.metadata
    yield table.metadata_location, True
    yield from ((entry.metadata_file, False) for entry in metadata.metadata_log)
    yield from ((s.statistics_path, True) for s in metadata.statistics)
    yield from ((s.statistics_path, True) for s in metadata.partition_statistics)
    seen: set[str] = set()
    for snapshot in table.snapshots():
        yield snapshot.manifest_list, True
        for manifest in snapshot.manifests(table.io):
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            yield manifest.manifest_path, True
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                yield entry.data_file.file_path, True
