"""``k2 init``: create what the pipeline writes to — Kafka topics, the Iceberg namespace and tables.

Idempotent, and the same against the local platform and production: topics
that exist are left alone; tables that exist are only evolved when their
``.avsc`` gained columns. Safe to run concurrently (two `k2 up`, two Airflow
tasks): the catalog's check-then-create steps can lose a race to the other
process, and a second attempt then finds everything in place.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random

from k2_etl.config import Settings
from k2_etl.errors import UnavailableError
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.tables import TableStatus, ensure_tables
from k2_etl.schemas import topic_names
from k2_etl.wire.kafka import ensure_topics


@dataclass(frozen=True)
class InitReport:
    topics: dict[str, bool]  # topic -> created now
    tables: list[TableStatus]

    def to_dict(self) -> dict[str, object]:
        return {
            "topics": [{"name": n, "action": "created" if c else "unchanged"} for n, c in self.topics.items()],
            "tables": [{"name": t.name, "action": t.action, "metadata_location": t.location} for t in self.tables],
        }


def init_platform(settings: Settings) -> InitReport:
    topics = ensure_topics(settings, topic_names(settings))
    return InitReport(topics, _ensure_tables(settings))


@retry(
    retry=retry_if_exception_type((UnavailableError, SQLAlchemyError)),
    stop=stop_after_attempt(3),
    wait=wait_random(0.05, 0.5),
    reraise=True,
)
def _ensure_tables(settings: Settings) -> list[TableStatus]:
    return ensure_tables(open_catalog(settings), settings.namespace)
