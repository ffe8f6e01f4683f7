"""Which data files of a snapshot a query reads: K2 plans, DuckDB reads only what it is given.

Why: planning prunes by partition (the day of ``event_time``) and by the data files' column
bounds (``symbol``: files are sorted by it), from a cache of decoded manifests, so DuckDB opens
only files that can hold the answer, then skips row groups by their own statistics. A snapshot
with delete files (merge-on-read writes by other engines) is read through DuckDB's iceberg
extension instead, which applies them. Plans are cached per (table, snapshot, range, symbols).

Times here are as Iceberg stores them: microseconds since the epoch (bounds), days since the
epoch (day partitions).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

from pyiceberg.conversions import from_bytes
from pyiceberg.manifest import ManifestContent
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.transforms import DayTransform
from pyiceberg.types import StringType, TimestampType, TimestamptzType

from k2_etl.errors import K2Error
from k2_etl.lake.catalog import reaching
from k2_etl.query import sql
from k2_etl.wire.duckdb_conn import S3_SCHEMES

PLAN_CACHE = 8192  # planned file lists kept (a few hundred bytes each)
MANIFEST_CACHE = 20_000  # decoded manifests kept (immutable: by path)
SNAPSHOT_CACHE = 64  # snapshots' file lists kept (time travel reads older ones)
_DAY_US = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def micros(at: datetime) -> int:
    """``at`` in microseconds since the epoch (how Iceberg stores times, and how cursors carry them)."""
    return (at - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class _IndexedFile:
    """What planning needs of a data file: where, its day partition, its columns' bounds (by field id)."""

    path: str
    day: int | None  # the day partition (days since the epoch) of the column day_source
    day_source: int | None
    lower: dict[int, Any]
    upper: dict[int, Any]

    @classmethod
    def of(cls, data_file: Any, spec: Any, types: dict[int, Any]) -> _IndexedFile:
        def decoded(bounds: dict[int, bytes] | None) -> dict[int, Any]:
            return {i: from_bytes(types[i], b) for i, b in (bounds or {}).items() if _has_bounds(types.get(i))}

        day_source, day = _day_of(data_file, spec)
        return cls(_readable(data_file.file_path), day, day_source, decoded(data_file.lower_bounds),
                   decoded(data_file.upper_bounds))  # fmt: skip


def _has_bounds(kind: Any) -> bool:
    """The column types planning compares (times as epoch microseconds, strings)."""
    return isinstance(kind, StringType | TimestamptzType | TimestampType)


def _may_overlap(lower: Any, upper: Any, lo: int, hi: int) -> bool:
    """Whether a file whose column lies in [lower, upper] (None: unknown) may hold a value in [lo, hi]."""
    return (lower is None or lower <= hi) and (upper is None or upper >= lo)


def _may_hold(lower: str | None, upper: str | None, value: str) -> bool:
    """Bounds of strings may be truncated (a prefix below, a successor above): still conservative."""
    return (lower is None or lower <= value) and (upper is None or value <= upper)


class _Scan(NamedTuple):
    """A snapshot with delete files, as DuckDB's iceberg_scan reads it (:func:`sql.relation`)."""

    metadata: str
    snapshot_id: int


def _reading(paths: list[str], scan: _Scan | None, prefix: str = "") -> tuple[str, dict[str, Any]]:
    """The relation reading ``paths`` (planned data files of a snapshot), with its parameters."""
    if scan is None:
        return sql.relation(False, prefix), {f"{prefix}files": paths}
    return sql.relation(True, prefix), {f"{prefix}metadata": scan.metadata, f"{prefix}snapshot_id": scan.snapshot_id}


@dataclass(frozen=True)
class Plan:
    """The data files of a snapshot a query may need, and whether it has delete files."""

    files: list[tuple[int | None, str]]  # (day partition or None, path), in day order
    scan: _Scan | None

    def reading(self, prefix: str = "") -> tuple[str, dict[str, Any]]:
        return _reading([path for _, path in self.files], self.scan, prefix)


@dataclass(frozen=True)
class Chunk:
    """One day partition's files (or all files, for tables not partitioned by day) and its time range."""

    start: datetime
    end: datetime
    files: list[str]
    scan: _Scan | None

    def reading(self, prefix: str = "") -> tuple[str, dict[str, Any]]:
        return _reading(self.files, self.scan, prefix)

    def range_params(self) -> dict[str, Any]:
        """The chunk's time range as a statement's ``$start`` and ``$end``."""
        return {"start": self.start, "end": self.end}


class Planner:
    """Thread-safe; holds the decoded manifests and the plans of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: OrderedDict[tuple[Any, ...], Plan] = OrderedDict()
        self._manifests: OrderedDict[str, list[_IndexedFile]] = OrderedDict()  # data manifests, by path
        self._snapshots: OrderedDict[tuple[str, int], tuple[list[_IndexedFile], bool]] = OrderedDict()

    def files(
        self,
        table: Table,
        snapshot: Snapshot,
        start: datetime,
        end: datetime,
        symbols: Sequence[str] | None = None,
        time_column: str = "event_time",
    ) -> Plan:
        """The data files of ``snapshot`` that may hold rows of ``symbols`` in [start, end) of
        ``time_column``, in day order, and how to read them."""
        key = (table.name(), snapshot.snapshot_id, start, end, tuple(sorted(symbols or ())), time_column)
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
        schema = table.schema()
        time_id = schema.find_field(time_column).field_id
        symbol_id = schema.find_field("symbol").field_id if symbols and "symbol" in schema.column_names else None
        lo, hi = micros(start), micros(end)
        first_day, last_day = lo // _DAY_US, (hi - 1) // _DAY_US
        indexed, deletes = self._indexed(table, snapshot)
        files = sorted(
            (
                (f.day, f.path)
                for f in indexed
                if (f.day is None or first_day <= f.day <= last_day)
                and _may_overlap(f.lower.get(time_id), f.upper.get(time_id), lo, hi - 1)
                and (
                    symbol_id is None
                    or any(_may_hold(f.lower.get(symbol_id), f.upper.get(symbol_id), s) for s in symbols or ())
                )
            ),
            key=lambda f: (f[0] is None, f[0] or 0, f[1]),
        )
        planned = Plan(files, _Scan(_readable(table.metadata_location), snapshot.snapshot_id) if deletes else None)
        with self._lock:
            self._plans[key] = planned
            while len(self._plans) > PLAN_CACHE:
                self._plans.popitem(last=False)
        return planned

    def chunks(
        self,
        table: Table,
        snapshot: Snapshot | None,
        start: datetime,
        end: datetime,
        symbols: Sequence[str] | None = None,
        time_column: str = "event_time",
    ) -> list[Chunk]:
        """The range split by day partition, in time order (days without files are absent): a
        query runs a day at a time, so a budget can stop it between days with what it has.
        Neighbouring partitions holding at most a day of the range together are one chunk (a
        market's day crosses UTC midnight: one query, not two)."""
        if snapshot is None:
            return []
        planned = self.files(table, snapshot, start, end, symbols, time_column)
        scan = planned.scan
        if any(day is None for day, _ in planned.files):
            return [Chunk(start, end, [path for _, path in planned.files], scan)] if planned.files else []
        by_day: dict[int, list[str]] = {}
        for day, path in planned.files:
            by_day.setdefault(day, []).append(path)  # type: ignore[arg-type]
        chunks: list[Chunk] = []
        for day, paths in sorted(by_day.items()):
            chunk = Chunk(max(start, EPOCH + day * DAY), min(end, EPOCH + (day + 1) * DAY), paths, scan)
            if chunks and chunk.end - chunks[-1].start <= DAY:  # a day of range in one query, across UTC midnight
                chunk = Chunk(chunks[-1].start, chunk.end, chunks[-1].files + paths, scan)
                chunks[-1] = chunk
            else:
                chunks.append(chunk)
        return chunks

    def whole(self, table: Table, snapshot: Snapshot) -> tuple[str, dict[str, Any]]:
        """The relation of every row of ``snapshot`` and its parameters (none: no data files)."""
        indexed, deletes = self._indexed(table, snapshot)
        if not indexed:
            return "", {}
        scan = _Scan(_readable(table.metadata_location), snapshot.snapshot_id) if deletes else None
        return _reading([f.path for f in indexed], scan)

    def _indexed(self, table: Table, snapshot: Snapshot) -> tuple[list[_IndexedFile], bool]:
        """Every data file of ``snapshot`` with its day partition and column bounds; and whether
        the snapshot has delete files (then its files are read through iceberg_scan, which applies
        them: :func:`sql.relation`).

        Why not pyiceberg's planner per query: it re-reads the manifests on every scan (about 10
        ms a query here, the largest share of a cached page's time). Manifests are immutable, so
        their decoded entries are kept by path: a new snapshot reads only the manifests it added.
        A snapshot is immutable too: its list of files is kept, so a plan not cached yet (another
        symbol or range) does not read the manifest list again (1.4 ms a request, profiled).
        """
        key = (str(table.metadata.table_uuid), snapshot.snapshot_id)
        with self._lock:
            known = self._snapshots.get(key)
            if known is not None:
                self._snapshots.move_to_end(key)
                return known
        files: list[_IndexedFile] = []
        deletes = False
        specs = table.specs()
        types = {f.field_id: f.field_type for f in table.schema().fields}
        with reaching():
            manifests = snapshot.manifests(table.io)
        for manifest in manifests:
            if manifest.content != ManifestContent.DATA:
                # Live delete files (None: a writer that did not count them; assume some).
                deletes = deletes or (manifest.added_files_count, manifest.existing_files_count) != (0, 0)
                continue
            with self._lock:
                cached = self._manifests.get(manifest.manifest_path)
                if cached is not None:
                    self._manifests.move_to_end(manifest.manifest_path)
            if cached is None:
                with reaching():
                    entries = manifest.fetch_manifest_entry(table.io, discard_deleted=True)
                cached = [_IndexedFile.of(entry.data_file, specs[entry.data_file.spec_id], types) for entry in entries]
                with self._lock:
                    self._manifests[manifest.manifest_path] = cached
                    while len(self._manifests) > MANIFEST_CACHE:
                        self._manifests.popitem(last=False)
            files.extend(cached)
        with self._lock:
            self._snapshots[key] = (files, deletes)
            while len(self._snapshots) > SNAPSHOT_CACHE:
                self._snapshots.popitem(last=False)
        return files, deletes


def _day_of(data_file: Any, spec: Any) -> tuple[int | None, int | None]:
    """(source field id, day) of the file's day partition (days since the epoch); (None, None) when
    its spec has no day field (unpartitioned, monthly)."""
    for position, field in enumerate(spec.fields):
        if isinstance(field.transform, DayTransform):
            value = data_file.partition[position]
            if isinstance(value, date):
                return field.source_id, (value - EPOCH.date()).days
            return field.source_id, value if isinstance(value, int) else None
    return None, None


def _readable(location: str) -> str:
    """A data file's location as DuckDB reads it: a local path, or s3:// (s3a:// is the same store)."""
    if location.startswith("file://"):
        return location.removeprefix("file://")
    if "://" not in location:
        return location
    if location.startswith(S3_SCHEMES):
        return "s3://" + location.split("://", 1)[1]
    raise K2Error(f"K2's query engine reads local and S3 warehouses, not {location.split('://')[0]}:// files")
