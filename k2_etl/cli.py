"""The ``k2`` command. Thin: parse arguments, call into the packages, print.

Errors K2 raises on purpose (:class:`~k2_etl.errors.K2Error`) are printed as
one line on stderr and become the exit code; see the README for the codes.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from k2_etl import __version__
from k2_etl.config import Settings, load_settings
from k2_etl.errors import ComponentError, ConfigError, K2Error, QueryError

if TYPE_CHECKING:
    from k2_etl.bootstrap import InitReport

app = typer.Typer(
    help="K2: market-data lakehouse ETL. Vendor CSV → Kafka (Avro) → Iceberg → DuckDB/API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
schemas_app = typer.Typer(help="Register and check K2's Avro schemas in the schema registry.", no_args_is_help=True)
registry_app = typer.Typer(help="The local Confluent-compatible schema registry.", no_args_is_help=True)
query_app = typer.Typer(
    help="Query the tables like the REST API does: a table on the terminal, --json, or every page to a file.",
    no_args_is_help=True,
)
app.add_typer(schemas_app, name="schemas")
app.add_typer(query_app, name="query")
app.add_typer(registry_app, name="registry")

# Not a terminal (pipes, CI logs): do not squeeze tables into 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts) instead of text.")]


def _print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def _say(json_output: bool) -> Any:
    """Progress lines go to stdout as text, or to stderr when stdout carries JSON."""
    if json_output:
        return lambda line: print(line, file=sys.stderr)
    return lambda line: out.print(line, markup=False)


def _version(value: bool) -> None:
    if value:
        out.print(f"k2 {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Settings come from K2_* environment variables and an optional k2.toml (see `k2 config`)."""


# --- local platform -----------------------------------------------------------------


def _status_rows(settings: Settings) -> list[Any]:
    from k2_etl.local.components import platform
    from k2_etl.local.supervisor import status

    return [status(settings, c) for c in platform(settings)]


def _print_status(rows: Sequence[Any]) -> None:
    table = Table("component", "state", "health", "address", "pid", "ms", "detail")
    for row in rows:
        health = "[green]healthy[/]" if row.healthy else "[red]unhealthy[/]"
        table.add_row(
            row.name,
            row.state,
            health,
            row.address,
            str(row.pid or ""),
            "" if row.latency_ms is None else f"{row.latency_ms:g}",
            row.detail,
        )
    out.print(table)


def _airflow_login(settings: Settings) -> str:
    """Where the local Airflow's UI is and how to log in (the password `airflow standalone` generated)."""
    from k2_etl.local.airflow import airflow_url, login, password_file

    try:
        user, password = login(settings)
    except ComponentError:
        return f"Airflow UI: {airflow_url(settings)}   login: see {password_file(settings)}"
    return f"Airflow UI: {airflow_url(settings)}   login: {user} / {password}"


@app.command()
def up(json_output: JsonFlag = False) -> None:
    """Start the local platform (broker, schema registry), `k2 init`, register K2's schemas, then start
    the streaming consumer, the REST API and Airflow (K2_AIRFLOW_ENABLED; `airflow standalone` with
    K2's DAGs, unpaused).

    Harmless when already up. Processes run in the background; pid files and
    logs are under K2_HOME (run/, logs/). Stop them with `k2 down`. When a
    component cannot start, the ones this run started are stopped again.
    """
    from k2_etl.local.components import platform
    from k2_etl.local.supervisor import stopped_on_failure

    settings = load_settings()
    say = _say(json_output)
    components = [c for c in platform(settings) if c.command is not None]
    with stopped_on_failure(settings, say) as start:
        for component in (c for c in components if not c.after_init):
            start(component)
        report = _init_for_up(settings, say)
        for component in (c for c in components if c.after_init):
            start(component)
    rows = _status_rows(settings)
    if json_output:
        _print_json(
            {
                "healthy": all(r.healthy for r in rows),
                "components": [r.to_dict() for r in rows],
                "init": report.to_dict(),
            }
        )
    else:
        _print_status(rows)
        if settings.airflow_enabled:
            out.print(_airflow_login(settings), markup=False)
        out.print(f"logs: {settings.log_dir}   stop with: k2 down")
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


def _init_for_up(settings: Settings, say: Any) -> InitReport:
    """`k2 init`, then `k2 schemas register`: a platform that is up can load, and `k2 status` can
    call a missing subject a fault. A schema the registry refuses (an .avsc changed incompatibly)
    does not stop the platform: the line says why, and the status what is missing."""
    from k2_etl.bootstrap import init_platform
    from k2_etl.errors import SchemaError
    from k2_etl.schemas.registration import register_schemas

    report = init_platform(settings)
    created = [n for n, c in report.topics.items() if c] + [t.name for t in report.tables if t.action != "unchanged"]
    say("init: " + (f"created or evolved {', '.join(created)}" if created else "topics and tables already in place"))
    try:
        changed = [check.subject for check in register_schemas(settings) if check.changed]
        say("schemas: " + (f"registered {', '.join(changed)}" if changed else "already registered"))
    except SchemaError as exc:
        say(f"schemas: not registered: {exc}")
    return report


@app.command()
def down(json_output: JsonFlag = False) -> None:
    """Stop every process `k2 up` started (SIGTERM, Airflow SIGINT; SIGKILL after 15 s). Harmless when down."""
    from k2_etl.local.components import platform
    from k2_etl.local.supervisor import stop

    settings = load_settings()
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if not json_output:
            out.print(line, markup=False)

    # Airflow too when K2_AIRFLOW_ENABLED is now false: it may have been started before.
    for component in reversed(platform(settings, include_disabled=True)):
        stop(settings, component, say)
    if json_output:
        _print_json({"messages": lines})


@app.command()
def status(json_output: JsonFlag = False) -> None:
    """Show each component's health. Exit code 0 when all are healthy, 1 otherwise."""
    settings = load_settings()
    rows = _status_rows(settings)
    healthy = all(r.healthy for r in rows)
    if json_output:
        _print_json({"healthy": healthy, "components": [r.to_dict() for r in rows]})
    else:
        _print_status(rows)
    if not healthy:
        raise typer.Exit(1)


@app.command()
def init(json_output: JsonFlag = False) -> None:
    """Create the Kafka topics and the Iceberg namespace and tables (idempotent)."""
    from k2_etl.bootstrap import init_platform

    settings = load_settings()
    report = init_platform(settings)
    if json_output:
        _print_json(report.to_dict())
        return
    for topic, created in report.topics.items():
        out.print(f"topic {topic}: {'created' if created else 'unchanged'}", markup=False)
    for table in report.tables:
        out.print(f"table {settings.namespace}.{table.name}: {table.action}", markup=False)


@app.command("config")
def show_config(json_output: JsonFlag = False) -> None:
    """Print the effective settings (environment, k2.toml, defaults); secrets masked."""
    values = load_settings().public_dict()
    if json_output:
        _print_json(values)
        return
    for name, value in values.items():
        out.print(f"{name}={'' if value is None else value}", markup=False)


@app.command()
def demo(
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the run succeeds or fails.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 600.0,
    json_output: JsonFlag = False,
) -> None:
    """Put the bundled sample day in the landing folder and run k2_daily_load for it in the local Airflow.

    Run it after `k2 up` and `k2 schemas register` (`make run` does). Idempotent: files already in
    place are left alone and the run (id k2_sample__<day>) is triggered once. With
    K2_AIRFLOW_ENABLED=false the day is loaded directly, as the DAG's load step does.
    Exit code 1 when the run (or the load) fails.
    """
    from k2_etl.config import format_host_port
    from k2_etl.local.demo import place_sample, run_id, sample_day, sample_symbol, trigger_daily_load, wait_for_run

    settings = load_settings()
    say = _say(json_output)
    day = sample_day()
    placed = place_sample(settings)
    for p in placed:
        there = f"{len(p.copied)} file(s) copied" + (f", {p.unchanged} already there" if p.unchanged else "")
        say(f"sample: {p.folder}: " + (there if p.copied else f"all {p.unchanged} file(s) already there"))
    result: dict[str, Any] = {"day": day.isoformat(), "placed": [p.to_dict() for p in placed]}
    if settings.airflow_enabled:
        from k2_etl.local.airflow import AirflowApi, airflow_url

        with AirflowApi(settings) as airflow:
            run = trigger_daily_load(airflow, day, say)
            if wait:
                run = wait_for_run(airflow, run, timeout, say)
        ok = run["state"] != "failed"
        result["run"] = {key: run.get(key) for key in ("dag_id", "dag_run_id", "state", "start_date", "end_date")}
        result["run"]["url"] = f"{airflow_url(settings)}/dags/{run['dag_id']}/runs/{run_id(day)}"
    else:
        from k2_etl.ingest.landing import day_files, load_day

        say("airflow: off (K2_AIRFLOW_ENABLED=false); loading the day here, as k2_daily_load's load step does")
        loaded = load_day(settings, day, day_files(settings, day))
        ok = loaded.ok
        statuses = [f["status"] for f in loaded.files]
        rows = sum(f["rows_produced"] for f in loaded.files)
        say(f"load: {statuses.count('loaded')} file(s) loaded, {statuses.count('skipped')} already loaded, "
            f"{statuses.count('failed')} failed, {rows:,} rows produced")  # fmt: skip
        result["load"] = loaded.to_dict()
    api = f"http://{format_host_port(settings.api_host, settings.api_port)}"
    result["query"] = f"{api}/v1/summary/{sample_symbol()}/{day}"
    if json_output:
        _print_json(result)
    else:
        if settings.airflow_enabled:
            out.print(f"the run: {result['run']['url']}", markup=False)
            out.print(_airflow_login(settings), markup=False)
        out.print(f"API: {api}/docs   e.g. curl {result['query']}", markup=False)
    if not ok:
        where = (f"its task logs are at {result['run']['url']} (clear the run there to run it again)"
                 if "run" in result else "see the load report above")  # fmt: skip
        raise ComponentError(f"the daily load of the sample day {day} failed; {where}")


# --- ingestion ---------------------------------------------------------------------------------


def _serve_metrics(port: int) -> None:
    """Expose this process's metrics while it runs; a busy port costs a warning, not the load."""
    if port == 0:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr="127.0.0.1")
    except OSError as exc:
        print(f"k2: warning: cannot serve metrics on 127.0.0.1:{port} ({exc.strerror}); continuing", file=sys.stderr)


def _print_load_report(report: Any) -> None:
    table = Table("file", "type", "status", "read", "produced", "rejected", "rows/s", "detail")
    for f in report.files:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(f.rejected_by_reason.items()))
        detail = "; ".join(x for x in (f.message, reasons) if x)
        colour = {"loaded": "green", "skipped": "yellow", "failed": "red"}.get(f.status, "white")
        table.add_row(
            f.file, f.record_type or "", f"[{colour}]{f.status}[/]", f"{f.rows_read:,}", f"{f.rows_produced:,}",
            f"{f.rows_rejected:,}", f"{f.rows_per_second:,.0f}", detail,
        )  # fmt: skip
    out.print(table)
    t = report.totals()
    out.print(
        f"total: {t['files']} file(s) {t['files_by_status']}, {t['rows_read']:,} rows read, "
        f"{t['rows_produced']:,} produced, {t['rows_rejected']:,} rejected in {t['seconds']:.2f} s "
        f"({t['rows_per_second']:,.0f} rows/s)",
        markup=False,
    )


@app.command()
def load(
    paths: Annotated[list[Path], typer.Argument(help="CSV files (plain or .gz) or folders (searched recursively).")],
    format_name: Annotated[str, typer.Option("--format", "-f", help="Format name (see `k2 formats`) or a .toml path.")],
    load_date: Annotated[
        datetime | None,
        typer.Option(
            "--date", formats=["%Y-%m-%d"], help="Trading date of the files: rows of other days are rejected."
        ),
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

    settings = load_settings()
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

    loader = Loader(settings, fmt, load_date=load_date.date() if load_date else None, force=force, on_rows=on_rows,
                    on_retry=on_retry)  # fmt: skip
    unrecorded: ManifestNotRecorded | None = None
    try:
        with progress:
            report = loader.load(paths)
    except ManifestNotRecorded as exc:  # the records are in Kafka: report them, then fail (exit 3)
        report, unrecorded = exc.report, exc
    finally:
        loader.close()
    if json_output:
        _print_json(report.to_dict())
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
        _print_json({"files": report.files, "trades": report.trades, "quotes": report.quotes})
    else:
        out.print(
            f"wrote {report.trades:,} trades and {report.quotes:,} quotes in {len(report.files)} files under {out_dir}",
            markup=False,
        )


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
        _print_json(listing)
        return
    for item in listing:
        out.print(f"{item['name']}: {item['description']}  ({item['file']})", markup=False)
        for rtype, patterns in item["records"].items():
            out.print(f"  {rtype}: {', '.join(patterns)}", markup=False)


# --- schemas ---------------------------------------------------------------------------


def _print_checks(checks: Sequence[Any]) -> None:
    for c in checks:
        where = f" (id {c.schema_id}, version {c.version})" if c.schema_id is not None else ""
        state = {
            "registered": "registered now" if c.changed else "already registered",
            "new": "not registered yet (new subject)",
            "compatible": "not registered yet (compatible new version)",
            "incompatible": "INCOMPATIBLE",
        }[c.state]
        out.print(f"{c.subject} ({c.record_type}.avsc): {state}{where}", markup=False)
        for problem in c.problems:
            out.print(f"  {problem}", markup=False)


@schemas_app.command("register")
def schemas_register(json_output: JsonFlag = False) -> None:
    """Register every schema (idempotent). Fails, registering nothing, when one is incompatible."""
    from k2_etl.schemas.registration import register_schemas

    checks = register_schemas(load_settings())
    if json_output:
        _print_json({"schemas": [c.__dict__ for c in checks]})
    else:
        _print_checks(checks)


@schemas_app.command("check")
def schemas_check(json_output: JsonFlag = False) -> None:
    """Check every schema against the registry without registering. Exit 1 if one is incompatible."""
    from k2_etl.schemas.registration import check_schemas, incompatible_summary

    checks = check_schemas(load_settings())
    if json_output:
        _print_json({"schemas": [c.__dict__ for c in checks]})
    else:
        _print_checks(checks)
    summary = incompatible_summary(checks)
    if summary:
        print(f"k2: error: {summary}", file=sys.stderr)
        raise typer.Exit(1)


# --- streaming --------------------------------------------------------------------------


@app.command()
def consume(
    topics: Annotated[
        list[str] | None, typer.Option("--topic", "-t", help="A topic to consume (repeatable; default: all four).")
    ] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group (default: K2_STREAM_GROUP).")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Land the trades, quotes, reference-data and dead-letter topics in Iceberg, exactly once.

    Runs until SIGTERM or Ctrl-C, then commits the batch in hand and exits 0.
    Partitions resume from the offsets the tables record. Logs go to stderr.
    """
    import logging

    from k2_etl.allocator import bound_allocator_memory

    bound_allocator_memory(arenas=2)  # before pyarrow loads (with the consumer's modules)
    from k2_etl.stream.consumer import StreamConsumer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpx2"):  # one line per registry request
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = load_settings()
    consumer = StreamConsumer(settings, topics=topics, group=group)
    consumer.install_signal_handlers()
    consumer.serve_health()
    counts = consumer.run()
    if json_output:
        _print_json(counts.to_dict())
    else:
        out.print(f"consumed {counts.consumed:,}, landed {counts.landed:,}, rejected {counts.rejected:,}")


# --- table maintenance -------------------------------------------------------------------

TablesOpt = Annotated[
    list[str] | None, typer.Option("--table", "-t", help="A table (repeatable; default: every K2 table).")
]


def _maintained(names: list[str] | None) -> list[tuple[Any, Any]]:
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
    from datetime import UTC, timedelta

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

    say = _say(json_output)
    threshold = min_files or load_settings().maintenance_min_files
    reports = []
    for definition, table in _maintained(tables):

        def done(p: Any, name: str = definition.name) -> None:
            say(f"{name} {p.partition}: {p.outcome}, {p.files_before:,} -> {p.files_after:,} files, "
                f"{p.bytes_before:,} -> {p.bytes_after:,} bytes, {p.duplicates_removed:,} duplicates")  # fmt: skip

        report = compact(table, definition, min_files=threshold, on_partition=done)
        reports.append(report)
        say(f"{report.table}: {report.files_before:,} -> {report.files_after:,} data files, "
            f"{report.bytes_before:,} -> {report.bytes_after:,} bytes in {report.seconds:.1f} s")  # fmt: skip
    if json_output:
        _print_json({"tables": [r.as_dict() for r in reports]})


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
    reports = [expire_snapshots(table, older_than=before, retain_last=keep) for _, table in _maintained(tables)]
    if json_output:
        _print_json({"older_than": before.isoformat(), "tables": [r.__dict__ for r in reports]})
        return
    for r in reports:
        out.print(f"{r.table}: {r.snapshots_before:,} -> {r.snapshots_after:,} snapshots ({len(r.expired):,} expired)")


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
    reports = [remove_orphan_files(t, older_than=before, dry_run=dry_run) for _, t in _maintained(tables)]
    if json_output:
        _print_json({"older_than": before.isoformat(), "tables": [r.__dict__ for r in reports]})
        return
    verb = "would delete" if dry_run else "deleted"
    for r in reports:
        out.print(f"{r.table}: {r.files_seen:,} files, {r.referenced:,} referenced; {verb} {r.orphans:,} orphans "
                  f"({r.bytes:,} bytes)", markup=False)  # fmt: skip


@app.command("replay")
def replay_range(
    table: Annotated[str, typer.Option("--table", "-t", help="trades or quotes.")],
    start: Annotated[str, typer.Option("--start", help="From (YYYY-MM-DD or ISO 8601; UTC unless it says).")],
    end: Annotated[str, typer.Option("--end", help="To, exclusive (YYYY-MM-DD or ISO 8601).")],
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

        report = replay(settings, table, begin, finish, source=source, dry_run=dry_run,  # type: ignore[arg-type]
                        on_records=advance)  # fmt: skip
    if json_output:
        _print_json(report.as_dict())
        return
    r = report.replaced
    assert r is not None
    out.print(f"{report.table} [{r.start}, {r.end}) from {report.source}: read {report.records_read:,} records, "
              f"{report.records_in_range:,} in the range, {report.rejected:,} rejected, "
              f"{report.duplicates:,} repeated ids, {report.rolled_back:,} of rolled-back loads left out",
              markup=False)  # fmt: skip
    out.print(f"before: {r.before}", markup=False)
    out.print(f"{'would be' if r.dry_run else 'after'}: {r.after}  "
              f"({'identical' if r.identical else f'{r.ids_added:,} ids added, {r.ids_changed:,} changed'})",
              markup=False)  # fmt: skip
    if not r.dry_run:
        out.print(f"{r.files_replaced:,} files replaced by {r.files_written:,}; snapshot {r.snapshot_before} -> "
                  f"{r.snapshot_after}",
                  markup=False)  # fmt: skip


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

    reports = rollback(load_settings(), load_id, tables=tables, dry_run=dry_run)
    if json_output:
        _print_json({"load_id": load_id, "tables": [r.as_dict() for r in reports]})
        return
    verb = "would remove" if dry_run else "removed"
    for r in reports:
        out.print(f"{r.table}: {verb} {r.rows_removed:,} rows of load {r.load_id}, put back {r.rows_restored:,} "
                  f"of later loads (the snapshot before it: {r.snapshot_before_load}); {r.files_replaced:,} files "
                  f"replaced by {r.files_written:,}", markup=False)  # fmt: skip


# --- query -------------------------------------------------------------------------------

Symbols = Annotated[list[str], typer.Argument(help="Symbol(s), e.g. BHP CBA (or BHP,CBA).", show_default=False)]
StartOpt = Annotated[str | None, typer.Option("--start", help="From (ISO-8601 or epoch); default: a day before end.")]
EndOpt = Annotated[str | None, typer.Option("--end", help="To, exclusive (ISO-8601 or epoch); default: now.")]
ExchangeOpt = Annotated[str | None, typer.Option("--exchange", help="Only this exchange, e.g. ASX.")]
AsOfOpt = Annotated[str | None, typer.Option("--as-of", help="Read the tables as they were at this time.")]
SnapshotOpt = Annotated[int | None, typer.Option("--snapshot-id", help="Read this snapshot (time travel).")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Write every page to this file: .parquet, else CSV (with a progress bar).")
]
LimitOpt = Annotated[int, typer.Option("--limit", help="Rows on the terminal or in --json (1..50,000).")]
CursorOpt = Annotated[str | None, typer.Option("--cursor", help="Go on after a previous page (its next cursor).")]


def _time_args(start: str | None, end: str | None, as_of: str | None) -> dict[str, Any]:
    from k2_etl.instants import default_range, parse_time

    begin, finish = default_range(parse_time("--start", start) if start else None,
                                  parse_time("--end", end) if end else None, names=("--start", "--end"))  # fmt: skip
    return {"start": begin, "end": finish, "as_of": parse_time("--as-of", as_of) if as_of else None}


def _show(result: Any, json_output: bool, out_file: Path | None, walk: Any) -> None:
    """One page on the terminal or as JSON, or every page (following cursors) to a file."""
    from k2_etl.query.output import json_types, write_pages

    if out_file is not None:
        from rich.progress import Progress, SpinnerColumn, TextColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=Console(stderr=True)) as bar:
            task = bar.add_task(f"writing {out_file}", total=None)

            def pages() -> Any:
                page, written = result, 0
                while True:
                    written += page.rows.num_rows
                    bar.update(task, description=f"writing {out_file}: {written:,} rows")
                    yield page.rows
                    if page.cursor is None:
                        return
                    page = walk(page.cursor)

            rows = write_pages(pages(), out_file)
        out.print(f"{rows:,} rows written to {out_file}")
        return
    if json_output:
        _print_json({"count": result.rows.num_rows, "next_cursor": result.cursor, "partial": result.partial,
                     "snapshot_id": result.snapshot_id, "data": json_types(result.rows).to_pylist()})  # fmt: skip
        return
    shown = json_types(result.rows)
    table = Table(*shown.column_names)
    for row in shown.to_pylist():
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    out.print(table)
    more = f"; more with --cursor {result.cursor}" if result.cursor else ""
    out.print(f"{result.rows.num_rows:,} row(s) from snapshot {result.snapshot_id}{more}", markup=False)


def _paged(query: Any, limit: int, cursor: str | None, out_file: Path | None, json_output: bool) -> None:
    """One page (``limit`` rows) to the terminal or as JSON, or with --out every page, 50,000 at a time."""
    from k2_etl.query.engine import MAX_LIMIT

    size = MAX_LIMIT if out_file else limit
    _show(query(limit=size, cursor=cursor), json_output, out_file, lambda c: query(limit=size, cursor=c))


def _rows_command(table_name: str) -> Any:
    def command(
        symbols: Symbols,
        start: StartOpt = None,
        end: EndOpt = None,
        exchange: ExchangeOpt = None,
        limit: LimitOpt = 100,
        fields: Annotated[str | None, typer.Option("--fields", help="Columns, comma-separated.")] = None,
        cursor: CursorOpt = None,
        as_of: AsOfOpt = None,
        snapshot_id: SnapshotOpt = None,
        out_file: OutOpt = None,
        json_output: JsonFlag = False,
    ) -> None:
        from k2_etl.query.engine import QueryEngine
        from k2_etl.query.params import parse_symbols

        engine = QueryEngine(load_settings())
        args = {"symbols": parse_symbols("symbol", symbols), "exchange": exchange, "snapshot_id": snapshot_id,
                "fields": fields.split(",") if fields else None, **_time_args(start, end, as_of)}  # fmt: skip
        _paged(functools.partial(engine.page, table_name, **args), limit, cursor, out_file, json_output)

    command.__doc__ = f"""The {table_name} of symbols in [start, end), in (time, sequence, id) order."""
    return command


query_app.command("trades")(_rows_command("trades"))
query_app.command("quotes")(_rows_command("quotes"))


@query_app.command("bars")
def query_bars(
    symbols: Symbols,
    interval: Annotated[str, typer.Option("--interval", help="1s .. 1d dividing a day: 1m, 5m, 1h, 1d ...")] = "1m",
    start: StartOpt = None,
    end: EndOpt = None,
    exchange: ExchangeOpt = None,
    limit: LimitOpt = 100,
    cursor: CursorOpt = None,
    as_of: AsOfOpt = None,
    snapshot_id: SnapshotOpt = None,
    out_file: OutOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """OHLCV bars with exact VWAP and trade count, in (bar start, symbol) order."""
    from k2_etl.query.engine import QueryEngine
    from k2_etl.query.params import parse_interval, parse_symbols

    engine = QueryEngine(load_settings())
    args = {"symbols": parse_symbols("symbol", symbols), "exchange": exchange, "snapshot_id": snapshot_id,
            "interval": parse_interval("--interval", interval), **_time_args(start, end, as_of)}  # fmt: skip
    _paged(functools.partial(engine.bars, **args), limit, cursor, out_file, json_output)


@query_app.command("summary")
def query_summary(
    symbol: Annotated[str, typer.Argument(help="Symbol, e.g. BHP.")],
    day: Annotated[str, typer.Argument(help="Trading date, YYYY-MM-DD (in the exchange's time zone).")],
    exchange: ExchangeOpt = None,
    as_of: AsOfOpt = None,
    snapshot_id: SnapshotOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """A symbol's trading day: open, high, low, close, volume, VWAP, trade and quote counts."""
    import pyarrow as pa

    from k2_etl.instants import parse_day, parse_time
    from k2_etl.query.engine import QueryEngine
    from k2_etl.query.output import json_types
    from k2_etl.query.params import parse_symbols

    engine = QueryEngine(load_settings())
    name = (parse_symbols("symbol", [symbol]) or [""])[0]
    if engine.unknown([name]):
        raise QueryError("symbol", name, "no trade, quote or reference data names it")
    row = engine.summary(name, parse_day("date", day), exchange=exchange, snapshot_id=snapshot_id,
                         as_of=parse_time("--as-of", as_of) if as_of else None)  # fmt: skip
    values = json_types(pa.Table.from_pylist([row])).to_pylist()[0]
    if json_output:
        _print_json(values)
        return
    table = Table("field", "value")
    for key, value in values.items():
        table.add_row(key, "" if value is None else str(value))
    out.print(table)


# --- API ---------------------------------------------------------------------------------


@app.command("api")
def serve_api() -> None:
    """Serve the REST API (gunicorn; K2_API_HOST/PORT/WORKERS/THREADS) until SIGTERM or Ctrl-C.

    Docs at /docs, the OpenAPI document at /openapi.json, health at /health, metrics at /metrics.
    """
    import shutil

    from k2_etl.config import format_host_port
    from k2_etl.local.components import port_holder

    settings = load_settings()
    holder = port_holder(settings.api_host, settings.api_port)
    if holder is not None:
        raise ComponentError(
            f"api: {format_host_port(settings.api_host, settings.api_port)} is taken by {holder}; "
            "stop it or set K2_API_PORT"
        )
    metrics_dir = settings.home / "run" / "api-metrics"  # per-worker metric files, summed by /metrics
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    command = [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app"]
    os.execve(sys.executable, command, env)  # gunicorn becomes this process: signals reach it directly


# --- registry ----------------------------------------------------------------------------


@registry_app.command("serve")
def registry_serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: host of K2_SCHEMA_REGISTRY_URL).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: port of K2_SCHEMA_REGISTRY_URL).")] = None,
) -> None:
    """Run the local schema registry in the foreground (gunicorn), storing in K2_REGISTRY_DB_URL.

    With K2_SCHEMA_REGISTRY_BASIC_AUTH set, every request but a read needs those credentials.
    """
    from k2_etl.registry.server import serve

    settings = load_settings()
    default_host, default_port = settings.registry_address
    assert settings.registry_db_url is not None
    serve(settings.registry_db_url, host or default_host, port or default_port, settings.registry_auth)


def main() -> None:
    """Entry point of the ``k2`` script."""
    try:
        app()
    except K2Error as exc:
        print(f"k2: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("k2: interrupted", file=sys.stderr)
        sys.exit(130)
