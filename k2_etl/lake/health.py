"""What a table's metadata says about its health: the numbers compaction and snapshot expiry exist
to keep in bounds, and how long ago data last landed.

Everything here is read from the metadata file (the current snapshot's summary carries the totals)
and, for the worst partition, the current snapshot's manifests: never a data file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pyiceberg.manifest import DataFileContent
from pyiceberg.table import Table

from k2_etl.lake.commits import OFFSETS_PROPERTY


@dataclass(frozen=True)
class TableHealth:
    """One table's numbers (None where the table has no snapshot yet)."""

    snapshots: int
    data_files: int  # the snapshot summary's totals (total-data-files, -records, -files-size)
    rows: int
    max_files_per_partition: int  # compaction's work: the worst partition's data files
    average_file_bytes: float | None
    newest_snapshot_age_seconds: float | None  # any commit, maintenance included
    newest_snapshot_rows: int | None  # rows the newest snapshot added
    freshness_seconds: float | None  # since the newest commit that landed records (a consumer's append)


def table_health(table: Table, now: datetime | None = None, worst_partition: int | None = None) -> TableHealth:
    """The table's numbers: the totals from the current snapshot's summary (no manifest read);
    ``worst_partition`` from :func:`worst_partition_files` when the caller has it (a scan of every
    manifest is worth doing less often than this), else that scan now."""
    now = now or datetime.now(UTC)
    snapshot = table.current_snapshot()
    if snapshot is None:
        return TableHealth(len(table.metadata.snapshots), 0, 0, 0, None, None, None, None)
    summary = snapshot.summary.additional_properties if snapshot.summary else {}
    data_files = int(summary.get("total-data-files", 0))
    size = int(summary.get("total-files-size", 0))
    return TableHealth(
        snapshots=len(table.metadata.snapshots),
        data_files=data_files,
        rows=int(summary.get("total-records", 0)),
        max_files_per_partition=worst_partition if worst_partition is not None else worst_partition_files(table),
        average_file_bytes=size / data_files if data_files else None,
        newest_snapshot_age_seconds=_age(snapshot.timestamp_ms, now),
        newest_snapshot_rows=int(summary.get("added-records", 0)),
        freshness_seconds=_freshness(table, now),
    )


def worst_partition_files(table: Table) -> int:
    """Data files of the partition with the most (compaction's backlog): reads every manifest of
    the current snapshot (not the data files)."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return 0
    files: dict[tuple[int, str], int] = {}
    for manifest in snapshot.manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            if entry.data_file.content == DataFileContent.DATA:
                key = (manifest.partition_spec_id, repr(entry.data_file.partition))
                files[key] = files.get(key, 0) + 1
    return max(files.values(), default=0)


def _age(timestamp_ms: int, now: datetime) -> float:
    return max(0.0, now.timestamp() - timestamp_ms / 1000)


def _freshness(table: Table, now: datetime) -> float | None:
    """Since the newest snapshot of the current lineage that landed records with their offsets
    (compaction and expiry commit too, but land nothing new)."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if OFFSETS_PROPERTY in summary and int(summary.get("added-records", 0)) > 0:
            return _age(snapshot.timestamp_ms, now)
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    return None
