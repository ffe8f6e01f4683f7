"""`k2 init`: topics, namespace and tables, idempotent, with columns exactly as the Avro schemas say."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pyiceberg.types import NestedField

from k2_etl.config import Settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.tables import TABLES, TableDef, ensure_table
from k2_etl.schemas import RECORD_TYPES, TRADE, RecordType
from k2_etl.wire.kafka import cluster_metadata
from tests.helpers import env_of, run_k2


def expected_iceberg_type(avro_type: object) -> tuple[str, bool]:
    """Iceberg type string and required-ness for an Avro field type, written out independently."""
    required = True
    if isinstance(avro_type, list):
        assert avro_type[0] == "null" and len(avro_type) == 2
        required, avro_type = False, avro_type[1]
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical == "decimal":
            return f"decimal({avro_type['precision']}, {avro_type['scale']})", required
        if logical == "timestamp-micros":
            return "timestamptz", required
        if logical == "date":
            return "date", required
        if avro_type["type"] == "array":
            return f"list<{avro_type['items']}>", required
        raise AssertionError(f"unexpected Avro type {avro_type}")
    primitives = {"string": "string", "long": "long", "int": "int", "bytes": "binary", "boolean": "boolean"}
    return primitives[str(avro_type)], required


def describe(field: NestedField) -> tuple[str, str, bool]:
    return field.name, str(field.field_type), field.required


def test_init_twice_changes_nothing_the_second_time(own_settings: Settings) -> None:
    env = env_of(own_settings)
    first = run_k2(env, "init", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert {t["action"] for t in report["tables"]} == {"created"}
    assert {t["action"] for t in report["topics"]} == {"created"}
    assert {t["name"] for t in report["tables"]} == {t.name for t in TABLES}

    second = run_k2(env, "init", "--json")
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert {t["action"] for t in again["tables"] + again["topics"]} == {"unchanged"}
    # not even a new metadata file
    assert [t["metadata_location"] for t in again["tables"]] == [t["metadata_location"] for t in report["tables"]]

    topics = cluster_metadata(own_settings).topics
    for name in ("trades", "quotes", "reference_data", "dead_letters"):
        assert len(topics[own_settings.topic_prefix + name].partitions) == own_settings.topic_partitions


def test_table_columns_match_the_avro_schemas(own_settings: Settings) -> None:
    assert run_k2(env_of(own_settings), "init").returncode == 0
    catalog = open_catalog(own_settings)
    by_record = {t.record.name: t for t in TABLES}
    assert set(by_record) == {r.name for r in RECORD_TYPES}
    for record in RECORD_TYPES:
        table = catalog.load_table((own_settings.namespace, by_record[record.name].name))
        actual = [describe(f) for f in table.schema().fields]
        expected = [(f["name"], *expected_iceberg_type(f["type"])) for f in record.schema["fields"]]
        assert actual == expected, record.name


def test_layout_of_trades(own_settings: Settings) -> None:
    assert run_k2(env_of(own_settings), "init").returncode == 0
    trades = open_catalog(own_settings).load_table((own_settings.namespace, "trades"))
    schema = trades.schema()
    [partition] = trades.spec().fields
    assert (schema.find_column_name(partition.source_id), str(partition.transform)) == ("event_time", "day")
    assert [schema.find_column_name(f.source_id) for f in trades.sort_order().fields] == ["symbol", "event_time"]
    assert trades.properties["write.parquet.compression-codec"] == "zstd"


@dataclass(frozen=True)
class _EvolvedTrade(RecordType):
    """The trade schema plus one optional field, as a future .avsc might be."""

    @property
    def schema_str(self) -> str:
        schema = json.loads(TRADE.schema_str)
        schema["fields"].append({"name": "auction_id", "type": ["null", "string"], "default": None})
        return json.dumps(schema)


def test_init_evolves_a_table_when_its_schema_gains_a_field(own_settings: Settings) -> None:
    assert run_k2(env_of(own_settings), "init").returncode == 0
    catalog = open_catalog(own_settings)
    trades_def = next(t for t in TABLES if t.name == "trades")
    evolved = TableDef("trades", _EvolvedTrade("trade", "trades"), trades_def.partition, trades_def.sort)
    assert ensure_table(catalog, own_settings.namespace, evolved).action == "evolved"
    table = catalog.load_table((own_settings.namespace, "trades"))
    assert describe(table.schema().fields[-1]) == ("auction_id", "string", False)
    assert ensure_table(catalog, own_settings.namespace, evolved).action == "unchanged"
    # the current definition still matches (the extra column is kept, nothing is dropped)
    assert ensure_table(catalog, own_settings.namespace, trades_def).action == "unchanged"


def test_init_gives_tables_made_before_a_property_existed_the_property(own_settings: Settings) -> None:
    """Tables created by an older K2 get properties added since (maintenance's isolation level)."""
    assert run_k2(env_of(own_settings), "init").returncode == 0
    catalog = open_catalog(own_settings)
    table = catalog.load_table((own_settings.namespace, "quotes"))
    with table.transaction() as transaction:
        transaction.remove_properties("write.update.isolation-level")
    quotes_def = next(t for t in TABLES if t.name == "quotes")
    assert ensure_table(catalog, own_settings.namespace, quotes_def).action == "evolved"
    table = catalog.load_table((own_settings.namespace, "quotes"))
    assert table.properties["write.update.isolation-level"] == "snapshot"
    assert ensure_table(catalog, own_settings.namespace, quotes_def).action == "unchanged"
