"""Avro records through the real local broker, serialized with schemas from the local registry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2_etl.config import Settings
from k2_etl.schemas import TRADE
from k2_etl.wire.kafka import admin_client, client_config
from tests.helpers import poll


def trade(i: int) -> dict[str, object]:
    t0 = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)
    return {
        "event_id": f"ev-{i:05d}",
        "symbol": ["BHP", "CBA", "CSL"][i % 3],
        "exchange": "ASX",
        "event_time": t0 + timedelta(microseconds=1_000_003 * i),
        "price": Decimal("45.12345678") + Decimal(i) / Decimal(100),
        "size": Decimal(100 + i),
        "currency": "AUD",
        "sequence_number": i,
        "trading_date": date(2026, 11, 25),  # Sydney's day
        "conditions": ["XT"] if i % 7 == 0 else [],
        "venue": None,
        "buyer_id": None,
        "quality_flags": [],
        "source": "test",
        "load_id": None,
        "ingest_time": t0,
    }


@pytest.fixture
def registry(platform_settings: Settings) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient({"url": platform_settings.schema_registry_url}) as client:
        yield client


def test_trades_round_trip_exactly(platform_settings: Settings, registry: SchemaRegistryClient) -> None:
    topic = f"test.trades.{uuid.uuid4().hex[:8]}"
    admin = admin_client(platform_settings)
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(timeout=15)
    serializer = AvroSerializer(registry, TRADE.schema_str)
    sent = [trade(i) for i in range(500)]
    producer = Producer(client_config(platform_settings, **{"enable.idempotence": True, "linger.ms": 5}))
    for value in sent:
        payload = serializer(value, SerializationContext(topic, MessageField.VALUE))
        producer.produce(topic, key=str(value["symbol"]).encode(), value=payload)
    assert producer.flush(30) == 0

    deserializer = AvroDeserializer(registry)
    consumer = Consumer(client_config(platform_settings, **{"group.id": f"test-{topic}", "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    received: list[dict[str, object]] = []

    def drain() -> bool:
        for message in consumer.consume(num_messages=500, timeout=0.5):
            assert message.error() is None, message.error()
            received.append(deserializer(message.value(), SerializationContext(topic, MessageField.VALUE)))
        return len(received) >= len(sent)

    try:
        poll(drain, timeout=30, what="all 500 trades")
    finally:
        consumer.close()
    by_id = {str(r["event_id"]): r for r in received}
    assert len(by_id) == len(sent)
    assert [by_id[str(v["event_id"])] for v in sent] == sent  # decimals exact, timestamps to the microsecond
    for symbol in ("BHP", "CBA", "CSL"):  # one key, one partition: order kept
        assert [r["sequence_number"] for r in received if r["symbol"] == symbol] == [
            v["sequence_number"] for v in sent if v["symbol"] == symbol
        ]
    assert isinstance(received[0]["price"], Decimal)
    assert registry.get_latest_version(f"{topic}-value").schema_id > 0
