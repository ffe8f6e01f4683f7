"""
### k2_schema_registration

Registers every K2 record type's Avro schema (`k2_etl/schemas/avro/*.avsc`) in the schema
registry, under `<topic>-value` (Confluent's TopicNameStrategy): what the loader and the consumer
need before a record is produced. Idempotent: an unchanged schema is left alone, a compatible
change becomes a new version. All or nothing: when one schema is incompatible with its subject's
compatibility level, nothing is registered and the task fails at once (no retries), naming the
subject and the field. Triggered by hand or after a deployment (no schedule); the daily load
checks the same schemas before it loads. The same as `k2 schemas register`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag
from k2_airflow.operators import RegisterSchemasOperator


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    doc_md=__doc__,
    tags=["k2", "schemas"],
    default_args={
        "owner": "k2",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),  # an unreachable registry
        "execution_timeout": timedelta(minutes=10),
    },
)
def k2_schema_registration() -> None:
    RegisterSchemasOperator(task_id="register_schemas")


k2_schema_registration()
