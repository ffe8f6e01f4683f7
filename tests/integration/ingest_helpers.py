"""Helpers for batch-ingestion tests: run loads and read back exactly what they wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2_etl.config import Settings
from k2_etl.wire.kafka import client_config
from tests.helpers import env_of, poll, run_k2


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    headers: dict[str, bytes]
    value: dict[str, Any]


def load(settings: Settings, *args: str, expect_rc: int | None = 0, cwd: Path | None = None) -> dict[str, Any]:
    """`k2 load ... --json` as a user runs it; the parsed report."""
    env = env_of(settings)
    env["K2_INGEST_METRICS_PORT"] = "0"
    result = run_k2(env, "load", *args, "--json", cwd=cwd)
    if expect_rc is not None:
        assert result.returncode == expect_rc, result.stderr + result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def file_result(report: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [f for f in report["files"] if f["file"].endswith(name)]
    assert len(matches) == 1, (name, [f["file"] for f in report["files"]])
    return matches[0]


def read_offsets(settings: Settings, offsets: dict[str, dict[str, list[int]]]) -> list[Message]:
    """Every message in the given offset ranges (as a load report or manifest records them), decoded."""
    wanted = {(t, int(p)): (span[0], span[1]) for t, parts in offsets.items() for p, span in parts.items()}
    if not wanted:
        return []
    consumer = Consumer(client_config(settings, **{"group.id": "k2-tests", "enable.auto.commit": False}))
    consumer.assign([TopicPartition(t, p, first) for (t, p), (first, _) in wanted.items()])
    out: list[Message] = []
    remaining = {key: last - first + 1 for key, (first, last) in wanted.items()}
    with SchemaRegistryClient({"url": settings.schema_registry_url}) as registry:
        decode = AvroDeserializer(registry)

        def drain() -> bool:
            for m in consumer.consume(num_messages=10_000, timeout=0.2):
                assert m.error() is None, m.error()
                key = (m.topic(), m.partition())
                if key not in wanted or m.offset() > wanted[key][1]:
                    continue
                value = decode(m.value(), SerializationContext(m.topic(), MessageField.VALUE))
                out.append(
                    Message(m.topic(), m.partition(), m.offset(), m.key(), m.timestamp()[1],
                            dict(m.headers() or []), value)
                )  # fmt: skip
                remaining[key] -= 1
            return all(v <= 0 for v in remaining.values())

        try:
            poll(drain, timeout=60, what=f"messages {wanted}")
        finally:
            consumer.close()
    return out


def messages_of(settings: Settings, report: dict[str, Any], topic_suffix: str) -> list[Message]:
    offsets: dict[str, dict[str, list[int]]] = {}
    for f in report["files"]:
        for topic, parts in f["offsets"].items():
            if topic == settings.topic_prefix + topic_suffix:
                for p, span in parts.items():
                    cur = offsets.setdefault(topic, {}).get(p)
                    offsets[topic][p] = [min(cur[0], span[0]), max(cur[1], span[1])] if cur else list(span)
    return read_offsets(settings, offsets)
