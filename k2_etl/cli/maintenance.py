"""``k2 compact|expire|clean-orphans``: table maintenance by hand (the k2_maintenance DAG runs the same)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from k2_etl.cli._output import JsonFlag, print_json, print_lines, pushed, say_for, scope
from k2_etl.config import load_settings
from k2_etl.errors import ConfigError
from k2_etl.reports import compaction_line, expiry_line, orphans_line, partition_line

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from k2_etl.lake.maintenance import PartitionCompaction
    from k2_etl.lake.tables import TableDef

app = typer.Typer()

TablesOpt = Annotated[
    list[str] | None, typer.Option("--table", "-t", help="A table (repeatable; default: every K2 table).")
]


def _maintained(names: list[str] | None) -> list[tuple[TableDef, Table]]:
    """(table definition, loaded table) of the tables named, or of every K2 table; unknown names exit 2."""
    from k2_etl.lake.catalog import open_catalog
    from k2_etl.lake.tables import TABLES, TABLES_BY_NAME

    unknown = [n for n in names or () if n not in TABLES_BY_NAME]
    if unknown:
        raise ConfigError(f"not K2 tables: {', '.join(unknown)} (known: {', '.join(TABLES_BY_NAME)})")
    settings = load_settings()
    catalog = open_catalog(settings)
    chosen = [TABLES_BY_NAME[n] for n in names] if names else list(TABLES)
    return [(d, catalog.load_table((settings.namespace, d.name))) for d in chosen]


def _hours_ago(hours: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)


@app.command("compact")
def compact_tables(
    tables: TablesOpt = None,
    min_files: Annotated[
        int | None, typer.Option("--min-files", min=2, help="Rewrite partitions with at least this many data files.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Rewrite each partition's small files into large sorted ones, dropping duplicate ids.

    Safe while `k2 consume` runs: one commit per partition swaps exactly the files it read for
    the files it wrote, so rows landed meanwhile stay.
    """
    from k2_etl.lake.maintenance import compact

    say = say_for(json_output)
    settings = load_settings()
    threshold = min_files or settings.maintenance_min_files
    reports = []
    with pushed(settings, "k2_compact", scope(tables)):
        for definition, table in _maintained(tables):

            def done(p: PartitionCompaction, name: str = definition.name) -> None:
                say(partition_line(name, p))

            report = compact(table, definition, min_files=threshold, on_partition=done)
            reports.append(report)
            say(compaction_line(report))
    if json_output:
        print_json({"tables": [r.to_dict() for r in reports]})


@app.command("expire")
def expire(
    tables: TablesOpt = None,
    older_than_hours: Annotated[
        float | None,
        typer.Option("--older-than-hours", min=0, help="Default: K2_MAINTENANCE_SNAPSHOT_RETENTION_HOURS."),
    ] = None,
    retain_last: Annotated[
        int | None, typer.Option("--retain-last", min=1, help="Default: K2_MAINTENANCE_RETAIN_SNAPSHOTS.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Expire old snapshots, keeping the newest ones, tagged ones and the consumers' offsets.

    Only metadata changes; files no snapshot needs any more are deleted by `k2 clean-orphans`.
    """
    from k2_etl.lake.maintenance import expire_snapshots

    settings = load_settings()
    before = _hours_ago(settings.maintenance_snapshot_retention_hours if older_than_hours is None else older_than_hours)
    keep = retain_last or settings.maintenance_retain_snapshots
    with pushed(settings, "k2_expire", scope(tables)):
        reports = [expire_snapshots(table, older_than=before, retain_last=keep) for _, table in _maintained(tables)]
    if json_output:
        print_json({"older_than": before.isoformat(), "tables": [r.to_dict() for r in reports]})
    else:
        print_lines(expiry_line(r) for r in reports)


@app.command("clean-orphans")
def clean_orphans(
    tables: TablesOpt = None,
    older_than_hours: Annotated[
        float | None,
        typer.Option(
            "--older-than-hours",
            min=1,
            help="At least 1 (younger files may be commits in flight). Default: K2_MAINTENANCE_ORPHAN_AGE_HOURS.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the orphans; delete nothing.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Delete files under each table's location that no snapshot references, once old enough."""
    from k2_etl.lake.maintenance import remove_orphan_files

    settings = load_settings()
    before = _hours_ago(settings.maintenance_orphan_age_hours if older_than_hours is None else older_than_hours)
    with pushed(settings, "k2_clean_orphans", scope(tables), dry_run):
        reports = [remove_orphan_files(t, older_than=before, dry_run=dry_run) for _, t in _maintained(tables)]
    if json_output:
        print_json({"older_than": before.isoformat(), "tables": [r.to_dict() for r in reports]})
    else:
        print_lines(orphans_line(r) for r in reports)
