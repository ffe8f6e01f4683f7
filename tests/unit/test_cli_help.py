"""Every `k2` command answers `--help`: the commands are read from the Typer app itself, so a new
command is covered without touching this file."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from k2_etl.cli import app

Command = typer.main.TyperCommand | TyperGroup


def _commands(command: Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Command]]:
    """``command`` and every command below it, each with the words that name it after ``k2``."""
    yield path, command
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))  # type: ignore[arg-type]


COMMANDS = dict(_commands(typer.main.get_command(app)))  # type: ignore[arg-type]


def test_the_app_has_every_command_group() -> None:
    """A guard for the enumeration itself: a walk that found nothing would pass every test below."""
    leaves = [path for path, command in COMMANDS.items() if not isinstance(command, TyperGroup)]
    assert len(leaves) >= 23
    assert {("up",), ("load",), ("consume",), ("compact",), ("replay",), ("api",)} <= set(leaves)
    assert {("schemas", "check"), ("query", "bars"), ("registry", "serve")} <= set(leaves)


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda path: " ".join(("k2", *path)))
def test_help_exits_0_and_shows_the_usage_and_every_option(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="k2", env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert f"Usage: {' '.join(('k2', *path))} " in result.output
    for param in COMMANDS[path].params:
        if isinstance(param, typer.core.TyperOption):
            for name in (*param.opts, *param.secondary_opts):
                assert name in result.output, (name, result.output)


ENTRY_POINTS = {
    "k2": [str(Path(sys.executable).with_name("k2"))],  # pyproject's script
    "python -m k2_etl": [sys.executable, "-m", "k2_etl"],  # how the supervisor starts components
}


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_the_installed_entry_points_run_the_app(entry_point: str) -> None:
    result = subprocess.run([*ENTRY_POINTS[entry_point], "--help"], capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip

    assert result.returncode == 0, result.stderr
    for name in {path[0] for path in COMMANDS if path}:  # each at the start of a row of the command list
        assert re.search(rf"^\W+{re.escape(name)}\s", result.stdout, re.MULTILINE), (name, result.stdout)
