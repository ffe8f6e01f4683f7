"""``k2 init``: create what the pipeline writes to — Kafka topics, the Iceberg namespace and tables.

Idempotent, and the same against the local platform and production: topics
that exist are left alone; tables that exist are only evolved when their
``.avsc`` gained columns.
"""

from __future__ import annotations

from dataclasses import dataclass

from k2_etl.config import Settings
from k2_etl.kafka import ensure_topics
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.tables import TableStatus, ensure_tables


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
    topics = ensure_topics(settings)
    tables = ensure_tables(open_catalog(settings), settings.namespace)
    return InitReport(topics, tables)
