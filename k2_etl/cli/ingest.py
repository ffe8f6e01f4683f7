"""``k2 load|generate|formats``: vendor files into Kafka, synthetic files, and the formats that read them."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from k2_etl.cli._output import JsonFlag, out, print_json, print_lines, pushed
from k2_etl.config import load_settings
from k2_etl.reports import file_detail, generate_line, load_totals_line

if TYPE_CHECKING:
    from k2_etl.ingest.loader import LoadReport

app = typer.Typer()


def _serve_metrics(port: int) -> None:
    """Expose this process's metrics while it runs; a busy port costs a warning, not the load."""
    if port == 0:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr="127.0.0.1")
    except OSError as exc:
        print(f"k2: warning: cannot serve metrics on 127.0.0.1:{port} ({exc.strerror}); continuing", file=sys.stderr)


def _print_load_report(report: LoadReport) -> None:
    table = Table("file", "type", "status", "read", "produced", "rejected", "rows/s", "detail")
    for f in report.files:
        colour = {"loaded": "green", "skipped": "yellow", "failed": "red"}.get(f.status, "white")
        table.add_row(
            f.file, f.record_type or "", f"[{colour}]{f.status}[/]", f"{f.rows_read:,}", f"{f.rows_produced:,}",
            f"{f.rows_rejected:,}", f"{f.rows_per_second:,.0f}", file_detail(f.message, f.rejected_by_reason),
        )  # fmt: skip
    out.print(table)
    out.print(load_totals_line(report.totals()), markup=False)


@app.command()
def load(
    paths: Annotated[list[Path], typer.Argument(help="CSV files (plain or .gz) or folders (searched recursively).")],
    format_name: Annotated[str, typer.Option("--format", "-f", help="Format name (see `k2 formats`) or a .toml path.")],
    load_date: Annotated[
        str | None,
        typer.Option("--date", help="Trading date of the files, YYYY-MM-DD: rows of other days are rejected."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Load files again even if already loaded.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Load vendor CSV files into Kafka as Avro: validate every row, quarantine the bad ones.

    Exit codes: 0 every file loaded (rows may have been quarantined) or skipped as already loaded;
    1 a file failed entirely; 2 bad arguments or settings (unknown format); 3 broker, registry or catalog
    unreachable (at the end: the records are in Kafka, the report says which, the manifest did not record them).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from k2_etl.formats import load_format
    from k2_etl.ingest.loader import Loader, ManifestNotRecorded
    from k2_etl.instants import parse_day

    settings = load_settings()
    day = parse_day("--date", load_date) if load_date else None
    fmt = load_format(format_name, settings.formats_dir)
    _serve_metrics(settings.ingest_metrics_port)
    from k2_etl.allocator import bound_allocator_memory

    bound_allocator_memory()
    show_progress = sys.stdout.isatty() and not json_output
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} rows"),
        TextColumn("{task.fields[rate]:,.0f} rows/s"),
        TimeElapsedColumn(),
        console=out,
        disable=not show_progress,
    )
    task = progress.add_task("loading", total=None, rate=0.0)
    started = time.perf_counter()

    def on_rows(file: str, rows: int) -> None:
        progress.update(task, advance=rows, description=Path(file).name)
        done = progress.tasks[0].completed
        progress.update(task, rate=done / max(time.perf_counter() - started, 1e-9))

    def on_retry(problem: str) -> None:
        print(f"k2: warning: {problem}; retrying for up to {settings.ingest_manifest_retry_seconds:g} s "
              "(K2_INGEST_MANIFEST_RETRY_SECONDS)", file=sys.stderr, flush=True)  # fmt: skip

    with pushed(settings, "k2_load", fmt.name):
        loader = Loader(settings, fmt, load_date=day, force=force, on_rows=on_rows, on_retry=on_retry)
        unrecorded: ManifestNotRecorded | None = None
        try:
            with progress:
                report = loader.load(paths)
        except ManifestNotRecorded as exc:  # the records are in Kafka: report them, then fail (exit 3)
            report, unrecorded = exc.report, exc
        finally:
            loader.close()
        if json_output:
            print_json(report.to_dict())
        else:
            _print_load_report(report)
        if unrecorded is not None:
            raise unrecorded
        if not report.ok:
            raise typer.Exit(1)


@app.command()
def generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write into (created).")],
    symbols: Annotated[int, typer.Option(help="Number of instruments.")] = 20,
    days: Annotated[int, typer.Option(help="Number of trading days (weekends skipped).")] = 1,
    start: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="First day.")] = datetime(2026, 11, 2),
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same files.")] = 0,
    exchanges: Annotated[str, typer.Option(help="Comma-separated exchange codes; the first is primary.")] = "ASX,CXA",
    trades_per_day: Annotated[int, typer.Option(help="Average trades per symbol per day (all exchanges).")] = 1000,
    quotes_per_trade: Annotated[float, typer.Option(help="Quotes per trade (0: no quote files).")] = 2.0,
    anomalies: Annotated[
        bool, typer.Option(help="Mix in out-of-hours trades, odd quotes and sequence gaps, reorders, resets, repeats.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Write realistic synthetic trades, quotes and reference data in the `k2` format (deterministic by seed)."""
    from k2_etl.ingest.generate import generate as run

    report = run(
        out_dir,
        symbols=symbols,
        days=days,
        start=start.date(),
        seed=seed,
        exchanges=tuple(e.strip().upper() for e in exchanges.split(",") if e.strip()),
        trades_per_day=trades_per_day,
        quotes_per_trade=quotes_per_trade,
        anomalies=anomalies,
    )
    if json_output:
        print_json(report.to_dict())
    else:
        out.print(generate_line(report, out_dir), markup=False)


@app.command()
def formats(json_output: JsonFlag = False) -> None:
    """List the available formats (built-in and K2_FORMATS_DIR) and the files each one matches."""
    from k2_etl.formats import available_formats, read_format

    settings = load_settings()
    listing: list[dict[str, Any]] = []
    for name, path in sorted(available_formats(settings.formats_dir).items()):
        fmt = read_format(path)
        listing.append(
            {
                "name": name,
                "file": str(path),
                "description": fmt.description,
                "records": {spec.type: spec.match for spec in fmt.record},
            }
        )
    if json_output:
        print_json(listing)
        return
    for item in listing:
        lines = [f"{item['name']}: {item['description']}  ({item['file']})"]
        print_lines(lines + [f"  {rtype}: {', '.join(patterns)}" for rtype, patterns in item["records"].items()])
