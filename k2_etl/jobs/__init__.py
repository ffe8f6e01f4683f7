"""Batch jobs, run by Airflow or by hand: replay a range, roll a load back, check a day's quality.

They reuse the pipeline's rooms (``ingest`` to parse vendor files again, ``wire`` to read
Kafka back, ``lake`` to replace what tables hold) and are used by the CLI and the DAGs'
operators; the streaming consumer (``stream``) never needs them.
"""
