"""``k2 up|down|status|init|config|demo``: the local platform, its settings and its sample day."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from k2_etl.cli._output import JsonFlag, Say, out, print_json, print_lines, say_for, warn
from k2_etl.config import Settings, load_settings
from k2_etl.errors import ComponentError
from k2_etl.reports import day_load_line, init_lines, placed_line, quality_lines

if TYPE_CHECKING:
    from k2_etl.bootstrap import InitReport
    from k2_etl.local.supervisor import ComponentStatus

app = typer.Typer()


def _status_rows(settings: Settings) -> list[ComponentStatus]:
    from k2_etl.local.components import platform
    from k2_etl.local.supervisor import status

    return [status(settings, c) for c in platform(settings)]


def _print_status(rows: Sequence[ComponentStatus]) -> None:
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
    from k2_etl.local.components import not_installed, platform
    from k2_etl.local.supervisor import stopped_on_failure

    settings = load_settings()
    say = say_for(json_output)
    for why in not_installed(settings):
        say(why)
    components = [c for c in platform(settings) if c.command is not None]
    with stopped_on_failure(settings, say) as start:
        for component in (c for c in components if not c.after_init):
            start(component)
        report = _init_for_up(settings, say)
        for component in (c for c in components if c.after_init):
            start(component)
    rows = _status_rows(settings)
    if json_output:
        print_json(
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


def _init_for_up(settings: Settings, say: Say) -> InitReport:
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
        print_json({"messages": lines})


@app.command()
def status(json_output: JsonFlag = False) -> None:
    """Show each component's health. Exit code 0 when all are healthy, 1 otherwise."""
    settings = load_settings()
    rows = _status_rows(settings)
    healthy = all(r.healthy for r in rows)
    if json_output:
        print_json({"healthy": healthy, "components": [r.to_dict() for r in rows]})
    else:
        _print_status(rows)
    if not healthy:
        raise typer.Exit(1)


@app.command()
def monitor() -> None:
    """Serve the platform's health for Prometheus: each component's check (as `k2 status`), each
    table's metadata (snapshots, files, freshness) and produced against landed offsets.

    On K2_MONITOR_HOST:K2_MONITOR_PORT (`/metrics`, `/healthz`), a pass every
    K2_MONITOR_INTERVAL_SECONDS, until SIGTERM or Ctrl-C. Logs go to stderr.
    """
    import logging
    import sys

    from k2_etl.monitor import Monitor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    watcher = Monitor(load_settings())
    watcher.install_signal_handlers()
    watcher.run()


@app.command()
def init(json_output: JsonFlag = False) -> None:
    """Create the Kafka topics and the Iceberg namespace and tables (idempotent)."""
    from k2_etl.bootstrap import init_platform

    settings = load_settings()
    report = init_platform(settings)
    if json_output:
        print_json(report.to_dict())
    else:
        print_lines(init_lines(report, settings.namespace))


@app.command("config")
def show_config(json_output: JsonFlag = False) -> None:
    """Print the effective settings (environment, k2.toml, defaults); secrets masked."""
    values = load_settings().public_dict()
    if json_output:
        print_json(values)
    else:
        print_lines(f"{name}={'' if value is None else value}" for name, value in values.items())


@app.command()
def demo(
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the run succeeds or fails.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 600.0,
    json_output: JsonFlag = False,
) -> None:
    """Put the bundled sample day in the landing folder and run k2_daily_load for it in the local Airflow.

    Run it after `k2 up` and `k2 schemas register` (`make run` does). Idempotent: files already in
    place are left alone and the run (id k2_sample__<day>) is triggered once. With
    K2_AIRFLOW_ENABLED=false the DAG's steps run here: load the day, wait until it has landed
    (--timeout), check its quality.
    Exit code 1 when the run (or the load) fails.
    """
    from k2_etl.config import format_host_port
    from k2_etl.local.demo import place_sample, run_id, sample_day, sample_symbol, trigger_daily_load, wait_for_run

    settings = load_settings()
    say = say_for(json_output)
    day = sample_day()
    placed = place_sample(settings)
    for p in placed:
        say(placed_line(p))
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
        from k2_etl.local.demo import daily_load_here

        say("airflow: off (K2_AIRFLOW_ENABLED=false); running k2_daily_load's steps here: load, wait, check")
        loaded, quality = daily_load_here(settings, day, say, timeout, warn, lambda done: say(day_load_line(done)))
        result["load"] = loaded.to_dict()
        if quality is not None:
            for line in quality_lines(quality):
                say(line)
            result["quality"] = quality.to_dict()
        ok = loaded.ok and quality is not None and quality.ok
    api = f"http://{format_host_port(settings.api_host, settings.api_port)}"
    result["query"] = f"{api}/v1/summary/{sample_symbol()}/{day}"
    result["explorer"] = f"{api}/explore?symbol={sample_symbol()}&day={day}"
    if json_output:
        print_json(result)
    else:
        if settings.airflow_enabled:
            out.print(f"the run: {result['run']['url']}", markup=False)
            out.print(_airflow_login(settings), markup=False)
        out.print(f"explorer: {result['explorer']}", markup=False)
        out.print(f"API: {api}/docs   e.g. curl {result['query']}", markup=False)
    if not ok:
        where = (f"its task logs are at {result['run']['url']} (clear the run there to run it again)"
                 if "run" in result else "see the report above")  # fmt: skip
        raise ComponentError(f"the daily load of the sample day {day} failed; {where}")
