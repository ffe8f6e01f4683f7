"""Kafka clients configured from settings (admin, producer, consumer), topic ids and creation.

Everything here speaks plain Kafka protocol through confluent-kafka, so it is
the same against the local broker and Apache Kafka. Extra librdkafka
properties (security, SASL, ...) come from ``K2_KAFKA_CONFIG``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from k2_etl.config import Settings
from k2_etl.errors import ConfigError, K2Error, UnavailableError

log = logging.getLogger(__name__)


def client_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Base librdkafka configuration: bootstrap servers, user overrides, then ``extra``."""
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap}
    config.update(settings.kafka_config)
    config.update(extra)
    return config


# librdkafka otherwise prints every refused connection to stderr; health
# checks and the CLI report unreachability themselves, in one line.
_QUIET = {"logger": log, "error_cb": lambda err: log.debug("kafka: %s", err)}


def _invalid(exc: KafkaException) -> ConfigError:
    return ConfigError(f"invalid setting K2_KAFKA_CONFIG: {exc.args[0].str() if exc.args else exc}")


def admin_client(settings: Settings) -> AdminClient:
    """An admin client, or :class:`ConfigError` when ``K2_KAFKA_CONFIG`` holds a property librdkafka rejects."""
    try:
        return AdminClient(client_config(settings, **_QUIET))
    except KafkaException as exc:
        raise _invalid(exc) from None


def cluster_metadata(settings: Settings, timeout: float = 5.0) -> ClusterMetadata:
    """Broker metadata, or :class:`UnavailableError` when no broker answers within ``timeout``."""
    admin = admin_client(settings)
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise UnavailableError(
            f"no Kafka broker answered at K2_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} within {timeout:g} s "
            f"({exc.args[0].str() if exc.args else exc}); is it running? (k2 up / k2 status)",
            "broker",
        ) from None


# Idempotent (no duplicates from retries), acks=all, lz4, large batches.
PRODUCER_SETTINGS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    # Bounded: a full queue blocks the load (back-pressure) instead of growing memory.
    "queue.buffering.max.messages": 100_000,
    "queue.buffering.max.kbytes": 32_768,
}


def make_producer(settings: Settings) -> Producer:
    """The producer of loads and dead letters; :class:`ConfigError` for a property librdkafka rejects."""
    try:
        return Producer(client_config(settings, **PRODUCER_SETTINGS, logger=log))
    except KafkaException as exc:
        raise _invalid(exc) from None


def make_consumer(settings: Settings, group: str, **extra: Any) -> Consumer:
    """A consumer in ``group`` that never commits offsets to Kafka (K2 keeps them in the tables, or
    reads ranges it was given); :class:`ConfigError` for a property librdkafka rejects."""
    try:
        return Consumer(client_config(settings, **{"group.id": group, "enable.auto.commit": False, **extra}))
    except KafkaException as exc:
        raise _invalid(exc) from None


#: How librdkafka prints an unknown topic id (Kafka before 2.8 has none).
_NO_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"


def topic_ids(settings: Settings, topics: Iterable[str], admin: AdminClient | None = None,
              timeout: float = 10.0) -> dict[str, str]:  # fmt: skip
    """The broker's id of each of ``topics``: a topic deleted and created again (or a memory-only
    broker restarted) has a new one, which is how stored offsets are known to be of another life
    of the topic. Topics that do not exist, or a broker without topic ids, are left out.
    :class:`UnavailableError` when the broker does not answer."""
    wanted = sorted(set(topics))
    if not wanted:
        return {}
    admin = admin or admin_client(settings)
    ids: dict[str, str] = {}
    try:
        futures = admin.describe_topics(TopicCollection(wanted), request_timeout=timeout)
        for name, future in futures.items():
            try:
                topic_id = str(future.result(timeout=timeout).topic_id)
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue
                raise
            if topic_id != _NO_TOPIC_ID:
                ids[name] = topic_id
    except (KafkaException, TimeoutError) as exc:
        why = exc.args[0].str() if isinstance(exc, KafkaException) and exc.args else f"no answer within {timeout:g} s"
        raise UnavailableError(
            f"cannot describe topics {', '.join(wanted)} at K2_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} ({why})",
            "broker",
        ) from None
    return ids


def ensure_topics(settings: Settings, wanted: list[str], timeout: float = 15.0) -> dict[str, bool]:
    """Create the topics of ``wanted`` that do not exist yet. Returns ``{topic: created}``; idempotent."""
    existing = set(cluster_metadata(settings).topics)
    missing = [
        NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=settings.topic_replication_factor)
        for name in wanted
        if name not in existing
    ]
    created: dict[str, bool] = {name: False for name in wanted}
    if missing:
        admin = admin_client(settings)  # must outlive the futures, or librdkafka cancels them
        for name, future in admin.create_topics(missing, request_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
                created[name] = True
            except KafkaException as exc:
                error = exc.args[0]
                if error.name() != "TOPIC_ALREADY_EXISTS":  # lost a race with another `k2 init`
                    raise K2Error(
                        f"cannot create Kafka topic {name}: {error.str()} "
                        "(check K2_TOPIC_PARTITIONS and K2_TOPIC_REPLICATION_FACTOR against the cluster)"
                    ) from None
    return created
