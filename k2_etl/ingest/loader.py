"""`k2 load`: vendor CSV files → validated Avro records → Kafka, idempotently.

For each file: its content (and the load's other inputs) gives a
deterministic load id; a load the manifest records as completed is skipped
(unless forced). Otherwise a worker thread reads blocks of lines and turns
them into Avro messages (:mod:`k2_etl.ingest.prepare`: DuckDB validation,
vectorized encoding), while this thread produces the previous block: the
CPU-heavy vector work releases the GIL, so parsing and producing overlap.
Rejected rows go to the dead-letter topic with their file, line, raw text
and reason. Per file, always: rows read = produced + rejected.

The manifest gets a ``started`` row per file before anything is produced and a
``completed``/``failed`` row once everything is delivered. When that last write
fails even after retries (the catalog is down), the records are in Kafka but the
manifest still says ``started``: :class:`ManifestNotRecorded` carries the report
(which files reached Kafka, their offsets) and what to do. A ``started`` row never
blocks a later load: only completed (and rolled back) loads are skipped, so the
same `k2 load` run again produces those files again, and the consumer drops the
records it already landed by event id.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from k2_etl.config import Settings
from k2_etl.errors import K2Error, UnavailableError
from k2_etl.formats import Format, RecordSpec
from k2_etl.ingest.lines import file_checksum, read_blocks
from k2_etl.ingest.prepare import Prepared, Preparer, Source, find_upwards
from k2_etl.ingest.producer import Deliveries, Headers, produce_all
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.manifest import ROLLED_BACK, Manifest, ManifestEntry, now
from k2_etl.observability import (
    INGEST_BYTES,
    INGEST_FILES,
    INGEST_LOAD_SECONDS,
    INGEST_PRODUCE_ERRORS,
    INGEST_ROWS_PRODUCED,
    INGEST_ROWS_READ,
    INGEST_ROWS_REJECTED,
)
from k2_etl.records import PRODUCED_AT_HEADER, encode_reject
from k2_etl.schemas import TOPIC_RECORD_TYPES
from k2_etl.wire.avro_encode import confluent_prefix
from k2_etl.wire.duckdb_conn import connect
from k2_etl.wire.kafka import cluster_metadata, make_producer, topic_ids
from k2_etl.wire.registry import schema_ids

RECORD_ORDER = {"reference_data": 0, "trade": 1, "quote": 2}  # reference data first: others look symbols up
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
    topic_ids: dict[str, str] = field(default_factory=dict)  # the life of each topic the offsets are in
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
    manifest_error: str | None = None  # the final manifest write failed: what, and what to do
    unrecorded: list[str] = field(default_factory=list)  # files whose outcome the manifest lacks

    @property
    def ok(self) -> bool:
        return self.manifest_error is None and all(f.status != "failed" for f in self.files)

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
        manifest: dict[str, Any] = {"recorded": self.manifest_error is None}
        if self.manifest_error is not None:
            manifest.update(error=self.manifest_error, files_not_recorded=self.unrecorded)
        return {"ok": self.ok, "manifest": manifest, "totals": self.totals(),
                "files": [f.to_dict() for f in self.files]}  # fmt: skip


class ManifestNotRecorded(UnavailableError):
    """The load ran (its records are in Kafka) but the manifest could not record how it ended."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__(report.manifest_error or "the load manifest did not record the load", "catalog")
        self.report = report


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


def registered_schema_ids(settings: Settings) -> dict[str, int]:
    """The registry's ids of K2's schemas (which loads frame their messages with); SchemaError
    when one is not registered, UnavailableError when the registry cannot be reached."""
    return schema_ids(settings, TOPIC_RECORD_TYPES)


class LoadIds:
    """Load ids of files of one format and load date (:meth:`of`)."""

    def __init__(self, fmt: Format, load_date: date | None) -> None:
        self.fmt, self.load_date = fmt, load_date
        self._checksums: dict[Path, str] = {}

    def of(self, path: Path, spec: RecordSpec, checksum: str) -> str:
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
        found = find_upwards(path.parent, name)
        if found is None:
            return "none"
        if found not in self._checksums:
            self._checksums[found] = file_checksum(found)
        return self._checksums[found]


def prepared_blocks(
    preparer: Preparer, con: duckdb.DuckDBPyConnection, path: Path, spec: RecordSpec, source: Source
) -> Iterator[Prepared]:
    """A file's blocks, prepared (valid records Avro-encoded and framed, rejects described), in order."""
    spec, statement, lookups = preparer.statement(path, spec)
    for name, table in lookups.items():
        con.register(name, table)
    seq_base: dict[tuple[str, str, date], int] = {}
    for block in read_blocks(path, skip_lines=1 if spec.header else 0):
        yield preparer.prepare(con, spec, statement, block, seq_base, source)


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
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        """``on_rows`` is told of rows read per file (progress); ``on_retry`` when a manifest write
        fails and is retried (a warning worth showing: the load waits for the catalog)."""
        self.settings, self.fmt, self.load_date, self.force = settings, fmt, load_date, force
        self.on_rows = on_rows or (lambda _file, _n: None)
        self.on_retry = on_retry
        metadata = cluster_metadata(settings)  # fail fast (exit 3) when the broker is unreachable
        self.topics = {r.name: r.topic_name(settings) for r in TOPIC_RECORD_TYPES}
        missing = sorted(t for t in self.topics.values() if t not in metadata.topics)
        if missing:
            raise K2Error(f"Kafka topics {', '.join(missing)} do not exist; run `k2 init`")
        self.topic_ids = topic_ids(settings, self.topics.values())
        self.schema_ids = registered_schema_ids(settings)
        self.manifest = Manifest(open_catalog(settings), settings.namespace)
        self.producer = make_producer(settings)
        self.preparer = Preparer(fmt, self.schema_ids, load_date)
        self.load_ids = LoadIds(fmt, load_date)

    # --- public -----------------------------------------------------------------------------
    def load(self, paths: Iterable[Path]) -> LoadReport:
        """Load every file; one worker thread prepares blocks of all files in turn while this one produces.

        Raises :class:`ManifestNotRecorded` (with the report) when the records were produced but
        the manifest could not record the outcome; :class:`UnavailableError` when it could not
        record the start (then nothing was produced).
        """
        started = time.perf_counter()
        paths = list(paths)
        planned, results = expand(paths, self.fmt)
        jobs: list[_Job] = []
        for path, spec in planned:
            checksum = file_checksum(path)
            load_id = self.load_ids.of(path, spec, checksum)
            entry = ManifestEntry(
                load_id, str(path), checksum, self.fmt.name, spec.type, "started", now(),
                load_date=self.load_date, forced=self.force,
            )  # fmt: skip
            jobs.append(_Job(path, spec, FileResult(str(path), spec.type, load_id=load_id), entry))
        previous = self.manifest.latest(*(job.entry.load_id for job in jobs))
        to_load: list[_Job] = []
        for job in jobs:
            done = previous.get(job.entry.load_id)
            if done is not None and done.status in ("completed", ROLLED_BACK) and not self.force:
                job.result.status = "skipped"
                if done.status == ROLLED_BACK:  # its records are not in the tables: nothing to wait for
                    job.result.message = (f"rolled back (load {done.load_id}, {done.finished_at:%Y-%m-%d %H:%M:%S} "
                                          "UTC); use --force to load it again")  # fmt: skip
                else:
                    job.result.offsets, job.result.topic_ids = done.offsets, done.topic_ids
                    job.result.message = (
                        f"already loaded (load {done.load_id}, completed {done.finished_at:%Y-%m-%d %H:%M:%S} UTC); "
                        "use --force to load it again"
                    )
            else:
                to_load.append(job)
        within = self.settings.ingest_manifest_retry_seconds
        self.manifest.append(*(job.entry for job in to_load), within=within, on_retry=self.on_retry)
        self._run(to_load)
        self.producer.flush()
        finished = [self._finish(job) for job in to_load]
        results += [job.result for job in jobs]
        for result in results:
            INGEST_FILES.labels(self.fmt.name, result.status).inc()
        try:
            self.manifest.append(*finished, within=within, on_retry=self.on_retry)
        except UnavailableError as exc:
            raise ManifestNotRecorded(self._unrecorded(results, to_load, str(exc), started)) from None
        return LoadReport(results, time.perf_counter() - started)

    def _unrecorded(self, results: list[FileResult], jobs: list[_Job], error: str, started: float) -> LoadReport:
        """The report of a load whose outcome the manifest could not record, saying what to do."""
        in_kafka = [job for job in jobs if job.result.offsets]
        for job in in_kafka:
            note = "in Kafka (offsets here), but the load manifest did not record it"
            job.result.message = f"{job.result.message}; {note}" if job.result.message else note
        error = (
            f"{error}; {len(in_kafka)} of {len(jobs)} file(s) reached Kafka (the report lists their offsets) and "
            f"stay 'started' in the manifest: once the catalog is back, run the same `k2 load` again (it produces "
            "them again; the consumer drops the records it already landed, by event id)"
        )
        return LoadReport(results, time.perf_counter() - started, error, [str(job.path) for job in jobs])

    def close(self) -> None:
        self.producer.flush(30)

    # --- the pipeline ---------------------------------------------------------------------------
    def _run(self, jobs: list[_Job]) -> None:
        items: queue.Queue[tuple[_Job, Prepared | BaseException] | None] = queue.Queue(maxsize=QUEUE_DEPTH)
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

    def _produce(self, job: _Job, item: Prepared) -> None:
        result, labels = job.result, (self.fmt.name, job.spec.type)
        topic = self.topics[job.spec.type]
        headers = job.headers
        stamped = [*headers, (PRODUCED_AT_HEADER, str(int(time.time() * 1000)).encode())]
        produce_all(self.producer, topic, item.values, item.keys, item.timestamps, headers, job.deliveries, stamped)
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
        result.topic_ids = {t: self.topic_ids[t] for t in result.offsets if t in self.topic_ids}
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
            offsets=result.offsets, topic_ids=result.topic_ids, finished_at=now(), message=result.message,
            forced=entry.forced,
        )  # fmt: skip
        return finished

    def _prepare_all(
        self,
        jobs: list[_Job],
        out: queue.Queue[tuple[_Job, Prepared | BaseException] | None],
        stop: threading.Event,
    ) -> None:
        """Worker thread: every file's blocks → prepared messages, in order; a file's error ends that file only."""
        con = connect()
        try:
            for job in jobs:
                job.started_at = time.perf_counter()
                try:
                    source = Source(job.path, job.entry.load_id, job.ingest_time)
                    for prepared in prepared_blocks(self.preparer, con, job.path, job.spec, source):
                        if stop.is_set():
                            return
                        out.put((job, prepared))
                except Exception as exc:  # this file fails; the others go on
                    error = exc if isinstance(exc, K2Error | OSError) else K2Error(f"{type(exc).__name__}: {exc}")
                    out.put((job, error))
        finally:
            out.put(None)
            con.close()

    def _produce_rejects(self, rejects: list[dict[str, Any]], job: _Job) -> None:
        if not rejects:
            return
        load_id = job.entry.load_id
        prefix = confluent_prefix(self.schema_ids["reject"])
        values = [encode_reject(prefix, reject) for reject in rejects]
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


def _top_reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{code}: {count}" for code, count in Counter(reasons).most_common(3))
