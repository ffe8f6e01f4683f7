"""The dead-letter topic as the consumer writes to it: rejects produced, and known delivered.

A reject must be durable in Kafka before the offsets move past its message (the checkpoint
sends them first), so :meth:`DeadLetterSink.send` waits for every delivery report of its own
try: a message librdkafka gave up on is not in ``flush``'s count, only in its report. Every try
produces the batch's rejects again; the ``rejects`` table drops the copies by ``reject_id``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from k2_etl.config import Settings
from k2_etl.errors import SchemaError, UnavailableError
from k2_etl.records import encode_reject
from k2_etl.schemas import REJECT
from k2_etl.wire.avro_encode import confluent_prefix
from k2_etl.wire.kafka import make_producer
from k2_etl.wire.registry import schema_ids

DELIVERY_SECONDS = 30  # how long a try waits for the broker to take its dead letters


class DeadLetterSink:
    """Produces reject records to ``K2_TOPIC_PREFIX + rejects``, framed with the registered reject schema."""

    def __init__(self, settings: Settings) -> None:
        """Nothing here touches a dependency (the producer connects in the background)."""
        self.settings = settings
        self.topic = REJECT.topic_name(settings)
        self.producer = make_producer(settings)
        self._prefix: bytes | None = None  # looked up at the first dead letter (schemas may come later)

    def send(self, rejects: Iterable[dict[str, Any]]) -> None:
        """Produce ``rejects`` and wait until Kafka has them all; :class:`UnavailableError` otherwise."""
        failed: list[str] = []  # delivery reports of this try
        for reject in rejects:
            if self._prefix is None:
                self._prefix = confluent_prefix(self._schema_id())
            self.producer.produce(
                self.topic,
                encode_reject(self._prefix, reject),
                (reject["kafka_topic"] or "").encode(),
                on_delivery=lambda err, _msg: failed.append(err.str()) if err is not None else None,
            )
            self.producer.poll(0)
        if self.producer.flush(DELIVERY_SECONDS) > 0 or failed:
            why = failed[0] if failed else f"not delivered within {DELIVERY_SECONDS} s"
            raise UnavailableError(
                f"the Kafka broker at K2_KAFKA_BOOTSTRAP={self.settings.kafka_bootstrap} did not take the dead "
                f"letters ({why})",
                "broker",
            )

    def close(self) -> None:
        self.producer.flush(10)

    def _schema_id(self) -> int:
        try:
            return schema_ids(self.settings, [REJECT])[REJECT.name]
        except SchemaError as exc:  # not registered: the registry is what this step waits for
            raise UnavailableError(str(exc), "registry") from None
