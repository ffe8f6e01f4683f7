"""What batch loads write to Kafka, and the record of it.

One delivery callback per message records the offset range written per topic and partition
(what the load manifest stores) and counts failures. The producer itself comes from
:func:`k2_etl.wire.kafka.make_producer`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from k2_etl.errors import K2Error

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]


class Deliveries:
    """Delivery callback: offset ranges per topic/partition, and failures (with the first error)."""

    __slots__ = ("errors", "first_error", "ranges")

    def __init__(self) -> None:
        self.ranges: dict[tuple[str, int], list[int]] = {}
        self.errors = 0
        self.first_error: str | None = None

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors += 1
            if self.first_error is None:
                self.first_error = err.str()
            return
        key = (msg.topic() or "", msg.partition() or 0)
        offset = msg.offset() or 0
        span = self.ranges.get(key)
        if span is None:
            self.ranges[key] = [offset, offset]
        elif offset < span[0]:
            span[0] = offset
        elif offset > span[1]:
            span[1] = offset

    def offsets(self) -> dict[str, dict[str, list[int]]]:
        out: dict[str, dict[str, list[int]]] = {}
        for (topic, partition), span in sorted(self.ranges.items()):
            out.setdefault(topic, {})[str(partition)] = list(span)
        return out


#: One message in this many (per block) carries the produced-at header (k2_etl.records.PRODUCED_AT_HEADER).
STAMP_EVERY = 64


def produce_all(
    producer: Producer,
    topic: str,
    values: Sequence[bytes],
    keys: Sequence[bytes],
    timestamps_ms: Sequence[int],
    headers: Headers,
    deliveries: Deliveries,
    stamped: Headers | None = None,
) -> None:
    """Queue every message; wait for room when librdkafka's queue is full (back-pressure).

    ``stamped``: the headers of every :data:`STAMP_EVERY`-th message, the first included (``headers``
    plus when it was produced, for the consumer's freshness): on every message, the header's ~28
    bytes cost a load 5-12% of its rate (measured against the same run without it)."""
    produce = producer.produce
    poll = producer.poll
    for i in range(len(values)):
        these = stamped if stamped is not None and i % STAMP_EVERY == 0 else headers
        while True:
            try:
                produce(topic, values[i], keys[i], timestamp=timestamps_ms[i], headers=these, on_delivery=deliveries)
                break
            except BufferError:  # librdkafka's queue is full: serve deliveries until there is room
                poll(0.1)
            except KafkaException as exc:  # e.g. a message larger than the broker accepts
                raise K2Error(
                    f"Kafka refused a message for {topic}: {exc.args[0].str() if exc.args else exc}"
                ) from None
        if i & 0x3FFF == 0:
            poll(0)
