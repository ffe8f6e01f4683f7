"""`k2 load`: vendor CSV files → validated Avro records → Kafka, idempotently.

For each file: its content gives a deterministic load id; a load the manifest
records as completed is skipped (unless forced). Otherwise a worker thread
reads blocks of lines, validates and converts them with DuckDB
(:mod:`k2_etl.ingest.sql`) and encodes them to Avro a column at a time
(:mod:`k2_etl.ingest.avro_frame`), while this thread produces the previous
block: the CPU-heavy vector work releases the GIL, so parsing and producing
overlap. Rejected rows go to the dead-letter topic with their file, line,
raw text and reason. Per file, always: rows read = produced + rejected.
"""

from __future__ import annotations

import csv
import hashlib
import io
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from k2_etl.config import Settings
from k2_etl.errors import K2Error, SchemaError, UnavailableError
from k2_etl.formats import Format, RecordSpec
from k2_etl.ingest import sql
from k2_etl.ingest.avro_frame import confluent_prefix, encode_table
from k2_etl.ingest.lines import Block, file_checksum, read_blocks, read_first_line
from k2_etl.ingest.producer import Deliveries, Headers, make_producer, produce_all
from k2_etl.kafka import cluster_metadata
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.manifest import Manifest, ManifestEntry, now
from k2_etl.observability import (
    INGEST_BYTES,
    INGEST_FILES,
    INGEST_LOAD_SECONDS,
    INGEST_PRODUCE_ERRORS,
    INGEST_ROWS_PRODUCED,
    INGEST_ROWS_READ,
    INGEST_ROWS_REJECTED,
)
from k2_etl.schemas import BY_NAME, REJECT
from k2_etl.schemas.registration import registry_client

RECORD_ORDER = {"reference_data": 0, "trade": 1, "quote": 2}  # reference data first: others look symbols up
MAX_RAW_LINE = 10_000
QUEUE_DEPTH = 2  # blocks prepared ahead of the producer: bounds memory


@dataclass
class FileResult:
    """What happened to one file (also the --json shape)."""

    file: str
    record_type: str | None = None
    status: str = "pending"  # loaded, skipped, failed
    load_id: str | None = None
    rows_read: int = 0
    rows_produced: int = 0
    rows_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    blank_lines: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    offsets: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    message: str | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows_per_second"] = round(self.rows_per_second, 1)
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class LoadReport:
    files: list[FileResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(f.status != "failed" for f in self.files)

    def totals(self) -> dict[str, Any]:
        reasons: Counter[str] = Counter()
        for f in self.files:
            reasons.update(f.rejected_by_reason)
        read = sum(f.rows_read for f in self.files)
        return {
            "files": len(self.files),
            "files_by_status": dict(Counter(f.status for f in self.files)),
            "rows_read": read,
            "rows_produced": sum(f.rows_produced for f in self.files),
            "rows_rejected": sum(f.rows_rejected for f in self.files),
            "rejected_by_reason": dict(reasons),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(read / self.seconds, 1) if self.seconds > 0 else 0.0,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "totals": self.totals(), "files": [f.to_dict() for f in self.files]}


@dataclass
class _Prepared:
    """One block, ready to produce."""

    values: list[bytes]
    keys: list[bytes]
    timestamps: list[int]
    rejects: list[dict[str, Any]]
    rows_read: int
    blank_lines: int
    nbytes: int


@dataclass
class _Job:
    """A file being loaded: what it is, and what has happened to it so far."""

    path: Path
    spec: RecordSpec
    result: FileResult
    entry: ManifestEntry
    deliveries: Deliveries = field(default_factory=Deliveries)
    reasons: Counter[str] = field(default_factory=Counter)
    error: str | None = None
    started_at: float | None = None  # when the worker began reading it
    last_block_at: float | None = None
    ingest_time: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def headers(self) -> Headers:
        return [
            ("k2-load-id", self.entry.load_id.encode()),
            ("k2-source", str(self.path).encode()),
            ("k2-record-type", self.spec.type.encode()),
        ]


class _FileFailed(K2Error):
    """The whole file cannot be loaded (empty, bad header, no matching record type)."""


def expand(paths: Iterable[Path], fmt: Format) -> tuple[list[tuple[Path, RecordSpec]], list[FileResult]]:
    """Files to load with their record spec (reference data first), and results for paths that fail outright."""
    planned: list[tuple[Path, RecordSpec]] = []
    failed: list[FileResult] = []
    seen: set[Path] = set()

    def plan(path: Path, spec: RecordSpec) -> None:
        if path.resolve() not in seen:  # a file named twice (itself and via its folder) loads once
            seen.add(path.resolve())
            planned.append((path, spec))

    for path in paths:
        if not path.exists():
            failed.append(FileResult(str(path), status="failed", message=f"{path}: no such file or folder"))
            continue
        if path.is_dir():
            found = 0
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                spec = fmt.spec_for(child.resolve())  # patterns such as */trades/*.csv need the folders
                if spec is not None:
                    plan(child, spec)
                    found += 1
            if not found:
                message = f"{path}: no files of format {fmt.name!r} in this folder ({_patterns(fmt)})"
                failed.append(FileResult(str(path), status="failed", message=message))
            continue
        spec = fmt.spec_for(path.resolve())
        if spec is None:
            message = f"{path.name} matches no record type of format {fmt.name!r} ({_patterns(fmt)})"
            failed.append(FileResult(str(path), status="failed", message=message))
            continue
        plan(path, spec)
    planned.sort(key=lambda item: (RECORD_ORDER[item[1].type], str(item[0])))
    return planned, failed


def _patterns(fmt: Format) -> str:
    return "; ".join(f"{s.type}: {', '.join(s.match)}" for s in fmt.record)


def _csv_fields(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter, strict=True), [])
    except csv.Error:
        return [line]  # unparseable quoting: one field, so the row is rejected for its field count


def _split_fields(lines: pa.Array, delimiter: str) -> pa.Array:
    """Fields of each line. Fast path: split on the delimiter; lines with quotes go through csv."""
    if len(lines) and pc.any(pc.match_substring(lines, '"')).as_py():
        return pa.array([_csv_fields(line, delimiter) for line in lines.to_pylist()], pa.list_(pa.string()))
    return pc.split_pattern(lines, delimiter)


REFERENCE_SEARCH_DEPTH = 2  # reference files are looked for next to a file and up to two folders above


def _find_upwards(start: Path, name: str) -> Path | None:
    for folder in [start, *start.parents][: REFERENCE_SEARCH_DEPTH + 1]:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


class Loader:
    """Loads files of one format. Create it once per `k2 load` (it holds the producer and clients)."""

    def __init__(
        self,
        settings: Settings,
        fmt: Format,
        *,
        load_date: date | None = None,
        force: bool = False,
        on_rows: Callable[[str, int], None] | None = None,
    ) -> None:
        self.settings, self.fmt, self.load_date, self.force = settings, fmt, load_date, force
        self.on_rows = on_rows or (lambda _file, _n: None)
        metadata = cluster_metadata(settings)  # fail fast (exit 3) when the broker is unreachable
        self.topics = {r: BY_NAME[r].topic_name(settings) for r in ("trade", "quote", "reference_data", "reject")}
        missing = sorted(t for t in self.topics.values() if t not in metadata.topics)
        if missing:
            raise K2Error(f"Kafka topics {', '.join(missing)} do not exist; run `k2 init`")
        self.schema_ids = self._schema_ids()
        self.reject_schema = fastavro.parse_schema(REJECT.schema)
        self.manifest = Manifest(open_catalog(settings), settings.namespace)
        self.producer = make_producer(settings)
        self._references: dict[Path, dict[str, list[tuple[str, date | None, date | None]]]] = {}
        self._known: dict[Path, pa.Table] = {}
        self._checksums: dict[Path, str] = {}

    def _schema_ids(self) -> dict[str, int]:
        ids: dict[str, int] = {}
        try:
            with registry_client(self.settings) as client:
                for name in ("trade", "quote", "reference_data", "reject"):
                    record = BY_NAME[name]
                    subject = record.subject(self.settings)
                    try:
                        ids[name] = client.lookup_schema(subject, Schema(record.schema_str, "AVRO")).schema_id
                    except SchemaRegistryError as exc:
                        if exc.http_status_code == 404:
                            raise SchemaError(
                                f"the {name} schema is not registered under {subject}; run `k2 schemas register`"
                            ) from None
                        raise
        except SchemaRegistryError as exc:
            raise SchemaError(f"schema registry error {exc.error_code}: {exc.error_message}") from None
        except SchemaError:
            raise
        except Exception as exc:  # the client's transport errors (httpx or httpx2)
            raise UnavailableError(
                f"schema registry at K2_SCHEMA_REGISTRY_URL={self.settings.schema_registry_url} is unreachable "
                f"({type(exc).__name__}); is it running? (k2 up / k2 status)"
            ) from None
        return ids

    # --- public -----------------------------------------------------------------------------
    def load(self, paths: Iterable[Path]) -> LoadReport:
        """Load every file; one worker thread prepares blocks of all files in turn while this one produces."""
        started = time.perf_counter()
        paths = list(paths)
        planned, results = expand(paths, self.fmt)
        jobs: list[_Job] = []
        for path, spec in planned:
            checksum = file_checksum(path)
            load_id = self._load_id(path, spec, checksum)
            entry = ManifestEntry(
                load_id, str(path), checksum, self.fmt.name, spec.type, "started", now(),
                load_date=self.load_date, forced=self.force,
            )  # fmt: skip
            jobs.append(_Job(path, spec, FileResult(str(path), spec.type, load_id=load_id), entry))
        previous = self.manifest.latest(*(job.entry.load_id for job in jobs))
        to_load: list[_Job] = []
        for job in jobs:
            done = previous.get(job.entry.load_id)
            if done is not None and done.status == "completed" and not self.force:
                job.result.status = "skipped"
                job.result.offsets = done.offsets
                job.result.message = (
                    f"already loaded (load {done.load_id}, completed {done.finished_at:%Y-%m-%d %H:%M:%S} UTC); "
                    "use --force to load it again"
                )
            else:
                to_load.append(job)
        self.manifest.append(*(job.entry for job in to_load))
        self._run(to_load)
        self.producer.flush()
        finished = [self._finish(job) for job in to_load]
        self.manifest.append(*finished)
        results += [job.result for job in jobs]
        for result in results:
            INGEST_FILES.labels(self.fmt.name, result.status).inc()
        return LoadReport(results, time.perf_counter() - started)

    def close(self) -> None:
        self.producer.flush(30)

    def _load_id(self, path: Path, spec: RecordSpec, checksum: str) -> str:
        """Deterministic: the same inputs give the same id, and any input that changes the output changes it.

        Inputs: format, record type, the file's content, the load date, and where symbols come from
        (the instrument in the file name, the content of the reference file used).
        """
        parts = [self.fmt.name, spec.type, checksum, self.load_date.isoformat() if self.load_date else ""]
        if self.fmt.symbol_from_file_name is not None and spec.type != "reference_data":
            parts.append(path.name.split(".")[0])
            parts.append(self._reference_checksum(path, self.fmt.symbol_from_file_name.reference_file))
        if self.fmt.known_symbols is not None and spec.type != "reference_data":
            parts.append(self._reference_checksum(path, self.fmt.known_symbols.reference_file))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def _reference_checksum(self, path: Path, name: str) -> str:
        found = _find_upwards(path.parent, name)
        if found is None:
            return "none"
        if found not in self._checksums:
            self._checksums[found] = file_checksum(found)
        return self._checksums[found]

    # --- the pipeline ---------------------------------------------------------------------------
    def _run(self, jobs: list[_Job]) -> None:
        items: queue.Queue[tuple[_Job, _Prepared | BaseException] | None] = queue.Queue(maxsize=QUEUE_DEPTH)
        stop = threading.Event()
        worker = threading.Thread(target=self._prepare_all, args=(jobs, items, stop), name="k2-load", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    item = items.get(timeout=1.0)
                except queue.Empty:
                    if not worker.is_alive():  # it always ends by queueing None: belt and braces
                        raise K2Error("the reading thread ended unexpectedly") from None
                    continue
                if item is None:
                    break
                job, prepared = item
                if job.error is not None:
                    continue  # this file already failed: its remaining blocks are dropped
                if isinstance(prepared, BaseException):
                    job.error = str(prepared)
                    continue
                try:
                    self._produce(job, prepared)
                except K2Error as exc:
                    job.error = str(exc)
        finally:
            stop.set()
            while worker.is_alive():  # unblock a worker waiting on a full queue
                try:
                    items.get_nowait()
                except queue.Empty:
                    worker.join(0.05)

    def _produce(self, job: _Job, item: _Prepared) -> None:
        result, labels = job.result, (self.fmt.name, job.spec.type)
        topic = self.topics[job.spec.type]
        produce_all(self.producer, topic, item.values, item.keys, item.timestamps, job.headers, job.deliveries)
        self._produce_rejects(item.rejects, job)
        codes = Counter(r["_code"] for r in item.rejects)
        job.reasons.update(codes)
        result.rows_read += item.rows_read
        result.rows_produced += len(item.values)
        result.rows_rejected += len(item.rejects)
        result.blank_lines += item.blank_lines
        result.bytes_read += item.nbytes
        job.last_block_at = time.perf_counter()
        INGEST_ROWS_READ.labels(*labels).inc(item.rows_read)
        INGEST_ROWS_PRODUCED.labels(*labels).inc(len(item.values))
        INGEST_BYTES.labels(*labels).inc(item.nbytes)
        for code, count in codes.items():
            INGEST_ROWS_REJECTED.labels(*labels, code).inc(count)
        self.on_rows(str(job.path), item.rows_read)

    def _finish(self, job: _Job) -> ManifestEntry:
        """Decide a file's outcome once everything is delivered; the manifest row that records it."""
        result, spec = job.result, job.spec
        result.rejected_by_reason = dict(job.reasons)
        result.offsets = job.deliveries.offsets()
        if job.started_at is not None and job.last_block_at is not None:
            result.seconds = job.last_block_at - job.started_at
        if job.error is not None:
            result.message = job.error
        elif job.deliveries.errors:
            result.message = f"{job.deliveries.errors} message(s) were not delivered: {job.deliveries.first_error}"
        elif result.rows_read == 0:
            result.message = "no data rows" + (" (header only)" if spec.header else "")
        elif result.rows_produced == 0:
            result.message = f"every row was rejected ({_top_reasons(result.rejected_by_reason)})"
        result.status = "failed" if result.message else "loaded"
        INGEST_PRODUCE_ERRORS.labels(self.fmt.name, spec.type).inc(job.deliveries.errors)
        INGEST_LOAD_SECONDS.labels(self.fmt.name, spec.type).observe(result.seconds)
        entry = job.entry
        finished = ManifestEntry(
            entry.load_id, entry.file, entry.checksum, entry.format, entry.record_type,
            "completed" if result.status == "loaded" else "failed", entry.started_at,
            load_date=entry.load_date, rows_read=result.rows_read, rows_produced=result.rows_produced,
            rows_rejected=result.rows_rejected, rejected_by_reason=result.rejected_by_reason,
            offsets=result.offsets, finished_at=now(), message=result.message, forced=entry.forced,
        )  # fmt: skip
        return finished

    def _effective_spec(self, path: Path, spec: RecordSpec) -> RecordSpec:
        """For headered files, the columns as this file's header orders them."""
        if not spec.header:
            return spec
        try:
            first = read_first_line(path)
        except UnicodeDecodeError:
            raise _FileFailed("the header line is not valid UTF-8") from None
        if first is None or not first.strip():
            raise _FileFailed("empty file")
        header = [h.strip() for h in next(csv.reader([first], delimiter=self.fmt.delimiter))]
        missing = [c for c in spec.columns if c not in header]
        if not missing:
            return spec.model_copy(update={"columns": header})
        hint = ""
        if len(header) == 1:
            other = next((d for d in ";\t|" if d in first), None)
            if other:
                hint = f" (the header contains {other!r}: is the delimiter {self.fmt.delimiter!r} right?)"
        raise _FileFailed(f"the header lacks column(s) {', '.join(missing)}; found {', '.join(header)}{hint}")

    def _symbol_ranges(self, path: Path) -> tuple[str | None, pa.Table | None, str | None]:
        ref = self.fmt.symbol_from_file_name
        if ref is None:
            return None, None, None
        instrument = path.name.split(".")[0]
        found = _find_upwards(path.parent, ref.reference_file)
        by_key: dict[str, list[tuple[str, date | None, date | None]]] = {}
        label = ref.reference_file
        if found is None:
            label = f"{ref.reference_file} (none found next to {path.name} or up to two folders above)"
        else:
            by_key = self._reference(found)
        rows = _without_overlaps(by_key.get(instrument, []))
        table = pa.table(
            {
                "symbol": pa.array([r[0] for r in rows], pa.string()),
                "valid_from": pa.array([r[1] for r in rows], pa.date32()),
                "valid_to": pa.array([r[2] for r in rows], pa.date32()),
            }
        )
        return instrument, table, label

    def _reference(self, path: Path) -> dict[str, list[tuple[str, date | None, date | None]]]:
        if path in self._references:
            return self._references[path]
        ref = self.fmt.symbol_from_file_name
        assert ref is not None

        def parse(value: str | None) -> date | None:
            value = (value or "").strip()
            return datetime.strptime(value, ref.date_format).date() if value else None

        out: dict[str, list[tuple[str, date | None, date | None]]] = {}
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle, delimiter=self.fmt.delimiter):
                key, symbol = (row.get(ref.key_column) or "").strip(), (row.get(ref.symbol_column) or "").strip()
                if not key or not symbol:
                    continue
                try:
                    span = (
                        parse(row.get(ref.valid_from_column or "")),
                        parse(row.get(ref.valid_to_column or "")),
                    )
                except ValueError:
                    continue  # an unusable reference row: the reference_data load itself rejects it
                out.setdefault(key, []).append((symbol, *span))
        self._references[path] = out
        return out

    def _known_symbols(self, job: _Job) -> tuple[pa.Table | None, str | None]:
        """The symbols of the format's reference file, when it declares one and one is found."""
        known = self.fmt.known_symbols
        if known is None or job.spec.type == "reference_data":
            return None, None
        found = _find_upwards(job.path.parent, known.reference_file)
        if found is None:
            return None, None
        if found not in self._known:
            with found.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle, delimiter=self.fmt.delimiter)
                symbols = {(row.get(known.symbol_column) or "").strip() for row in reader}
            self._known[found] = pa.table({"symbol": pa.array(sorted(symbols - {""}), pa.string())})
        return self._known[found], found.name

    def _statement(self, job: _Job) -> tuple[RecordSpec, sql.Statement, dict[str, pa.Table]]:
        spec = self._effective_spec(job.path, job.spec)
        instrument, ranges, reference_label = self._symbol_ranges(job.path)
        known, known_label = self._known_symbols(job)
        statement = sql.build(
            self.fmt,
            spec,
            load_date=self.load_date.isoformat() if self.load_date else None,
            max_event_time=(datetime.now(UTC) + timedelta(days=1)).isoformat(),
            instrument=instrument,
            reference_label=reference_label,
            known_symbols_label=known_label,
        )
        tables = {"symbol_ranges": ranges, "known_symbols": known}
        return spec, statement, {name: table for name, table in tables.items() if table is not None}

    def _prepare_all(
        self,
        jobs: list[_Job],
        out: queue.Queue[tuple[_Job, _Prepared | BaseException] | None],
        stop: threading.Event,
    ) -> None:
        """Worker thread: every file's blocks → prepared messages, in order; a file's error ends that file only."""
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            for job in jobs:
                job.started_at = time.perf_counter()
                try:
                    spec, statement, lookups = self._statement(job)
                    for name, table in lookups.items():
                        con.register(name, table)
                    seq_base: dict[tuple[str, str, date], int] = {}
                    for block in read_blocks(job.path, skip_lines=1 if spec.header else 0):
                        if stop.is_set():
                            return
                        out.put((job, self._prepare(con, spec, statement, block, seq_base, job)))
                except Exception as exc:  # this file fails; the others go on
                    error = exc if isinstance(exc, K2Error | OSError) else K2Error(f"{type(exc).__name__}: {exc}")
                    out.put((job, error))
        finally:
            out.put(None)
            con.close()

    def _prepare(
        self,
        con: duckdb.DuckDBPyConnection,
        spec: RecordSpec,
        statement: sql.Statement,
        block: Block,
        seq_base: dict[tuple[str, str, date], int],
        job: _Job,
    ) -> _Prepared:
        path, load_id = job.path, job.entry.load_id
        rejects = [
            self._reject(path, spec.type, r.line_number, r.raw, r.reason, r.detail, None, load_id)
            for r in block.rejects
        ]
        empty = _Prepared([], [], [], rejects, len(block.rejects), block.blank_lines, block.nbytes)
        if len(block.lines) == 0:
            return empty
        rows = pa.table(
            {
                "line_no": pa.array(block.line_numbers, pa.int64()),
                "raw": block.lines,
                "f": _split_fields(block.lines, self.fmt.delimiter),
            }
        )
        con.register("rows", rows)
        con.register("seq_base", _seq_base_table(seq_base))
        table = con.execute(statement.sql, statement.params).to_arrow_table()
        if table.num_rows != len(block.lines):  # every line is one row out, valid or not
            raise K2Error(f"{path}: {len(block.lines)} lines became {table.num_rows} rows; not loading this file")
        if table.column("reason").null_count == table.num_rows:  # the usual case: nothing to split off
            valid, bad = table, table.slice(0, 0)
        else:
            valid_mask = pc.is_null(table.column("reason"))
            valid, bad = table.filter(valid_mask), table.filter(pc.invert(valid_mask))
        if bad.num_rows:
            bad_rows = bad.select(["line_no", "reason", "detail", "field"]).to_pylist()
            positions = np.searchsorted(block.line_numbers, [r["line_no"] for r in bad_rows])
            raws = block.lines.take(pa.array(positions)).to_pylist()
            for row, raw in zip(bad_rows, raws, strict=True):
                rejects.append(
                    self._reject(path, spec.type, row["line_no"], raw, row["reason"], row["detail"], row["field"],
                                 load_id)
                )  # fmt: skip
        if "sequence_number" not in spec.fields and valid.num_rows and spec.type != "reference_data":
            _advance_sequences(valid, seq_base)
        record = BY_NAME[spec.type]
        lineage = {"source": str(path), "load_id": load_id, "ingest_time": job.ingest_time}
        values = encode_table(valid, record.schema, self.schema_ids[spec.type], constants=lineage).to_pylist()
        symbols = valid.column("symbol").to_pylist()
        cache: dict[str, bytes] = {}
        keys = [cache.get(s) or cache.setdefault(s, s.encode()) for s in symbols]
        if spec.type == "reference_data":
            stamp = int(time.time() * 1000)
            timestamps = [stamp] * valid.num_rows
        else:
            micros = valid.column("event_time").combine_chunks().cast(pa.int64())
            timestamps = pc.divide(micros, 1000).to_pylist()
        return _Prepared(
            values, keys, timestamps, rejects, len(block.rejects) + len(block.lines), block.blank_lines, block.nbytes
        )

    def _reject(
        self,
        path: Path,
        record_type: str,
        line_number: int,
        raw: str,
        code: str,
        detail: str,
        column: str | None,
        load_id: str,
    ) -> dict[str, Any]:
        return {
            "_code": code,
            "reject_id": hashlib.md5(f"{path.resolve()}|{line_number}".encode(), usedforsecurity=False).hexdigest(),
            "rejected_at": now(),
            "stage": "load",
            "record_type": record_type,
            "reason": f"{path.name} line {line_number}: {detail}",
            "field": column,
            "value": None,
            "source": str(path),
            "line_number": line_number,
            "raw_line": raw[:MAX_RAW_LINE],
            "kafka_topic": None,
            "kafka_partition": None,
            "kafka_offset": None,
            "raw_bytes": None,
            "headers": None,
            "load_id": load_id,
        }

    def _produce_rejects(self, rejects: list[dict[str, Any]], job: _Job) -> None:
        if not rejects:
            return
        load_id = job.entry.load_id
        prefix = confluent_prefix(self.schema_ids["reject"])
        values = []
        for reject in rejects:
            buffer = io.BytesIO()
            buffer.write(prefix)
            fastavro.schemaless_writer(buffer, self.reject_schema, reject)
            values.append(buffer.getvalue())
        stamp = int(time.time() * 1000)
        produce_all(
            self.producer,
            self.topics["reject"],
            values,
            [load_id.encode()] * len(values),
            [stamp] * len(values),
            job.headers,
            job.deliveries,
        )


def _without_overlaps(ranges: list[tuple[str, date | None, date | None]]) -> list[tuple[str, date | None, date | None]]:
    """One symbol per day: where an instrument's ranges overlap (a rename on the boundary day,
    a repeated row), the later-starting range wins from its first day."""
    ordered = sorted(ranges, key=lambda r: (r[1] or date.min, r[0]))
    out: list[tuple[str, date | None, date | None]] = []
    for i, (symbol, start, end) in enumerate(ordered):
        following = ordered[i + 1][1] if i + 1 < len(ordered) else None
        if following is not None and (end is None or end >= following):
            end = following - timedelta(days=1)
        if start is None or end is None or start <= end:
            out.append((symbol, start, end))
    return out


def _seq_base_table(seq_base: dict[tuple[str, str, date], int]) -> pa.Table:
    return pa.table(
        {
            "exchange": pa.array([k[0] for k in seq_base], pa.string()),
            "symbol": pa.array([k[1] for k in seq_base], pa.string()),
            "trading_date": pa.array([k[2] for k in seq_base], pa.date32()),
            "base": pa.array(list(seq_base.values()), pa.int64()),
        }
    )


def _advance_sequences(valid: pa.Table, seq_base: dict[tuple[str, str, date], int]) -> None:
    """Remember the last sequence number assigned per (exchange, symbol, trading day) for the next block."""
    grouped = valid.group_by(["exchange", "symbol", "trading_date"]).aggregate([("sequence_number", "max")])
    for row in grouped.to_pylist():
        seq_base[(row["exchange"], row["symbol"], row["trading_date"])] = row["sequence_number_max"]


def _top_reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{code}: {count}" for code, count in Counter(reasons).most_common(3))
