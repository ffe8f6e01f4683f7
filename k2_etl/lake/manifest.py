"""The load manifest: an append-only Iceberg table of what each batch load did.

Each load appends a ``started`` row and then a ``completed`` or ``failed`` row;
the latest row of a ``load_id`` is its state. Append-only because Iceberg
deletes are copy-on-write and loads run concurrently: appends never conflict
in a way that loses a row (a conflicting commit is retried). Airflow and the
consumer read the ``offsets`` of a completed load to tell when it has landed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.expressions import In, Reference
from pyiceberg.expressions.literals import literal
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from k2_etl.errors import K2Error
from k2_etl.lake.tables import TABLES_BY_NAME

TABLE = "load_manifest"


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
    finished_at: datetime | None = None
    message: str | None = None
    forced: bool = False

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["rejected_by_reason"] = json.dumps(self.rejected_by_reason, sort_keys=True)
        row["offsets"] = json.dumps(self.offsets, sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ManifestEntry:
        row = dict(row)
        row["rejected_by_reason"] = json.loads(row["rejected_by_reason"])
        row["offsets"] = json.loads(row["offsets"])
        return cls(**row)


class Manifest:
    """Reads and appends manifest rows through the catalog."""

    def __init__(self, catalog: Catalog, namespace: str) -> None:
        self.catalog = catalog
        self.identifier = (namespace, TABLE)
        self.arrow_schema = TABLES_BY_NAME[TABLE].schema().as_arrow()
        try:
            self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            raise K2Error(f"table {namespace}.{TABLE} does not exist; run `k2 init`") from None

    @retry(
        retry=retry_if_exception_type(CommitFailedException),
        stop=stop_after_attempt(10),
        wait=wait_random_exponential(multiplier=0.05, max=2),
        reraise=True,
    )
    def append(self, *entries: ManifestEntry) -> None:
        """Append rows in one commit (a load writes its files' rows together)."""
        if not entries:
            return
        table = self.catalog.load_table(self.identifier)  # fresh metadata on every try
        table.append(pa.Table.from_pylist([e.to_row() for e in entries], schema=self.arrow_schema))

    def history(self, *load_ids: str) -> dict[str, list[ManifestEntry]]:
        """Every row of each load, oldest first."""
        if not load_ids:
            return {}
        table = self.catalog.load_table(self.identifier)
        # (mypy reads pyiceberg's pydantic expression models' fields, not their __init__)
        wanted = In(Reference("load_id"), {literal(i) for i in load_ids})  # type: ignore[call-arg,arg-type]
        out: dict[str, list[ManifestEntry]] = {}
        for row in table.scan(row_filter=wanted).to_arrow().to_pylist():
            entry = ManifestEntry.from_row(row)
            out.setdefault(entry.load_id, []).append(entry)
        for entries in out.values():
            entries.sort(key=lambda e: (e.finished_at or e.started_at, e.status != "started"))
        return out

    def latest(self, *load_ids: str) -> dict[str, ManifestEntry]:
        """The current state of each load that has one."""
        return {load_id: entries[-1] for load_id, entries in self.history(*load_ids).items()}


def now() -> datetime:
    return datetime.now(UTC)
