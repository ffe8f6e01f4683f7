"""``k2 replay|rollback``: re-process a time range, or undo a batch load (the k2_replay DAG runs the first)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from k2_etl.cli._output import JsonFlag, print_json, print_lines, pushed, scope
from k2_etl.config import load_settings
from k2_etl.reports import replay_lines, rollback_line

app = typer.Typer()


@app.command("replay")
def replay_range(
    table: Annotated[str, typer.Option("--table", "-t", help="trades or quotes.")],
    start: Annotated[str, typer.Option("--start", help="From (YYYY-MM-DD, ISO 8601 or epoch; UTC unless it says).")],
    end: Annotated[str, typer.Option("--end", help="To, exclusive (the same forms).")],
    source: Annotated[str, typer.Option("--source", help="kafka (the topic) or landing (the vendor files).")] = "kafka",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Re-process and compare; change nothing.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Re-process a time range from Kafka or the landing files and replace exactly that range.

    One snapshot swaps the range's rows for the re-processed ones; other rows stay. Prints the
    range's checksum before and after. Never removes an id the table holds (it fails instead).
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from k2_etl.instants import parse_time
    from k2_etl.jobs.replay import replay

    settings = load_settings()
    begin, finish = parse_time("--start", start), parse_time("--end", end)
    show = not json_output and sys.stderr.isatty()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=Console(stderr=True),
                  disable=not show) as bar:  # fmt: skip
        task = bar.add_task(f"reading {source}", total=None)
        seen = [0]

        def advance(n: int) -> None:
            seen[0] += n
            bar.update(task, description=f"reading {source}: {seen[0]:,} records")

        with pushed(settings, "k2_replay", table, dry_run):
            report = replay(settings, table, begin, finish, source=source, dry_run=dry_run,  # type: ignore[arg-type]
                            on_records=advance)  # fmt: skip
    if json_output:
        print_json(report.to_dict())
    else:
        print_lines(replay_lines(report))


@app.command("rollback")
def rollback_load(
    load_id: Annotated[str, typer.Argument(help="The load to undo (`k2 load --json` prints each file's load_id).")],
    tables: Annotated[
        list[str] | None,
        typer.Option("--table", "-t", help="Only this table (repeatable; default: every table the load fed)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count the rows that would go; change nothing.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Undo a batch load: each table it produced into returns to its snapshot before the load,
    keeping what anything else landed since (the consumer's offsets do not move back).

    Load the corrected file afterwards with `k2 load` (`--force` for the same content).
    """
    from k2_etl.jobs.rollback import rollback

    settings = load_settings()
    with pushed(settings, "k2_rollback", scope(tables), dry_run):
        reports = rollback(settings, load_id, tables=tables, dry_run=dry_run)
    if json_output:
        print_json({"load_id": load_id, "tables": [r.to_dict() for r in reports]})
    else:
        print_lines(rollback_line(r) for r in reports)
