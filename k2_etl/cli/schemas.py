"""``k2 schemas register|check`` against a schema registry, and ``k2 registry serve``, the local one."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from k2_etl.cli._output import JsonFlag, print_json, print_lines
from k2_etl.config import load_settings
from k2_etl.reports import schema_check_lines

if TYPE_CHECKING:
    from k2_etl.schemas.registration import SchemaCheck

schemas_app = typer.Typer(help="Register and check K2's Avro schemas in the schema registry.", no_args_is_help=True)
registry_app = typer.Typer(help="The local Confluent-compatible schema registry.", no_args_is_help=True)


def _show(checks: Sequence[SchemaCheck], json_output: bool) -> None:
    if json_output:
        print_json({"schemas": [c.to_dict() for c in checks]})
    else:
        print_lines(schema_check_lines(checks))


@schemas_app.command("register")
def schemas_register(json_output: JsonFlag = False) -> None:
    """Register every schema (idempotent). Fails, registering nothing, when one is incompatible."""
    from k2_etl.schemas.registration import register_schemas

    _show(register_schemas(load_settings()), json_output)


@schemas_app.command("check")
def schemas_check(json_output: JsonFlag = False) -> None:
    """Check every schema against the registry without registering. Exit 1 if one is incompatible."""
    from k2_etl.schemas.registration import check_schemas, incompatible_summary

    checks = check_schemas(load_settings())
    _show(checks, json_output)
    summary = incompatible_summary(checks)
    if summary:
        print(f"k2: error: {summary}", file=sys.stderr)
        raise typer.Exit(1)


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
