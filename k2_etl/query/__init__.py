"""Queries over the Iceberg tables with DuckDB (the engine and all SQL live here)."""
