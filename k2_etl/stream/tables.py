"""The tables the consumer writes, and what it keeps in memory about them.

Loaded once, by the first step that reaches the catalog (the catalog may be down when the
process starts): one data table per topic with its id index (deduplication) and, for tables
with sequence numbers, its sequence tracker, plus the ``sequence_events`` table. What is kept
in memory is a cache of the tables: :meth:`ConsumerTables.clear` drops it whenever it may
hold something that did not land (a dropped batch, partitions that moved).
"""

from __future__ import annotations

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from k2_etl.config import Settings
from k2_etl.errors import K2Error
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.tables import TABLES_BY_RECORD, tables_by_topic
from k2_etl.schemas import SEQUENCE_EVENT
from k2_etl.stream.dedup import IdIndex
from k2_etl.stream.sequences import SequenceTracker


class ConsumerTables:
    def __init__(self, settings: Settings, record_types: dict[str, str]) -> None:
        """``record_types``: the record type of each topic consumed. Nothing is loaded yet."""
        self.settings = settings
        self.record_types = record_types
        self.catalog: Catalog | None = None
        self.by_topic: dict[str, Table] = {}
        self.indexes: dict[str, IdIndex] = {}
        self.trackers: dict[str, SequenceTracker] = {}
        self.sequence_events: Table | None = None

    def open(self) -> None:
        """Load the tables (once): the first step to reach the catalog does it."""
        if self.sequence_events is not None:
            return
        catalog = open_catalog(self.settings)
        table_of = tables_by_topic(self.settings)
        try:
            tables = {t: catalog.load_table((self.settings.namespace, table_of[t].name)) for t in self.record_types}
            events_table = TABLES_BY_RECORD[SEQUENCE_EVENT.name].name
            events = catalog.load_table((self.settings.namespace, events_table))
        except NoSuchTableError as exc:
            raise K2Error(f"{exc}; run `k2 init`") from None
        for t in self.record_types:
            definition = table_of[t]
            assert definition.id_column is not None, f"{definition.name} is not landed from a topic"
            self.indexes[t] = IdIndex(tables[t], definition.id_column, definition.day_column)
            if "sequence_number" in tables[t].schema().column_names:
                self.trackers[t] = SequenceTracker(tables[t], events, self.record_types[t])
        self.by_topic, self.sequence_events, self.catalog = tables, events, catalog

    def clear(self) -> None:
        """Partitions moved or a batch was dropped: ids and sequence state reload from the tables."""
        for index in self.indexes.values():
            index.clear()
        for tracker in self.trackers.values():
            tracker.clear()

    def name(self, topic: str) -> str:
        """The table of ``topic`` (the metrics' label), or the topic while the tables are not loaded."""
        return self.by_topic[topic].name()[-1] if topic in self.by_topic else topic
