"""An Iceberg table stood in for by fixed rows, for the unit tests of what reads tables (the
real tables are tested end to end in tests/integration)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa


class FakeScan:
    def __init__(self, rows: pa.Table) -> None:
        self.rows = rows

    def to_arrow(self) -> pa.Table:
        return self.rows


class FakeTable:
    """Every scan returns ``rows`` (the selected fields of them; the code under test filters rows
    itself) and is counted in ``scans``; ``schema()`` names ``columns`` (by default the rows')."""

    def __init__(self, rows: pa.Table, columns: list[str] | None = None) -> None:
        self.rows, self.scans = rows, 0
        self.columns = rows.column_names if columns is None else columns

    def scan(self, selected_fields: Sequence[str] | None = None, **_: Any) -> FakeScan:
        self.scans += 1
        return FakeScan(self.rows if selected_fields is None else self.rows.select(list(selected_fields)))

    def schema(self) -> Any:
        class Schema:
            column_names = self.columns

        return Schema()
