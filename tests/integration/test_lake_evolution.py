"""Which writer schemas a table takes, and how it evolves for them (real Iceberg tables on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import DecimalType, IntegerType, ListType, LongType, NestedField, StringType

from k2_etl.lake.tables import evolve_to_read, readable_as

TABLE = Schema(
    NestedField(1, "id", StringType(), required=True),
    NestedField(2, "qty", IntegerType(), required=False),
    NestedField(3, "price", DecimalType(18, 8), required=True),
    NestedField(4, "total", LongType(), required=False),
    NestedField(5, "tags", ListType(6, StringType(), element_required=True), required=True),
)


@pytest.fixture
def table(tmp_path: Path) -> Table:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse")
    catalog.create_namespace("ns")
    return catalog.create_table(("ns", "t"), schema=TABLE)


def writer(*changes: NestedField, drop: str | None = None) -> Schema:
    by_name = {f.name: f for f in TABLE.fields if f.name != drop}
    by_name.update({f.name: f for f in changes})
    return Schema(*by_name.values())


def columns(table: Table) -> dict[str, tuple[str, bool]]:
    table.refresh()
    return {f.name: (str(f.field_type), f.required) for f in table.schema().fields}


def test_the_same_schema_changes_nothing(table: Table) -> None:
    before = len(table.metadata.schemas)
    assert evolve_to_read(table, writer()) is None
    tags = NestedField(15, "tags", ListType(16, StringType(), element_required=True), required=True)
    assert evolve_to_read(table, writer(tags)) is None  # the same list, other ids (a registered writer schema)
    table.refresh()
    assert len(table.metadata.schemas) == before


def test_an_added_field_becomes_an_optional_column(table: Table) -> None:
    assert evolve_to_read(table, writer(NestedField(9, "venue", StringType(), required=True))) is None
    assert columns(table)["venue"] == ("string", False)


def test_a_wider_writer_type_widens_the_column_and_a_narrower_one_is_read_as_is(table: Table) -> None:
    assert evolve_to_read(table, writer(NestedField(2, "qty", LongType(), required=False))) is None
    assert columns(table)["qty"] == ("long", False)  # committed, though no column was added
    assert evolve_to_read(table, writer(NestedField(4, "total", IntegerType(), required=False))) is None
    assert columns(table)["total"] == ("long", False)  # an int fits a long column: unchanged


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            NestedField(3, "price", DecimalType(18, 2), required=True),
            "decimal(18, 8) cannot hold the writer's decimal(18, 2)",
        ),
        (NestedField(3, "price", StringType(), required=True), "cannot hold the writer's string"),
        (
            NestedField(1, "id", StringType(), required=False),
            "requires column id, which the writer schema makes optional",
        ),
    ],
)
def test_an_unreadable_writer_is_refused_with_the_reason(table: Table, change: NestedField, why: str) -> None:
    before = columns(table)
    reason = evolve_to_read(table, writer(change))
    assert reason is not None and why in reason, reason
    assert columns(table) == before


def test_a_writer_without_a_required_column_is_refused(table: Table) -> None:
    assert "requires column price, which the writer schema lacks" in (evolve_to_read(table, writer(drop="price")) or "")


def test_readable_as_follows_iceberg_promotion_and_exact_decimal_scale() -> None:
    assert readable_as(IntegerType(), LongType()) and not readable_as(LongType(), IntegerType())
    assert readable_as(DecimalType(10, 2), DecimalType(18, 2)) and not readable_as(
        DecimalType(18, 2), DecimalType(18, 8)
    )
