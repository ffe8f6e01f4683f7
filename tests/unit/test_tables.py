"""Table definitions derived from the Avro schemas (pure: no catalog)."""

from __future__ import annotations

from pyiceberg.types import DecimalType, ListType, StringType, TimestamptzType

from k2_etl.lake.tables import TABLES, TABLES_BY_NAME, iceberg_schema
from k2_etl.schemas import QUOTE, RECORD_TYPES, TRADE


def test_every_record_type_has_exactly_one_table() -> None:
    assert sorted(t.record.name for t in TABLES) == sorted(r.name for r in RECORD_TYPES)


def test_trade_types_are_exact() -> None:
    schema = iceberg_schema(TRADE)
    assert schema.find_field("price").field_type == DecimalType(18, 8)
    assert schema.find_field("event_time").field_type == TimestamptzType()
    assert schema.find_field("event_time").required
    conditions = schema.find_field("conditions").field_type
    assert isinstance(conditions, ListType) and conditions.element_type == StringType()
    assert not schema.find_field("sequence_number").required


def test_field_ids_are_unique_and_columns_keep_avsc_order() -> None:
    schema = iceberg_schema(QUOTE)
    ids = [f.field_id for f in schema.fields] + [
        f.field_type.element_id for f in schema.fields if isinstance(f.field_type, ListType)
    ]
    assert len(ids) == len(set(ids))
    assert [f.name for f in schema.fields] == [f["name"] for f in QUOTE.schema["fields"]]


def test_partition_and_sort_resolve_against_the_schema() -> None:
    for table in TABLES:
        schema = table.schema()
        assert len(table.partition_spec(schema).fields) == len(table.partition)
        assert len(table.sort_order(schema).fields) == len(table.sort)
    trades = TABLES_BY_NAME["trades"]
    assert [str(f.transform) for f in trades.partition_spec(trades.schema()).fields] == ["day"]


def test_id_and_day_columns_are_columns_of_their_tables() -> None:
    for table in TABLES:
        columns = table.schema().column_names
        assert table.id_column is None or table.id_column in columns, table.name
        assert table.day_column is None or table.day_column in columns, table.name
    assert (TABLES_BY_NAME["trades"].day_column, TABLES_BY_NAME["rejects"].id_column) == ("event_time", "reject_id")
    assert TABLES_BY_NAME["load_manifest"].id_column is None and TABLES_BY_NAME["reference_data"].day_column is None
