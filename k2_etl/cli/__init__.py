"""The ``k2`` command: one module per command group, each thin: parse the arguments, call the
packages, and print what they report (the wording lives in :mod:`k2_etl.reports`, shared with
the Airflow operators).

Errors K2 raises on purpose (:class:`~k2_etl.errors.K2Error`) are printed as one line on stderr
and become the exit code; see docs/cli.md for the codes.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from k2_etl import __version__
from k2_etl.cli import api, ingest, maintenance, platform, query, replay, schemas, stream
from k2_etl.cli._output import out
from k2_etl.errors import K2Error

app = typer.Typer(
    help="K2: market-data lakehouse ETL. Vendor CSV → Kafka (Avro) → Iceberg → DuckDB/API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# In this order in `k2 --help`: the commands of each module (added without a name), then the groups.
for commands in (platform.app, ingest.app, stream.app, maintenance.app, replay.app, api.app):
    app.add_typer(commands)
app.add_typer(schemas.schemas_app, name="schemas")
app.add_typer(query.app, name="query")
app.add_typer(schemas.registry_app, name="registry")


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
