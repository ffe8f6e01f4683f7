"""What a table's metadata says about its health: the numbers compaction and snapshot expiry exist
to keep in bounds, and how long ago data last landed.

Everything here is read from the metadata file and the current snapshot's manifests (never a data
file), so `k2 monitor` can afford it every pass.
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
    data_files: int
    rows: int
    max_files_per_partition: int  # compaction's work: the worst partition's data files
    average_file_bytes: float | None
    newest_snapshot_age_seconds: float | None  # any commit, maintenance included
    newest_snapshot_rows: int | None  # rows the newest snapshot added
    freshness_seconds: float | None  # since the newest commit that landed records (a consumer's append)


def table_health(table: Table, now: datetime | None = None) -> TableHealth:
    now = now or datetime.now(UTC)
    snapshot = table.current_snapshot()
    if snapshot is None:
        return TableHealth(len(table.metadata.snapshots), 0, 0, 0, None, None, None, None)
    files: dict[tuple[int, str], int] = {}
    data_files = rows = size = 0
    for manifest in snapshot.manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            data_file = entry.data_file
            if data_file.content != DataFileContent.DATA:
                continue
            key = (manifest.partition_spec_id, repr(data_file.partition))
            files[key] = files.get(key, 0) + 1
            data_files += 1
            rows += data_file.record_count
            size += data_file.file_size_in_bytes
    summary = snapshot.summary.additional_properties if snapshot.summary else {}
    return TableHealth(
        snapshots=len(table.metadata.snapshots),
        data_files=data_files,
        rows=rows,
        max_files_per_partition=max(files.values(), default=0),
        average_file_bytes=size / data_files if data_files else None,
        newest_snapshot_age_seconds=_age(snapshot.timestamp_ms, now),
        newest_snapshot_rows=int(summary.get("added-records", 0)),
        freshness_seconds=_freshness(table, now),
    )


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
