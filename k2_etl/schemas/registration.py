"""Register K2's schemas in the schema registry at ``K2_SCHEMA_REGISTRY_URL``.

Talks to any Confluent-compatible registry through confluent-kafka's own
client. Registration is all or nothing: every schema is checked first, and
nothing is registered when one is incompatible, with the offending field named.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import avro.schema
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from k2_etl.config import Settings
from k2_etl.errors import SchemaError
from k2_etl.schemas import TOPIC_RECORD_TYPES, RecordType
from k2_etl.schemas.compatibility import incompatibilities
from k2_etl.wire.registry import TRANSPORT_ERRORS, registry_client, registry_error, unreachable

SUBJECT_NOT_FOUND = 40401
SUBJECT_LEVEL_NOT_CONFIGURED = 40408

SchemaState = Literal["new", "registered", "compatible", "incompatible"]


@dataclass(frozen=True)
class SchemaCheck:
    """Where one record type's schema stands against its subject."""

    record_type: str
    subject: str
    state: SchemaState
    schema_id: int | None = None
    version: int | None = None
    problems: tuple[str, ...] = ()
    changed: bool = False  # registered by this call (a new subject or a new version)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _compatibility_level(client: SchemaRegistryClient, subject: str) -> str:
    try:
        return client.get_compatibility(subject)
    except SchemaRegistryError as exc:
        if exc.error_code not in (SUBJECT_NOT_FOUND, SUBJECT_LEVEL_NOT_CONFIGURED):
            raise
        return client.get_compatibility()


def _explain(client: SchemaRegistryClient, subject: str, schema: avro.schema.Schema) -> tuple[str, ...]:
    """Name the fields that break compatibility, by re-running the check locally.

    The registry's verdict is authoritative but confluent-kafka's client only
    returns a boolean, so the explanation is computed here with the same
    checker against the registered versions.
    """
    level = _compatibility_level(client, subject)
    versions = [client.get_version(subject, v) for v in client.get_versions(subject)]
    existing = [avro.schema.parse(v.schema.schema_str) for v in versions if v.schema.schema_str]
    problems = incompatibilities(level, schema, existing)
    return tuple(problems) or (f"the registry rejects it under {level}",)


def check_one(client: SchemaRegistryClient, settings: Settings, record: RecordType) -> SchemaCheck:
    subject = record.subject(settings)
    schema = Schema(record.schema_str, schema_type="AVRO")
    try:
        found = client.lookup_schema(subject, schema)
        return SchemaCheck(record.name, subject, "registered", found.schema_id, found.version)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 404:
            raise
        if exc.error_code == SUBJECT_NOT_FOUND:
            return SchemaCheck(record.name, subject, "new")
    if client.test_compatibility_all_versions(subject, schema):
        return SchemaCheck(record.name, subject, "compatible")
    problems = _explain(client, subject, avro.schema.parse(record.schema_str))
    return SchemaCheck(record.name, subject, "incompatible", problems=problems)


def check_schemas(settings: Settings, records: Iterable[RecordType] = TOPIC_RECORD_TYPES) -> list[SchemaCheck]:
    """Where each schema stands, registering nothing."""
    try:
        with registry_client(settings) as client:
            return [check_one(client, settings, record) for record in records]
    except TRANSPORT_ERRORS as exc:
        raise unreachable(settings, exc) from None
    except SchemaRegistryError as exc:
        raise registry_error(settings, exc) from None


def incompatible_summary(checks: Iterable[SchemaCheck]) -> str | None:
    bad = [c for c in checks if c.state == "incompatible"]
    if not bad:
        return None
    return "; ".join(f"{c.subject} ({c.record_type}.avsc) is incompatible: {' | '.join(c.problems)}" for c in bad)


def register_schemas(settings: Settings, records: Iterable[RecordType] = TOPIC_RECORD_TYPES) -> list[SchemaCheck]:
    """Register every schema not yet registered; idempotent, all or nothing.

    Raises:
        SchemaError: a schema is incompatible (nothing was registered), naming the field.
        UnavailableError: the registry cannot be reached.
    """
    records = list(records)
    checks = check_schemas(settings, records)
    summary = incompatible_summary(checks)
    if summary:
        raise SchemaError(summary + "; nothing was registered")
    out: list[SchemaCheck] = []
    try:
        with registry_client(settings) as client:
            for record, check in zip(records, checks, strict=True):
                if check.state == "registered":
                    out.append(check)
                    continue
                schema = Schema(record.schema_str, schema_type="AVRO")
                client.register_schema(check.subject, schema)
                found = client.lookup_schema(check.subject, schema)
                out.append(
                    SchemaCheck(record.name, check.subject, "registered", found.schema_id, found.version, changed=True)
                )
    except TRANSPORT_ERRORS as exc:
        raise unreachable(settings, exc) from None
    except SchemaRegistryError as exc:
        raise registry_error(settings, exc, "registering failed: ") from None
    return out
