"""The import-linter contracts in pyproject.toml hold, and they are not vacuous: the same
contracts refuse a copy of the code where the consumer reaches sideways into the loader."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_layers_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_sideways_import_breaks_the_layers(tmp_path: Path) -> None:
    for package in ("k2_etl", "api"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    health = tmp_path / "k2_etl" / "stream" / "health.py"
    health.write_text(health.read_text() + "\nfrom k2_etl.ingest import loader  # noqa: E402  (sideways)\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "k2_etl.stream.health -> k2_etl.ingest" in result.stdout, result.stdout
