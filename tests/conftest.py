"""Fixtures every test gets: a clean K2 environment (no K2_* leaking in from the shell)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _clean_k2_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("K2_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # so no k2.toml from the developer's directory applies
    yield
