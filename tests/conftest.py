"""Fixtures every test gets: a clean K2 environment (no K2_* leaking in from the shell); and the
``integration`` marker on every test under tests/integration (`pytest -m "not integration"` runs the
unit tests alone)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

INTEGRATION = Path(__file__).parent / "integration"


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _clean_k2_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("K2_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # so no k2.toml from the developer's directory applies
    yield
