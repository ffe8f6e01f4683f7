"""What every ``k2`` command shares to speak: the console, ``--json``, and where progress goes.

A command prints either text for people or one JSON object for scripts (``--json``), never
both on stdout: with ``--json``, progress lines go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from k2_etl.config import Settings
    from k2_etl.observability import JobRun

# Not a terminal (pipes, CI logs): do not squeeze tables into 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts) instead of text.")]
Say = Callable[[str], None]


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def print_lines(lines: Iterable[str]) -> None:
    """Lines of a report (``k2_etl.reports``) as they are: a report's text is not rich markup."""
    for line in lines:
        out.print(line, markup=False)


def say_for(json_output: bool) -> Say:
    """Progress lines go to stdout as text, or to stderr when stdout carries JSON."""
    if json_output:
        return lambda line: print(line, file=sys.stderr)
    return lambda line: out.print(line, markup=False)


def warn(message: str) -> None:
    print(f"k2: warning: {message}", file=sys.stderr, flush=True)


def pushed(
    settings: Settings, job: str, scope: str | None = None, dry_run: bool = False
) -> contextlib.AbstractContextManager[JobRun]:
    """:func:`k2_etl.observability.batch_job`, warning on stderr when the Pushgateway does not answer."""
    from k2_etl.observability import batch_job

    return batch_job(settings, job, warn, scope, dry_run)


def scope(names: Iterable[str] | None) -> str:
    """The scope (:func:`pushed`) of a command on tables: their names, or ``all``."""
    return "+".join(sorted(set(names))) if names else "all"
