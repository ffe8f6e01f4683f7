"""Decode Confluent-framed Avro messages with the schemas the registry holds.

A message names its writer schema by id (magic byte 0, then a 4-byte id);
unknown ids are fetched once and cached, so a schema registered mid-stream is
picked up on its first message. Anything that cannot be decoded raises
:class:`Undecodable` with the reason, for the dead letters.
"""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from k2_etl.errors import K2Error, UnavailableError


class Undecodable(K2Error):
    """A message value that is not Avro K2 can read (the reason says why)."""


class Decoder:
    def __init__(self, client: SchemaRegistryClient) -> None:
        self._client = client
        self._schemas: dict[int, Any] = {}

    def decode(self, value: bytes | None) -> tuple[int, dict[str, Any]]:
        """The writer schema id and the record."""
        if value is None or len(value) < 5 or value[0] != 0:
            first = "no value" if not value else f"first byte 0x{value[0]:02x}, length {len(value)}"
            raise Undecodable(f"not Confluent-framed Avro ({first}; expected magic byte 0x00 and a schema id)")
        schema_id = int.from_bytes(value[1:5], "big")
        schema = self._schema(schema_id)
        try:
            record = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)
        except Exception as exc:  # fastavro raises whatever the bytes provoke (EOFError, UnicodeDecodeError...)
            raise Undecodable(f"bytes do not decode with schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        if not isinstance(record, dict):
            raise Undecodable(f"schema id {schema_id} is not a record schema")
        return schema_id, record

    def _schema(self, schema_id: int) -> Any:
        if schema_id not in self._schemas:
            try:
                schema = self._client.get_schema(schema_id)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    raise Undecodable(f"schema id {schema_id} is unknown to the schema registry") from None
                raise UnavailableError(f"schema registry error {exc.error_code}: {exc.error_message}") from None
            except Exception as exc:  # the client's transport errors: the registry is down, retry later
                raise UnavailableError(f"schema registry unreachable ({type(exc).__name__}: {exc})") from None
            self._schemas[schema_id] = fastavro.parse_schema(json.loads(schema.schema_str or "null"))
        return self._schemas[schema_id]
