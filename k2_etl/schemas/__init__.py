"""Record types and their Avro schemas: the contracts everything else derives from.

Each record type is declared once, as an ``.avsc`` file in ``avro/``. Kafka
subjects, Iceberg table columns and (later) validation and API fields are all
derived from these files; nothing restates a column list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from k2_etl.config import Settings


@dataclass(frozen=True)
class RecordType:
    """A kind of record K2 carries.

    Attributes:
        name: the ``.avsc`` file stem, e.g. ``trade``.
        topic: suffix of the Kafka topic carrying it (after ``K2_TOPIC_PREFIX``),
            or ``None`` when the record never travels through Kafka.
    """

    name: str
    topic: str | None

    @property
    def schema_str(self) -> str:
        return _schema_text(self.name)

    @property
    def schema(self) -> dict[str, Any]:
        return json.loads(self.schema_str)

    def topic_name(self, settings: Settings) -> str:
        if self.topic is None:
            raise ValueError(f"record type {self.name!r} has no Kafka topic")
        return settings.topic_prefix + self.topic

    def subject(self, settings: Settings) -> str:
        """Registry subject of the topic's values (Confluent's TopicNameStrategy)."""
        return f"{self.topic_name(settings)}-value"


@cache
def _schema_text(name: str) -> str:
    return resources.files(__package__).joinpath("avro", f"{name}.avsc").read_text(encoding="utf-8")


TRADE = RecordType("trade", topic="trades")
QUOTE = RecordType("quote", topic="quotes")
REFERENCE_DATA = RecordType("reference_data", topic="reference_data")
REJECT = RecordType("reject", topic="dead_letters")
SEQUENCE_EVENT = RecordType("sequence_event", topic=None)
LOAD_MANIFEST = RecordType("load_manifest", topic=None)

RECORD_TYPES: tuple[RecordType, ...] = (TRADE, QUOTE, REFERENCE_DATA, REJECT, SEQUENCE_EVENT, LOAD_MANIFEST)
BY_NAME: dict[str, RecordType] = {r.name: r for r in RECORD_TYPES}
#: Record types that travel through Kafka, hence are registered in the schema registry.
TOPIC_RECORD_TYPES: tuple[RecordType, ...] = tuple(r for r in RECORD_TYPES if r.topic is not None)


def topic_names(settings: Settings) -> list[str]:
    """K2's Kafka topics under ``settings``' prefix."""
    return [record.topic_name(settings) for record in TOPIC_RECORD_TYPES]
