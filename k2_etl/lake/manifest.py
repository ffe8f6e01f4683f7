"""The load manifest: an append-only Iceberg table of what each batch load did.

Each load appends a ``started`` row and then a ``completed`` or ``failed`` row,
and ``k2 rollback`` a ``rolled_back`` row; the latest row of a ``load_id`` is its state. Append-only because Iceberg
deletes are copy-on-write and loads run concurrently: appends never conflict
in a way that loses a row (a conflicting commit is retried). Airflow and the
consumer read the ``offsets`` of a completed load to tell when it has landed.

A write rides out catalog failures (an outage, conflicting commits) for a while, retrying with
backoff; a failed attempt's files are removed (:mod:`k2_etl.lake.cleanup`). Past the deadline,
or on a read, a catalog that cannot be reached is an :class:`~k2_etl.errors.UnavailableError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.expressions import GreaterThan, In, Reference
from pyiceberg.expressions.literals import literal
from pyiceberg.table import Table
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from k2_etl.errors import K2Error, UnavailableError
from k2_etl.lake import cleanup
from k2_etl.lake.catalog import CATALOG_FAILURES, catalog_failure
from k2_etl.lake.tables import TABLES_BY_NAME

TABLE = "load_manifest"
ROLLED_BACK = "rolled_back"
RETRY_SECONDS = 30.0  # how long a write retries by default (`k2 load`: K2_INGEST_MANIFEST_RETRY_SECONDS)
_RETRIED: tuple[type[Exception], ...] = (CommitFailedException, *CATALOG_FAILURES)


@dataclass
class ManifestEntry:
    load_id: str
    file: str
    checksum: str
    format: str
    record_type: str
    status: str
    started_at: datetime
    load_date: date | None = None
    rows_read: int = 0
    rows_produced: int = 0
    rows_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    offsets: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    topic_ids: dict[str, str] = field(default_factory=dict)  # which life of each topic the offsets are in
    finished_at: datetime | None = None
    message: str | None = None
    forced: bool = False

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["rejected_by_reason"] = json.dumps(self.rejected_by_reason, sort_keys=True)
        row["offsets"] = json.dumps(self.offsets, sort_keys=True)
        row["topic_ids"] = json.dumps(self.topic_ids, sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ManifestEntry:
        row = dict(row)
        row["rejected_by_reason"] = json.loads(row["rejected_by_reason"])
        row["offsets"] = json.loads(row["offsets"])
        row["topic_ids"] = json.loads(row.get("topic_ids") or "{}")  # none before K2 recorded them
        return cls(**row)


class Manifest:
    """Reads and appends manifest rows through the catalog."""

    def __init__(self, catalog: Catalog, namespace: str) -> None:
        self.catalog = catalog
        self.identifier = (namespace, TABLE)
        self.name = f"{namespace}.{TABLE}"
        self.arrow_schema = TABLES_BY_NAME[TABLE].schema().as_arrow()
        try:
            self._table()
        except NoSuchTableError:
            raise K2Error(f"table {namespace}.{TABLE} does not exist; run `k2 init`") from None

    def _table(self) -> Table:
        """The table, freshly loaded; :class:`UnavailableError` when the catalog cannot be reached."""
        try:
            return self.catalog.load_table(self.identifier)
        except CATALOG_FAILURES as exc:
            raise UnavailableError(f"cannot read the load manifest {self.name}: {catalog_failure(self.catalog, exc)}",
                                   "catalog") from None  # fmt: skip

    def append(
        self,
        *entries: ManifestEntry,
        within: float = RETRY_SECONDS,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        """Append rows in one commit (a load writes its files' rows together).

        Conflicting commits and catalog failures are retried with backoff for ``within`` seconds;
        ``on_retry`` is told once, at the first retry, what failed. Then :class:`UnavailableError`.
        """
        if not entries:
            return
        rows = pa.Table.from_pylist([e.to_row() for e in entries], schema=self.arrow_schema)

        def failed(state: RetryCallState) -> None:
            if state.attempt_number == 1 and on_retry is not None and state.outcome is not None:
                on_retry(self._failure(state.outcome.exception()))

        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(_RETRIED),
                stop=stop_after_delay(within),
                wait=wait_random_exponential(multiplier=0.05, max=2),
                before_sleep=failed,
                reraise=True,
            ):
                with attempt:
                    table = self.catalog.load_table(self.identifier)  # fresh metadata on every try
                    cleanup.append(table, rows)
        except _RETRIED as exc:
            raise UnavailableError(f"{self._failure(exc)} (retried for {within:g} s)", "catalog") from None

    def _failure(self, exc: BaseException | None) -> str:
        if isinstance(exc, CommitFailedException):
            return f"cannot write the load manifest {self.name}: other commits kept conflicting with it"
        return f"cannot write the load manifest {self.name}: {catalog_failure(self.catalog, exc or Exception())}"

    def history(self, *load_ids: str) -> dict[str, list[ManifestEntry]]:
        """Every row of each load, oldest first."""
        if not load_ids:
            return {}
        table = self._table()
        # (mypy reads pyiceberg's pydantic expression models' fields, not their __init__)
        wanted = In(Reference("load_id"), {literal(i) for i in load_ids})  # type: ignore[call-arg,arg-type]
        out: dict[str, list[ManifestEntry]] = {}
        for row in table.scan(row_filter=wanted).to_arrow().to_pylist():
            entry = ManifestEntry.from_row(row)
            out.setdefault(entry.load_id, []).append(entry)
        for entries in out.values():
            entries.sort(key=_order)
        return out

    def after(self, started: datetime) -> list[ManifestEntry]:
        """The latest state of every load started after ``started``, oldest first."""
        table = self._table()
        since = GreaterThan("started_at", started.isoformat())  # type: ignore[call-arg,arg-type]
        latest: dict[str, ManifestEntry] = {}
        for row in table.scan(row_filter=since).to_arrow().to_pylist():
            entry = ManifestEntry.from_row(row)
            known = latest.get(entry.load_id)
            if known is None or _order(entry) >= _order(known):
                latest[entry.load_id] = entry
        return sorted(latest.values(), key=lambda e: e.started_at)

    def rolled_back(self) -> set[str]:
        """The loads whose latest state is ``rolled_back`` (replays leave their records out)."""
        table = self._table()
        rows = table.scan(selected_fields=("load_id", "status", "started_at", "finished_at")).to_arrow().to_pylist()
        latest: dict[str, tuple[Any, bool, str]] = {}
        for row in rows:
            order = (row["finished_at"] or row["started_at"], row["status"] != "started", row["status"])
            if row["load_id"] not in latest or order[:2] >= latest[row["load_id"]][:2]:
                latest[row["load_id"]] = order
        return {load_id for load_id, (_, _, status) in latest.items() if status == ROLLED_BACK}

    def latest(self, *load_ids: str) -> dict[str, ManifestEntry]:
        """The current state of each load that has one."""
        return {load_id: entries[-1] for load_id, entries in self.history(*load_ids).items()}


def _order(entry: ManifestEntry) -> tuple[datetime, bool]:
    """Rows of one load in the order they happened (a start and its end can share a time)."""
    return (entry.finished_at or entry.started_at, entry.status != "started")


def now() -> datetime:
    return datetime.now(UTC)
