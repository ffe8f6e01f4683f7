"""The wire: how K2's processes talk to Kafka, the schema registry and DuckDB, and how they retry.

Neutral ground under the pipeline's rooms: ``ingest``, ``stream``, ``jobs`` and ``query`` all
use it, so none of them reaches into another for a client, a codec or a connection.

* :mod:`~k2_etl.wire.kafka`: Kafka clients from settings (admin, producer, consumer), topic
  ids and creation.
* :mod:`~k2_etl.wire.registry`: the schema registry client, its errors as one line, and the
  lookup of a schema's id.
* :mod:`~k2_etl.wire.avro_encode` / :mod:`~k2_etl.wire.avro_decode`: Confluent-framed Avro,
  vectorized both ways.
* :mod:`~k2_etl.wire.duckdb_conn`: the one way to open a DuckDB connection (UTC, offline
  extensions, warehouse credentials).
* :mod:`~k2_etl.wire.retry`: the one retry policy for commits that lose a race.

It imports only ``config`` and ``errors``: what records and tables K2 has is said elsewhere.
"""
