"""Fixtures every test gets: a clean K2 environment (no K2_* leaking in from the shell); and the
``integration`` marker on every test under tests/integration (`pytest -m "not integration"` runs the
unit tests alone)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

INTEGRATION = Path(__file__).parent / "integration"


#: The longest test files (minutes each, measured), started first: `make test` hands whole files to
#: two processes as each finishes one, so a long file left for last would run alone at the end.
#: (`--no-loadscope-reorder` keeps this order: xdist would otherwise start the files with most tests.)
#: The two Airflow-heavy files are 2nd and 4th, so each runs beside a file without Airflow (with
#: both at once, a CI run's `k2 up` found Airflow too slow to answer its health check); the compose
#: file's test, which runs Airflow too, starts after both.
LONGEST_FIRST = ("test_stream.py", "test_dags.py", "test_cli_platform.py", "test_airflow_up.py", "test_api.py",
                 "test_stream_faults.py", "test_monitoring.py", "test_replay.py", "test_query_engine.py",
                 "test_registry.py", "test_compose_services.py")  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.integration)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _clean_k2_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("K2_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("K2_PUSHGATEWAY_URL", "")  # a test pushes only to a Pushgateway of its own
    monkeypatch.chdir(tmp_path)  # so no k2.toml from the developer's directory applies
    yield
