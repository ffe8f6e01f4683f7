"""How K2's reports read as text, the same in a terminal (the ``k2`` CLI) and in a task log (the
Airflow operators), so that a replay or a compaction is told in one wording wherever it ran.

Each report type carries its own JSON-ready form as ``to_dict()`` (what ``--json`` prints and
what a task returns as XCom); this module is the text side: each function turns one report into
the lines a person reads, and the caller prints or logs them. Terminal tables (component status,
a load's files, query rows) are the CLI's own and stay there.

Only the standard library is imported at run time: operators import this module when Airflow
parses a DAG file, and the report types (pyiceberg, numpy behind them) are needed for the type
checker only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from k2_etl.bootstrap import InitReport
    from k2_etl.ingest.generate import GenerateReport
    from k2_etl.ingest.landing import DayLoad
    from k2_etl.jobs.quality import DayQuality
    from k2_etl.jobs.replay import ReplayReport
    from k2_etl.lake.maintenance import CompactionReport, ExpiryReport, OrphanReport, PartitionCompaction
    from k2_etl.lake.replace import RollbackReport
    from k2_etl.local.demo import Placed
    from k2_etl.schemas.registration import SchemaCheck
    from k2_etl.stream.consumer import Counts


# --- platform -----------------------------------------------------------------------------------
def init_lines(report: InitReport, namespace: str) -> list[str]:
    topics = [f"topic {topic}: {'created' if created else 'unchanged'}" for topic, created in report.topics.items()]
    return topics + [f"table {namespace}.{table.name}: {table.action}" for table in report.tables]


def placed_line(placed: Placed) -> str:
    """Where the demo put one format's sample day."""
    there = f"{len(placed.copied)} file(s) copied" + (f", {placed.unchanged} already there" if placed.unchanged else "")
    return f"sample: {placed.folder}: " + (there if placed.copied else f"all {placed.unchanged} file(s) already there")


# --- ingestion ----------------------------------------------------------------------------------
def file_detail(message: str | None, rejected_by_reason: Mapping[str, int]) -> str:
    """Why a file failed or was skipped, and its rejected rows by reason."""
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(rejected_by_reason.items()))
    return "; ".join(x for x in (message, reasons) if x)


def file_line(result: Mapping[str, Any]) -> str:
    """One file of a load, from its JSON form (``k2 load --json``'s ``files``, a daily load's XCom)."""
    detail = file_detail(result.get("message"), result.get("rejected_by_reason") or {})
    counts = f"{result['rows_read']:,} read, {result['rows_produced']:,} produced, {result['rows_rejected']:,} rejected"
    return f"{result['file']}: {result['status']}, {counts}" + (f" ({detail})" if detail else "")


def load_totals_line(totals: Mapping[str, Any]) -> str:
    """The last line of a load (``LoadReport.totals()``)."""
    return (f"total: {totals['files']} file(s) {totals['files_by_status']}, {totals['rows_read']:,} rows read, "
            f"{totals['rows_produced']:,} produced, {totals['rows_rejected']:,} rejected in {totals['seconds']:.2f} s "
            f"({totals['rows_per_second']:,.0f} rows/s)")  # fmt: skip


def day_load_line(loaded: DayLoad) -> str:
    statuses = [f["status"] for f in loaded.files]
    rows = sum(f["rows_produced"] for f in loaded.files)
    return (f"load: {statuses.count('loaded')} file(s) loaded, {statuses.count('skipped')} already loaded, "
            f"{statuses.count('failed')} failed, {rows:,} rows produced")  # fmt: skip


def generate_line(report: GenerateReport, out_dir: Path) -> str:
    return f"wrote {report.trades:,} trades and {report.quotes:,} quotes in {len(report.files)} files under {out_dir}"


# --- schemas ------------------------------------------------------------------------------------
_SCHEMA_STATES = {
    "new": "not registered yet (new subject)",
    "compatible": "not registered yet (compatible new version)",
    "incompatible": "INCOMPATIBLE",
}


def schema_check_lines(checks: Sequence[SchemaCheck]) -> list[str]:
    lines = []
    for c in checks:
        where = f" (id {c.schema_id}, version {c.version})" if c.schema_id is not None else ""
        if c.state == "registered":
            state = "registered now" if c.changed else "already registered"
        else:
            state = _SCHEMA_STATES[c.state]
        lines.append(f"{c.subject} ({c.record_type}.avsc): {state}{where}")
        lines.extend(f"  {problem}" for problem in c.problems)
    return lines


# --- streaming and quality ----------------------------------------------------------------------
def counts_line(counts: Counts) -> str:
    return f"consumed {counts.consumed:,}, landed {counts.landed:,}, rejected {counts.rejected:,}"


def quality_lines(quality: DayQuality) -> list[str]:
    checks = [f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in quality.checks]
    return [*checks, f"sequence events on {quality.day}: {quality.sequence_events or 'none'}"]


# --- maintenance --------------------------------------------------------------------------------
def partition_line(table: str, p: PartitionCompaction) -> str:
    """One partition compaction finished (progress while a table compacts)."""
    return (f"{table} {p.partition}: {p.outcome}, {p.files_before:,} -> {p.files_after:,} files, "
            f"{p.bytes_before:,} -> {p.bytes_after:,} bytes, {p.duplicates_removed:,} duplicates")  # fmt: skip


def compaction_line(r: CompactionReport) -> str:
    return (f"{r.table}: {r.files_before:,} -> {r.files_after:,} data files, {r.bytes_before:,} -> {r.bytes_after:,} "
            f"bytes in {r.seconds:.1f} s")  # fmt: skip


def expiry_line(r: ExpiryReport) -> str:
    return f"{r.table}: {r.snapshots_before:,} -> {r.snapshots_after:,} snapshots ({len(r.expired):,} expired)"


def orphans_line(r: OrphanReport) -> str:
    return (f"{r.table}: {r.files_seen:,} files, {r.referenced:,} referenced; "
            f"{'would delete' if r.dry_run else 'deleted'} {r.orphans:,} orphans ({r.bytes:,} bytes)")  # fmt: skip


# --- replay and rollback ------------------------------------------------------------------------
def replay_lines(report: ReplayReport) -> list[str]:
    """What the source gave, then the range's checksum before and after (or, dry, as it would be)."""
    r = report.replaced
    assert r is not None, "a replay's report is rendered once the range was replaced (or compared)"
    lines = [
        f"{report.table} [{r.start}, {r.end}) from {report.source}: read {report.records_read:,} records, "
        f"{report.records_in_range:,} in the range, {report.rejected:,} rejected, "
        f"{report.duplicates:,} repeated ids, {report.rolled_back:,} of rolled-back loads left out",
        f"checksum before: {r.before}",
        f"checksum {'would be' if r.dry_run else 'after'}: {r.after} "
        f"({'identical' if r.identical else f'{r.ids_added:,} ids added, {r.ids_changed:,} changed'})",
    ]
    if not r.dry_run:
        lines.append(f"{r.files_replaced:,} files replaced by {r.files_written:,}; "
                     f"snapshot {r.snapshot_before} -> {r.snapshot_after}")  # fmt: skip
    return lines


def rollback_line(r: RollbackReport) -> str:
    return (f"{r.table}: {'would remove' if r.dry_run else 'removed'} {r.rows_removed:,} rows of load {r.load_id}, "
            f"put back {r.rows_restored:,} of later loads (the snapshot before it: {r.snapshot_before_load}); "
            f"{r.files_replaced:,} files replaced by {r.files_written:,}")  # fmt: skip
