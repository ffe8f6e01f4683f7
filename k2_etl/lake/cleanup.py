"""Leftovers of failed writes: the files a write that did not land leaves behind.

A write to an Iceberg table stores its files first (Parquet data files, then manifests and a
manifest list) and only then asks the catalog to point the table at them. When that fails (a
full disk, the catalog down, a conflicting commit) or the writer is killed, no snapshot
references the files; `k2 clean-orphans` would delete them only once older than its window
(at least an hour: a younger unreferenced file may belong to a commit still in flight). Two
kinds of writer clean up after themselves instead:

* **Appends** (:func:`append`): every file of one attempt carries the attempt's id in its name
  (pyiceberg names data files, manifests and the manifest list after the snapshot producer's
  commit uuid). When an attempt fails before the catalog was asked (e.g. a full disk), or the
  catalog refused the commit (``CommitFailedException``, ``ValidationException``: pyiceberg's
  own guarantee that nothing landed), its files are deleted at once. Any other failure of the
  catalog request (a connection lost mid-commit) has an unknown outcome: the commit may even
  still be landing on the catalog's side. Such an attempt is remembered in this process and
  settled after the table's next successful append: that commit is ordered after any commit
  in flight on the table, and each commit takes the table's next sequence number, so if
  another snapshot holds the number the attempt staged, the attempt did not land and its files
  go. If its own snapshot is there, it landed; if neither is (expiry removed the snapshot that
  holds the number), nothing is deleted: a landed snapshot's files stay referenced by the later
  ones after it expires, so only `k2 clean-orphans`, which reads every snapshot, may tell. The
  same look removes files that writer threads of an attempt that failed while writing finished
  after the failure was seen. A process that exits before that leaves them to `k2 clean-orphans`.
* **Runs that may be killed** (compaction: :func:`recorded_run`): a run writes a small marker
  file under the table's location, ``k2-runs/<kind>-<run id>.json``, naming the process (pid,
  its start time, the kernel boot and pid namespace) and every id its files are named after
  (recorded before the first such file is written); the marker goes when the run ends
  normally. :func:`dead_runs` tells which markers belong to processes that are certainly gone
  (same boot and pid namespace, and that pid is not running the same process any more): their
  unreferenced files can never be committed by anyone, so `k2 clean-orphans` and the next
  `k2 compact` delete them at any age. A marker written on another machine or container cannot
  be checked and is left to the age window, as is the metadata JSON a killed commit may have
  written (the catalog names that file, not the run).

Deleting only files named after one attempt or one dead run keeps every other writer's files
safe: nothing else carries those ids.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import psutil
import pyarrow as pa
import pyarrow.fs as pafs
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io.pyarrow import PyArrowFileIO, _check_pyarrow_schema_compatible, _dataframe_to_data_files
from pyiceberg.table import DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE, Table, TableProperties
from pyiceberg.table.refs import MAIN_BRANCH
from pyiceberg.table.update.validate import ValidationException
from pyiceberg.utils.config import Config
from pyiceberg.utils.properties import property_as_bool

log = logging.getLogger(__name__)

RUNS_FOLDER = "k2-runs"  # under a table's location: markers of runs in flight

#: Failures that prove a commit did not land (pyiceberg deletes its manifests on these too).
REFUSED = (CommitFailedException, ValidationException)


@dataclass
class Attempt:
    """One append attempt: the id its files are named after, and its snapshot once staged."""

    table: str  # the table's uuid
    name: str  # namespace.table, for messages
    write_id: uuid.UUID
    snapshot_id: int | None = None  # None: it failed before a snapshot was staged (it cannot have landed)
    sequence_number: int | None = None  # the staged snapshot's (of the last try, when pyiceberg retried)
    written: list[str] = field(default_factory=list)  # data files it is known to have written


_unsettled: dict[str, list[Attempt]] = {}  # table uuid -> failed attempts to look at again
_lock = threading.Lock()


def append(table: Table, data: pa.Table, snapshot_properties: dict[str, str] | None = None) -> None:
    """``table.append(data, snapshot_properties=...)``, except that a failed attempt removes its files.

    Does what pyiceberg's ``Transaction.append`` does (same checks, same snapshot producer), with
    the producer's commit uuid known before any file is written. Honours the table object's
    commit properties (e.g. pyiceberg's own retries turned off). Raises what the append raised.
    """
    transaction = table.transaction()
    update = transaction.update_snapshot(snapshot_properties=snapshot_properties or {})
    merge = property_as_bool(
        transaction.table_metadata.properties,
        TableProperties.MANIFEST_MERGE_ENABLED,
        TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT,
    )
    producer = update.merge_append() if merge else update.fast_append()
    attempt = Attempt(str(table.metadata.table_uuid), ".".join(table.name()), producer.commit_uuid)
    try:
        with producer:
            if data.num_rows > 0:
                _check_pyarrow_schema_compatible(
                    transaction.table_metadata.schema(),
                    provided_schema=data.schema,
                    downcast_ns_timestamp_to_us=Config().get_bool(DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE) or False,
                    format_version=transaction.table_metadata.format_version,
                )
                for data_file in _dataframe_to_data_files(
                    transaction.table_metadata, data, table.io, write_uuid=producer.commit_uuid
                ):
                    attempt.written.append(data_file.file_path)
                    producer.append_data_file(data_file)
        staged = transaction.table_metadata.snapshot_by_name(MAIN_BRANCH)
        attempt.snapshot_id = staged.snapshot_id if staged is not None else None
        transaction.commit_transaction()
    except Exception as exc:
        if attempt.snapshot_id is not None:  # pyiceberg's retries keep the snapshot id and restage its number
            staged = transaction.table_metadata.snapshot_by_id(attempt.snapshot_id)
            attempt.sequence_number = staged.sequence_number if staged is not None else None
        try:
            _failed(table, attempt, exc)
        except Exception:  # cleaning up must never hide what failed
            log.warning("%s: could not clean up after a failed append", attempt.name, exc_info=True)
        raise
    try:
        settle(table)
    except Exception:  # the append landed: a failure to clean up earlier attempts must not say otherwise
        log.warning("%s: could not clean up after earlier failed appends", attempt.name, exc_info=True)


def _failed(table: Table, attempt: Attempt, exc: Exception) -> None:
    """Remove a failed attempt's files if it certainly did not land; otherwise remember it."""
    if attempt.snapshot_id is None:  # failed while writing files: nothing was asked of the catalog
        _remove(table, [attempt])
        _remember(attempt)  # writer threads of the attempt may still finish a file: look again later
    elif isinstance(exc, REFUSED):  # pyiceberg removed the manifests; the data files are all known
        _remove(table, [attempt], listing=False)
    else:  # the outcome is unknown: the commit may still be landing on the catalog's side
        log.warning("%s: an append failed with %s and may or may not have landed; its files are removed "
                    "after the next successful append if it did not", attempt.name, type(exc).__name__)  # fmt: skip
        _remember(attempt)


def _remember(attempt: Attempt) -> None:
    with _lock:
        _unsettled.setdefault(attempt.table, []).append(attempt)


def settle(table: Table) -> int:
    """Remove the files of this table's earlier failed attempts that did not land, judged by the
    table's metadata (fresh: call it right after a successful commit). The files removed."""
    with _lock:
        attempts = _unsettled.pop(str(table.metadata.table_uuid), [])
    if not attempts:
        return 0
    gone = [a for a in attempts if _did_not_land(table, a)]
    unknown = [a for a in attempts if a not in gone and table.metadata.snapshot_by_id(a.snapshot_id or 0) is None]
    if unknown:
        log.info("%s: %d failed append(s) of unknown outcome left to `k2 clean-orphans` (their snapshot "
                 "number is no longer in the metadata)", attempts[0].name, len(unknown))  # fmt: skip
    return _remove(table, gone)


def _did_not_land(table: Table, attempt: Attempt) -> bool:
    """Certainly not: it never staged a snapshot, or another snapshot holds the sequence number it
    staged (each commit takes the next number, so had it landed, the number would be its own).
    Its snapshot merely missing is not enough: snapshot expiry removes landed snapshots too, and
    their data files stay referenced by the later ones."""
    if attempt.snapshot_id is None:
        return True
    if table.metadata.snapshot_by_id(attempt.snapshot_id) is not None or attempt.sequence_number is None:
        return False
    if table.metadata.format_version < 2:  # format 1 numbers no snapshots: nothing to tell by
        return False
    return any(
        s.sequence_number == attempt.sequence_number and s.snapshot_id != attempt.snapshot_id
        for s in table.metadata.snapshots
    )


def _remove(table: Table, attempts: list[Attempt], *, listing: bool = True) -> int:
    """Delete the data files ``attempts`` wrote and (``listing``) every file under the table's
    location named after one of them (files they had not reported yet, manifests)."""
    if not attempts:
        return 0
    named = files_named(table, {str(a.write_id) for a in attempts}) if listing else []
    paths = {_spelling(p): p for p in [*(p for a in attempts for p in a.written), *named]}
    removed = 0
    for path in sorted(paths.values()):
        with contextlib.suppress(FileNotFoundError):
            table.io.delete(path)
            removed += 1
    if removed:
        log.info("%s: removed %d file(s) of %d failed append(s)", attempts[0].name, removed, len(attempts))
    return removed


def _spelling(location: str) -> tuple[str, str]:
    """One spelling of a location, to count a file listed and known once."""
    parts = urlsplit(location)
    return parts.netloc, posixpath.normpath(unquote(parts.path))


def files_named(table: Table, ids: Iterable[str]) -> list[str]:
    """Files under the table's location whose name contains one of ``ids`` (empty when the
    table's storage cannot be listed through pyarrow)."""
    wanted = set(ids)
    if not wanted:
        return []
    return [path for path in _listing(table, table.location()) if any(i in PurePosixPath(path).name for i in wanted)]


def _listing(table: Table, location: str) -> list[str]:
    """Every file under ``location`` as a location the table's FileIO takes."""
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        return []
    scheme, netloc, root = io.parse_location(location, io.properties)
    fs = io.fs_by_scheme(scheme, netloc)
    selector = pafs.FileSelector(root.rstrip("/"), recursive=True, allow_not_found=True)
    # pyarrow lists local paths (/...) and object keys with their bucket (bucket/key); HDFS without the host
    base = f"{scheme}://{netloc}" if scheme in ("hdfs", "viewfs") else f"{scheme}://"
    return [base + info.path for info in fs.get_file_info(selector) if info.type == pafs.FileType.File]


# --- runs that may be killed ----------------------------------------------------------------


class Run:
    """A run recorded in its marker file, with the ids its files are named after."""

    def __init__(self, table: Table, kind: str) -> None:
        self.table = table
        self.id = uuid.uuid4()
        self.path = f"{table.location().rstrip('/')}/{RUNS_FOLDER}/{kind}-{self.id}.json"
        self.ids: list[str] = []
        self.marker = {"kind": kind, "run": str(self.id), "started_at": datetime.now(UTC).isoformat(),
                       **_this_process()}  # fmt: skip
        self._save()

    def new_id(self) -> uuid.UUID:
        """A new id for files of this run (a write uuid, a commit uuid), recorded before any file has it."""
        new = uuid.uuid4()
        self.ids.append(str(new))
        self._save()
        return new

    def _save(self) -> None:
        with self.table.io.new_output(self.path).create(overwrite=True) as out:
            out.write(json.dumps({**self.marker, "ids": self.ids}).encode())

    def end(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.table.io.delete(self.path)


@contextlib.contextmanager
def recorded_run(table: Table, kind: str) -> Iterator[Run]:
    """A run of ``kind`` on ``table`` (see the module docstring): its marker is written first and
    removed when the block ends normally; on an exception it stays, so that once this process is
    gone the run's unreferenced files are removed."""
    run = Run(table, kind)
    yield run
    run.end()


def dead_runs(table: Table) -> set[str]:
    """The ids (run ids, and the ids of their files) of the runs recorded under the table whose
    process is certainly gone: unreferenced files named after them can be deleted at any age."""
    dead: set[str] = set()
    for path in _listing(table, f"{table.location().rstrip('/')}/{RUNS_FOLDER}"):
        if not path.endswith(".json"):
            continue
        try:
            with table.io.new_input(path).open() as handle:
                marker = json.loads(handle.read())
            ids = {str(uuid.UUID(i)) for i in [marker["run"], *marker.get("ids", [])]}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours: leave it to the age window
        if _is_dead(marker):
            dead |= ids
    return dead


def _this_process() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "create_time": psutil.Process().create_time(),
        "boot_id": _boot_id(),
        "pid_namespace": _pid_namespace(),
        "host": os.uname().nodename,
    }


def _is_dead(marker: dict[str, Any]) -> bool:
    """True only when the marker's process is certainly not running: it was started on this
    kernel boot, in this pid namespace (pids compare), and its pid is free, a zombie, or a newer
    process. Anything else (another machine or container, no /proc) counts as alive."""
    if _boot_id() is None or _pid_namespace() is None:
        return False
    if marker.get("boot_id") != _boot_id() or marker.get("pid_namespace") != _pid_namespace():
        return False
    try:
        process = psutil.Process(int(marker["pid"]))
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        return abs(process.create_time() - float(marker["create_time"])) >= 1.0  # the pid was reused
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
