"""The streaming consumer: Kafka topics → Iceberg tables, exactly once (`k2 consume`)."""
