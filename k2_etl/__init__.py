"""K2: market-data lakehouse ETL (CSV → Kafka/Avro → Iceberg → DuckDB/API)."""

__version__ = "0.1.0"
