"""Delete files as merge-on-read engines (Spark, Trino, Flink) write them, committed to a real table.

pyiceberg 0.12 writes deletes only by rewriting files (copy-on-write), and no such engine runs
here, so these helpers write the files the Iceberg spec describes (position deletes: file_path
and pos; equality deletes: the equality columns, with their field ids) and commit them in a
snapshot through pyiceberg's own manifest and manifest-list writers and table updates.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.manifest import (
    DataFile,
    DataFileContent,
    FileFormat,
    ManifestContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestWriterV2,
    write_manifest_list,
)
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation, Snapshot, Summary
from pyiceberg.table.update import AddSnapshotUpdate, AssertRefSnapshotId, SetSnapshotRefUpdate

# Reserved field ids of a position delete file's columns (Iceberg spec, "Position Delete Files").
FILE_PATH_ID, POS_ID = 2147483546, 2147483545


class _DeleteManifestWriter(ManifestWriterV2):
    """pyiceberg's v2 manifest writer, writing a manifest of delete files."""

    def content(self) -> ManifestContent:
        return ManifestContent.DELETES

    @property
    def _meta(self) -> dict[str, str]:
        return {**super()._meta, "content": "deletes"}


def _field(name: str, kind: pa.DataType, field_id: int) -> pa.Field:
    return pa.field(name, kind, nullable=False, metadata={b"PARQUET:field_id": str(field_id).encode()})


def _write(table: Table, rows: pa.Table) -> tuple[str, int]:
    path = f"{table.location()}/data/deletes-{uuid.uuid4().hex}.parquet"
    with table.io.new_output(path).create() as out:
        pq.write_table(rows, out)
    return path, len(table.io.new_input(path))


def position_deletes(table: Table, data_file: DataFile, positions: Sequence[int]) -> DataFile:
    """A position delete file deleting rows ``positions`` (0-based) of ``data_file``."""
    schema = pa.schema([_field("file_path", pa.string(), FILE_PATH_ID), _field("pos", pa.int64(), POS_ID)])
    rows = pa.table({"file_path": [data_file.file_path] * len(positions), "pos": sorted(positions)}, schema=schema)
    path, size = _write(table, rows)
    deletes = DataFile.from_args(content=DataFileContent.POSITION_DELETES, file_path=path,
                                 file_format=FileFormat.PARQUET, partition=data_file.partition,
                                 record_count=len(positions), file_size_in_bytes=size)  # fmt: skip
    deletes.spec_id = data_file.spec_id
    return deletes


def equality_deletes(table: Table, partition_of: DataFile, column: str, values: Sequence[Any]) -> DataFile:
    """An equality delete file deleting the rows whose ``column`` is one of ``values``, in the
    partition of ``partition_of`` (equality deletes of a partitioned table apply within theirs)."""
    field = table.schema().find_field(column)
    arrow_type = table.schema().as_arrow().field(column).type
    rows = pa.table({column: list(values)}, schema=pa.schema([_field(column, arrow_type, field.field_id)]))
    path, size = _write(table, rows)
    deletes = DataFile.from_args(content=DataFileContent.EQUALITY_DELETES, file_path=path,
                                 file_format=FileFormat.PARQUET, partition=partition_of.partition,
                                 record_count=len(values), file_size_in_bytes=size,
                                 equality_ids=[field.field_id])  # fmt: skip
    deletes.spec_id = partition_of.spec_id
    return deletes


def commit_deletes(table: Table, delete_files: Sequence[DataFile]) -> Snapshot:
    """Commit ``delete_files`` as a new snapshot of ``table``'s main branch (a "delete" operation
    keeping every manifest of the current snapshot); returns the new snapshot."""
    parent = table.current_snapshot()
    assert parent is not None, "a table with data to delete from"
    snapshot_id = uuid.uuid4().int % 2**63
    sequence_number = table.metadata.next_sequence_number()
    manifest_path = f"{table.location()}/metadata/{uuid.uuid4()}-m0.avro"
    with _DeleteManifestWriter(table.spec(), table.schema(), table.io.new_output(manifest_path), snapshot_id,
                               "deflate") as writer:  # fmt: skip
        for delete_file in delete_files:
            writer.add(ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=snapshot_id,
                                               data_file=delete_file))  # fmt: skip
    list_path = f"{table.location()}/metadata/snap-{snapshot_id}-1-{uuid.uuid4()}.avro"
    with write_manifest_list(2, table.io.new_output(list_path), snapshot_id, parent.snapshot_id, sequence_number,
                             "deflate") as manifests:  # fmt: skip
        manifests.add_manifests([*parent.manifests(table.io), writer.to_manifest_file()])
    snapshot = Snapshot(snapshot_id=snapshot_id, parent_snapshot_id=parent.snapshot_id,
                        sequence_number=sequence_number, timestamp_ms=int(time.time() * 1000),
                        manifest_list=list_path, summary=Summary(operation=Operation.DELETE),
                        schema_id=table.schema().schema_id)  # fmt: skip
    transaction = table.transaction()
    main = SetSnapshotRefUpdate(ref_name="main", type="branch", snapshot_id=snapshot_id)
    transaction._apply((AddSnapshotUpdate(snapshot=snapshot), main),
                       (AssertRefSnapshotId(ref="main", snapshot_id=parent.snapshot_id),))  # fmt: skip
    transaction.commit_transaction()
    return snapshot
