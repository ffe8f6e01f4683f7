"""The production back ends, reached by settings alone: a Postgres catalog and registry, an S3 warehouse.

S3 is served by moto's S3-compatible server (MinIO runs in docker-compose, not
here). Postgres is the machine's server, which .ci/run starts and passes in as
TEST_POSTGRES_URL (a SQLAlchemy URL of a database the tests may create
databases in).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from confluent_kafka.schema_registry import Schema

from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.tables import TABLES, ensure_tables
from k2_etl.query.engine import QueryEngine
from k2_etl.schemas import TRADE
from tests.helpers import a_trade, trino_catalog
from tests.integration.conftest import RegistryProcess, needs_postgres
from tests.integration.stand_ins import S3Server


def init_and_round_trip(settings: Settings) -> None:
    """Create every table, append one trade, read it back exactly; a second init changes nothing."""
    catalog = open_catalog(settings)
    assert {t.action for t in ensure_tables(catalog, settings.namespace)} == {"created"}
    assert {t.action for t in ensure_tables(open_catalog(settings), settings.namespace)} == {"unchanged"}
    trades = catalog.load_table((settings.namespace, "trades"))
    trades.append(pa.Table.from_pylist([a_trade()], schema=trades.schema().as_arrow()))
    [row] = open_catalog(settings).load_table((settings.namespace, "trades")).scan().to_arrow().to_pylist()
    assert row == a_trade()
    assert sorted(i[-1] for i in catalog.list_tables(settings.namespace)) == sorted(t.name for t in TABLES)


@needs_postgres
def test_catalog_on_postgres(postgres_database: str, tmp_path: Path) -> None:
    init_and_round_trip(load_settings(home=tmp_path, catalog_uri=postgres_database))


#: The JDBC catalog layout Trino's Iceberg connector reads with `iceberg.jdbc-catalog.schema-version=V1`
#: (Apache Iceberg's JdbcUtil): the tables pyiceberg's SQL catalog must have written.
TRINO_JDBC_V1 = {
    "iceberg_tables": {"catalog_name", "table_namespace", "table_name", "metadata_location",
                       "previous_metadata_location", "iceberg_type"},
    "iceberg_namespace_properties": {"catalog_name", "namespace", "property_key", "property_value"},
}  # fmt: skip


@needs_postgres
def test_the_postgres_catalog_has_the_layout_trino_reads(postgres_database: str, tmp_path: Path) -> None:
    """docker/trino/catalog/k2.properties names a catalog and a schema version: once K2's tables are
    made on Postgres, the catalog's tables have that layout and list K2's tables under that name."""
    properties = trino_catalog()
    assert properties["iceberg.jdbc-catalog.schema-version"] == "V1"
    name = properties["iceberg.jdbc-catalog.catalog-name"]
    settings = load_settings(home=tmp_path, catalog_uri=postgres_database, catalog_name=name)
    ensure_tables(open_catalog(settings), settings.namespace)  # the tables `k2 init` makes
    engine = sa.create_engine(postgres_database)
    try:
        with engine.connect() as conn:
            for table, columns in TRINO_JDBC_V1.items():
                columns_of = sa.text("SELECT column_name FROM information_schema.columns WHERE table_name = :t")
                found = conn.execute(columns_of, {"t": table}).scalars().all()
                assert set(found) == columns, (table, found)
            rows = conn.execute(sa.text("SELECT catalog_name, table_namespace, table_name, iceberg_type, "
                                        "metadata_location FROM iceberg_tables")).all()  # fmt: skip
    finally:
        engine.dispose()
    assert sorted(row.table_name for row in rows) == sorted(t.name for t in TABLES)
    for row in rows:
        assert (row.catalog_name, row.table_namespace, row.iceberg_type) == (name, settings.namespace, "TABLE"), row
        assert row.metadata_location.startswith(settings.warehouse), row  # under the catalog's warehouse


@needs_postgres
def test_registry_on_postgres_survives_restart(postgres_database: str, tmp_path: Path) -> None:
    process = RegistryProcess(tmp_path / "home", registry_db_url=postgres_database)
    process.start()
    try:
        schema_id = process.client().register_schema("k2.trades-value", Schema(TRADE.schema_str, "AVRO"))
        process.stop()
        process.start()
        assert process.client().get_latest_version("k2.trades-value").schema_id == schema_id
    finally:
        process.close_clients()
        process.stop()


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
    """moto's S3-compatible server, with an empty bucket `k2-test`."""
    server = S3Server(tmp_path)
    try:
        server.client().create_bucket(Bucket="k2-test")
        yield server
    finally:
        server.stop()


def test_warehouse_on_s3(s3_server: S3Server, tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path,
        warehouse="s3://k2-test/warehouse",
        s3_endpoint=s3_server.endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        s3_region="us-east-1",
    )
    init_and_round_trip(settings)
    objects = s3_server.client().list_objects_v2(Bucket="k2-test", Prefix="warehouse/")
    keys = [o["Key"] for o in objects.get("Contents", [])]
    assert any(k.endswith(".parquet") for k in keys) and any(k.endswith(".metadata.json") for k in keys)
    assert not (tmp_path / "warehouse").exists()  # nothing went to local disk
    at = datetime(2026, 11, 25, tzinfo=UTC)  # a_trade()'s day
    page = QueryEngine(settings).page("trades", symbols=["BHP"], start=at, end=at + timedelta(days=1))
    assert page.rows.to_pylist() == [a_trade()]  # the query engine reads the S3 warehouse (DuckDB's httpfs)
