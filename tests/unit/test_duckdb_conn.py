"""The one DuckDB connection: a missing pandas is settled once (duckdb/duckdb-python#300)."""

from __future__ import annotations

import builtins
import importlib.util
import sys
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from k2_etl.wire import duckdb_conn


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names imported through ``builtins.__import__`` (restored after the test)."""
    names: list[str] = []
    real = builtins.__import__

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        names.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", counting)
    monkeypatch.delitem(sys.modules, "pandas", raising=False)
    return names


def test_a_missing_pandas_is_answered_without_a_search(imports: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duckdb_conn, "find_spec", lambda name: None)  # pandas is not installed
    conn = duckdb_conn.connect()
    searched = len(imports)
    when = datetime(2026, 11, 2, 23, 0, 12, tzinfo=UTC)
    got = conn.execute("SELECT $t AS t, $s AS s, $l AS l", {"t": when, "s": "BHP", "l": ["a", "b"]})
    assert got.to_arrow_table().to_pylist() == [{"t": when, "s": "BHP", "l": ["a", "b"]}]  # pyarrow unharmed
    assert imports[searched:].count("pandas") == 0  # answered before the path search
    with pytest.raises(ModuleNotFoundError):
        import pandas  # noqa: F401
    assert importlib.util.find_spec("pandas") is None  # what find_spec said before
    assert "pandas" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match=r"k2_etl\.pandas"):  # a relative import is searched as ever
        builtins.__import__("pandas", {"__package__": "k2_etl", "__name__": "k2_etl.x"}, None, (), 1)


def test_an_installed_pandas_is_left_alone(imports: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duckdb_conn, "find_spec", lambda name: SimpleNamespace(name=name))  # installed
    duckdb_conn.connect().execute("SELECT $s", {"s": "BHP"}).fetchall()
    assert "pandas" in imports  # DuckDB's own import went through, unanswered
