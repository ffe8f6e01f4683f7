"""Batch jobs, run by Airflow or by hand: replay a range, roll a load back, check a day's quality.

They reuse the pipeline's rooms (``ingest`` to parse vendor files again, ``wire`` to read
Kafka back, ``lake`` to replace what tables hold) and are used by the CLI and the DAGs'
operators; the streaming consumer (``stream``) never needs them.

The replay's choices live here, importable without the jobs' dependencies (pyiceberg, DuckDB),
so the replay DAG's params offer exactly them without slowing every parse of the DAG file.
"""

from __future__ import annotations

from typing import Literal

ReplaySource = Literal["kafka", "landing"]
REPLAY_SOURCES: tuple[ReplaySource, ...] = ("kafka", "landing")  # the topic, or the vendor files
REPLAYABLE = ("trades", "quotes")  # tables whose rows carry an event time and an id to rebuild by
