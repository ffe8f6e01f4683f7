"""`k2 consume` end to end: real broker, registry and Iceberg tables; what lands is read back."""

from __future__ import annotations

import copy
import csv
import io
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import httpx
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2_etl.config import Settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import committed_offsets
from k2_etl.schemas import TRADE
from k2_etl.wire.kafka import client_config
from tests.helpers import REPO, a_trade, env_of, free_port, poll, run_k2
from tests.integration.ingest_helpers import load, messages_of
from tests.integration.stream_helpers import ConsumerProcess, landed_counts, table

SAMPLE = REPO / "data" / "sample" / "k2"
TABLE_OF_TOPIC = {"trades": "trades", "quotes": "quotes", "reference_data": "reference_data"}


def consumed_all(settings: Settings, report: dict[str, Any]) -> bool | None:
    """Whether the tables record offsets past every message of a load's ``report``."""
    ends: dict[str, dict[int, int]] = {}
    for f in report["files"]:
        for topic, parts in f["offsets"].items():
            for p, (_, last) in parts.items():
                ends.setdefault(topic, {})[int(p)] = max(ends.get(topic, {}).get(int(p), 0), last + 1)
    catalog = open_catalog(settings)
    for topic, partitions in ends.items():
        name = TABLE_OF_TOPIC[topic.removeprefix(settings.topic_prefix)]
        recorded = committed_offsets(catalog.load_table((settings.namespace, name)), settings.stream_group)
        if recorded.get(topic) != partitions:
            return None
    return True


def test_a_load_lands_exactly_once_and_a_restart_resumes_after_it(ready: Settings, tmp_path: Path) -> None:
    report = load(ready, str(SAMPLE), "--format", "k2")
    produced = {topic: messages_of(ready, report, topic) for topic in TABLE_OF_TOPIC}
    expected = {TABLE_OF_TOPIC[t]: len(m) for t, m in produced.items()}
    consumer = ConsumerProcess(ready, tmp_path / "consume.log")
    try:
        poll(lambda: landed_counts(ready, list(expected)) == expected or None, timeout=90, what="the load to land")
        base = f"http://127.0.0.1:{ready.stream_metrics_port}"
        health = httpx.get(f"{base}/healthz", timeout=5)
        caught_up = [f'k2_stream_lag_messages{{partition="{p}",topic="{TRADE.topic_name(ready)}"}} 0.0'
                     for p in range(ready.topic_partitions)]  # fmt: skip
        lag = "the lag gauge to show every trades partition caught up"
        poll(lambda: all(c in httpx.get(f"{base}/metrics", timeout=5).text for c in caught_up) or None, 30, lag)
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        rc, counts = consumer.stop()
    finally:
        consumer.kill()
    assert rc == 0
    total = sum(expected.values())
    assert health.status_code == 200 and health.json()["status"] == "healthy", health.text
    assert health.json()["landed"] == total and health.json()["group"] == ready.stream_group
    assert health.json()["partitions"] == 4 * ready.topic_partitions  # trades, quotes, reference data, dead letters
    for name, count in expected.items():
        assert f'k2_stream_records_landed_total{{table="{name}"}} {float(count)}' in metrics
        assert f'k2_stream_records_consumed_total{{table="{name}"}} {float(count)}' in metrics
    assert "k2_stream_commit_duration_seconds_bucket" in metrics and "k2_stream_freshness_seconds_count" in metrics
    assert counts == {"consumed": total, "landed": total, "rejected": 0, "deduplicated": 0}
    for topic, messages in produced.items():
        rows = table(ready, TABLE_OF_TOPIC[topic])
        if "event_id" in rows.column_names:
            landed = Counter(rows.column("event_id").to_pylist())
            assert landed == Counter(m.value["event_id"] for m in messages)  # each exactly once
            assert max(landed.values()) == 1
        # the table records the next offset of every partition, as the broker numbered them
        last = {}
        for m in messages:
            last[m.partition] = max(last.get(m.partition, -1), m.offset)
        recorded = committed_offsets(open_catalog(ready).load_table((ready.namespace, TABLE_OF_TOPIC[topic])),
                                     ready.stream_group)  # fmt: skip
        assert recorded == {ready.topic_prefix + topic: {p: o + 1 for p, o in last.items()}}
    # values survive the trip: a trade's decimals and times as the CSV had them
    trades = {r["event_id"]: r for r in table(ready, "trades").to_pylist()}
    for message in produced["trades"][:50]:
        row = trades[message.value["event_id"]]
        for name in ("symbol", "exchange", "event_time", "price", "size", "sequence_number"):
            assert row[name] == message.value[name]

    # A restart resumes where the tables say: it lands nothing more.
    snapshots = len(open_catalog(ready).load_table((ready.namespace, "trades")).snapshots())
    again = ConsumerProcess(ready, tmp_path / "again.log")
    try:
        poll(lambda: again.log_text().count("resuming at") >= 4 * ready.topic_partitions or None,
             timeout=60, what="partitions assigned")  # fmt: skip
        assert "assigned" in again.log_text()
        rc, counts = again.stop(signal.SIGINT)
    finally:
        again.kill()
    assert rc == 0 and counts == {"consumed": 0, "landed": 0, "rejected": 0, "deduplicated": 0}
    assert len(open_catalog(ready).load_table((ready.namespace, "trades")).snapshots()) == snapshots
    assert landed_counts(ready, list(expected)) == expected


def test_poison_messages_go_to_the_dead_letters_and_the_stream_goes_on(ready: Settings, tmp_path: Path) -> None:
    topic = TRADE.topic_name(ready)
    producer = Producer(client_config(ready))
    with SchemaRegistryClient({"url": ready.schema_registry_url}) as registry:
        serialize = AvroSerializer(registry, TRADE.schema_str, conf={"auto.register.schemas": False})
        good = serialize(a_trade(), SerializationContext(topic, MessageField.VALUE))
        invalid = serialize(
            {**a_trade(), "event_id": "e2", "price": Decimal("-1")}, SerializationContext(topic, MessageField.VALUE)
        )
    poison: list[tuple[bytes, str]] = [
        (b"not avro at all", "not Confluent-framed Avro"),
        (b"\x00" + (99_999).to_bytes(4, "big") + b"\x02", "schema id 99999 is unknown"),
        (good[:5] + b"\xff", "do not decode with schema id"),
        (invalid, "field price: -1.00000000 is not positive"),
    ]
    for value, _ in poison:
        producer.produce(topic, value, b"BHP", headers=[("k2-load-id", b"L1")])
    producer.produce(topic, good, b"BHP")
    assert producer.flush(30) == 0
    consumer = ConsumerProcess(ready, tmp_path / "consume.log")
    try:
        poll(lambda: landed_counts(ready, ["trades", "rejects"]) == {"trades": 1, "rejects": 4} or None,
             timeout=90, what="the trade and the four rejects to land")  # fmt: skip
        rc, counts = consumer.stop()
    finally:
        consumer.kill()
    assert rc == 0
    # consumed: 5 trades-topic messages + 4 dead letters; landed: 1 trade + 4 reject rows; rejected: 4
    assert counts == {"consumed": 9, "landed": 5, "rejected": 4, "deduplicated": 0}
    rejects: list[dict[str, Any]] = sorted(table(ready, "rejects").to_pylist(), key=lambda r: r["kafka_offset"])
    for (value, why), reject in zip(poison, rejects, strict=True):
        assert why in reject["reason"], reject["reason"]
        assert reject["raw_bytes"] == value
        assert reject["stage"] == "consume" and reject["kafka_topic"] == topic
        assert reject["record_type"] == "trade" and reject["load_id"] == "L1"
        assert json.loads(reject["headers"]) == {"k2-load-id": "TDE="}
    assert [r["kafka_offset"] for r in rejects] == sorted({r["kafka_offset"] for r in rejects})
    assert table(ready, "trades").column("event_id").to_pylist() == ["e1"]


def framed(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()


def test_a_new_schema_version_mid_stream_evolves_the_table_and_an_unreadable_one_is_rejected(
    ready: Settings, tmp_path: Path
) -> None:
    topic = TRADE.topic_name(ready)
    v2 = copy.deepcopy(TRADE.schema)
    v2["fields"].append({"name": "auction_flag", "type": ["null", "string"], "default": None})
    unreadable = copy.deepcopy(TRADE.schema)
    next(f for f in unreadable["fields"] if f["name"] == "price")["type"] = "string"
    with SchemaRegistryClient({"url": ready.schema_registry_url}) as registry:
        v1_id = registry.lookup_schema(TRADE.subject(ready), Schema(TRADE.schema_str, "AVRO")).schema_id
        v2_id = registry.register_schema(TRADE.subject(ready), Schema(json.dumps(v2), "AVRO"))  # compatible
        other_id = registry.register_schema(
            f"{ready.topic_prefix}elsewhere-value", Schema(json.dumps(unreadable), "AVRO")
        )
    producer = Producer(client_config(ready))
    old = {**a_trade(), "event_id": "old"}
    producer.produce(topic, framed(v1_id, TRADE.schema, old), b"BHP")
    consumer = ConsumerProcess(ready, tmp_path / "consume.log")
    try:
        poll(lambda: landed_counts(ready, ["trades"]) == {"trades": 1} or None, timeout=90, what="the v1 trade")
        new = {**a_trade(), "event_id": "new", "sequence_number": 2, "auction_flag": "open"}
        producer.produce(topic, framed(v2_id, v2, new), b"BHP")
        wrong = {**a_trade(), "event_id": "wrong", "sequence_number": 3, "price": "45.1"}
        producer.produce(topic, framed(other_id, unreadable, wrong), b"BHP")
        assert producer.flush(30) == 0
        poll(lambda: landed_counts(ready, ["trades", "rejects"]) == {"trades": 2, "rejects": 1} or None,
             timeout=90, what="the v2 trade and the reject")  # fmt: skip
        rc, counts = consumer.stop()
    finally:
        consumer.kill()
    assert rc == 0
    assert counts == {"consumed": 4, "landed": 3, "rejected": 1, "deduplicated": 0}
    rows = {r["event_id"]: r for r in table(ready, "trades").to_pylist()}
    assert rows["old"]["auction_flag"] is None and rows["new"]["auction_flag"] == "open"  # old rows read null
    assert rows["new"]["price"] == new["price"] and rows["new"]["sequence_number"] == 2
    (reject,) = table(ready, "rejects").to_pylist()
    assert f"writer schema id {other_id} cannot be read into table trades" in reject["reason"]
    assert "price" in reject["reason"], reject["reason"]
    assert reject["raw_bytes"] == framed(other_id, unreadable, wrong)


def test_sigterm_mid_batch_lands_the_batch_in_hand_and_exits_0(ready: Settings, tmp_path: Path) -> None:
    settings = ready.model_copy(update={"stream_batch_seconds": 600, "stream_batch_rows": 1_000_000})
    topic = TRADE.topic_name(settings)
    producer = Producer(client_config(settings))
    with SchemaRegistryClient({"url": settings.schema_registry_url}) as registry:
        serialize = AvroSerializer(registry, TRADE.schema_str, conf={"auto.register.schemas": False})
        for i in range(50):
            record = {**a_trade(), "event_id": f"t{i}", "sequence_number": i + 1}
            producer.produce(topic, serialize(record, SerializationContext(topic, MessageField.VALUE)), b"BHP")
    assert producer.flush(30) == 0
    consumer = ConsumerProcess(settings, tmp_path / "consume.log")
    try:
        health = f"http://127.0.0.1:{settings.stream_metrics_port}/healthz"
        poll(lambda: httpx.get(health, timeout=5).json()["consumed"] == 50 or None, 90, "the batch to be in hand")
        assert landed_counts(settings, ["trades"]) == {"trades": 0}  # in hand, not landed (600 s batches)
        rc, counts = consumer.stop(signal.SIGTERM)
    finally:
        consumer.kill()
    assert rc == 0 and counts == {"consumed": 50, "landed": 50, "rejected": 0, "deduplicated": 0}
    assert sorted(table(settings, "trades").column("event_id").to_pylist()) == sorted(f"t{i}" for i in range(50))


def test_consume_refuses_an_unknown_topic(ready: Settings) -> None:
    result = run_k2(env_of(ready), "consume", "--topic", "nope")
    assert result.returncode != 0
    assert "not K2 topics: nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_forced_reload_lands_nothing_twice(ready: Settings, tmp_path: Path) -> None:
    first = load(ready, str(SAMPLE), "--format", "k2")
    expected = {TABLE_OF_TOPIC[t]: len(messages_of(ready, first, t)) for t in TABLE_OF_TOPIC}
    consumer = ConsumerProcess(ready, tmp_path / "consume.log")
    try:
        poll(lambda: landed_counts(ready, list(expected)) == expected or None, timeout=90, what="the load to land")
        again = load(ready, str(SAMPLE), "--format", "k2", "--force")  # the same event ids, new offsets
        poll(lambda: consumed_all(ready, again), timeout=90, what="the re-sent records to be consumed")
        rc, counts = consumer.stop()
    finally:
        consumer.kill()
    total = sum(expected.values())
    assert rc == 0
    assert counts == {"consumed": 2 * total, "landed": total, "rejected": 0, "deduplicated": total}
    assert landed_counts(ready, list(expected)) == expected
    for name in expected:
        ids = table(ready, name).column("event_id").to_pylist()
        assert len(ids) == len(set(ids))


EventKey = tuple[str, str, str, str, int, int | None]  # exchange, symbol, trading day, kind, received, gap size


def injected_sequence_events(folder: Path) -> Counter[EventKey]:
    """What `k2 generate --anomalies` puts in each (exchange, symbol, day) of 21 trades or more,
    read from its files: rows 5 and 6 swapped, +3 from the middle row, a restart at 1, a repeated last."""
    numbers: dict[tuple[str, str, str], list[int]] = {}
    for path in sorted(folder.rglob("trades_*.csv")):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                key = (row["exchange"], row["symbol"], path.parent.name)
                numbers.setdefault(key, []).append(int(row["sequence_number"]))
    events: Counter[EventKey] = Counter()
    for (exchange, symbol, day), seq in numbers.items():
        n = len(seq)
        if n < 21:
            continue
        for kind, received, gap in (("gap", 7, 1), ("out_of_order", 6, None), ("gap", n // 2 + 4, 3),
                                    ("reset", 1, None), ("duplicate", seq[-2], None)):  # fmt: skip
            events[(exchange, symbol, day, kind, received, gap)] += 1
    return events


def landed_sequence_events(settings: Settings) -> Counter[EventKey]:
    return Counter(
        (r["exchange"], r["symbol"], r["trading_date"].isoformat(), r["kind"], r["received_sequence"], r["gap_size"])
        for r in table(settings, "sequence_events").to_pylist()
    )


def test_sequence_anomalies_are_reported_exactly_once(ready: Settings, tmp_path: Path) -> None:
    data = tmp_path / "data"
    generated = run_k2(env_of(ready), "generate", "--out", str(data), "--symbols", "3", "--days", "2",
                       "--start", "2026-10-05", "--trades-per-day", "60", "--anomalies")  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    injected = injected_sequence_events(data)
    assert injected  # the generator put anomalies in
    first = load(ready, str(data), "--format", "k2")
    want = {"trades": len(messages_of(ready, first, "trades")), "quotes": len(messages_of(ready, first, "quotes"))}
    consumer = ConsumerProcess(ready, tmp_path / "consume.log")
    try:
        poll(lambda: landed_counts(ready, list(want)) == want or None, timeout=90, what="the load to land")
        total = sum(injected.values())
        poll(lambda: landed_sequence_events(ready).total() >= total or None, timeout=30, what="the sequence events")
        assert landed_sequence_events(ready) == injected
        metrics = httpx.get(f"http://127.0.0.1:{ready.stream_metrics_port}/metrics", timeout=5).text
        rc, _ = consumer.stop()
    finally:
        consumer.kill()
    assert rc == 0
    keys = len({k[:3] for k in injected})
    for kind, count in (("gap", 2 * keys), ("out_of_order", keys), ("reset", keys), ("duplicate", keys)):
        assert f'k2_stream_sequence_events_total{{kind="{kind}",table="trades"}} {float(count)}' in metrics
    assert f'k2_stream_sequence_missing_total{{table="trades"}} {float(4 * keys)}' in metrics
    in_order = want["trades"] - 5 * keys
    assert f'k2_stream_sequence_events_total{{kind="in_order",table="trades"}} {float(in_order)}' in metrics
    assert f'k2_stream_sequence_events_total{{kind="in_order",table="quotes"}} {float(want["quotes"])}' in metrics

    # Re-sent records (a forced re-load) and a fresh consumer (state rebuilt from the tables) report nothing new.
    resent = load(ready, str(data), "--format", "k2", "--force")
    again = ConsumerProcess(ready, tmp_path / "again.log")
    try:
        poll(lambda: consumed_all(ready, resent), timeout=90, what="the re-sent records to be consumed")
        rc, counts = again.stop()
    finally:
        again.kill()
    assert rc == 0 and counts["landed"] == 0 and counts["deduplicated"] == counts["consumed"] > 0
    assert landed_sequence_events(ready) == injected


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(ready: Settings, tmp_path: Path) -> None:
    """Ten consumers killed with SIGKILL mid-stream while loads run; a last one finishes the job.
    The data has sequence anomalies: each is reported once, and no restart invents one."""
    settings = ready.model_copy(
        update={
            "stream_session_timeout_seconds": 3,
            "stream_max_poll_interval_seconds": 4,
            "stream_batch_seconds": 0.2,
            "stream_batch_rows": 500,
        }
    )
    env = env_of(settings)
    env["K2_INGEST_METRICS_PORT"] = "0"
    rng = random.Random(7)
    expected: dict[str, set[str]] = {"trades": set(), "quotes": set()}
    sequence_events: Counter[EventKey] = Counter()
    catalog = open_catalog(settings)

    def snapshots() -> int:
        return sum(len(catalog.load_table((settings.namespace, n)).snapshots()) for n in ("trades", "quotes"))

    days = tmp_path / "days"
    generated = run_k2(env, "generate", "--out", str(days), "--symbols", "4", "--days", "10", "--start",
                       "2026-09-01", "--trades-per-day", "1500", "--seed", "7", "--anomalies")  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    day_folders = sorted(p for p in days.iterdir() if p.is_dir())
    assert len(day_folders) == 10  # ten consumers killed, one per day loaded
    for i, day in enumerate(day_folders):
        data = tmp_path / f"day{i}"  # a day and the reference data: one load per consumer killed
        shutil.copytree(day, data / day.name)
        shutil.copy(days / "reference_data.csv", data)
        sequence_events += injected_sequence_events(data)
        k2 = Path(sys.executable).with_name("k2")
        loader = subprocess.Popen([str(k2), "load", str(data), "--format", "k2", "--json"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        consumer = ConsumerProcess(settings, tmp_path / f"consume{i}.log")
        try:
            seen = snapshots()
            poll(lambda: snapshots() > seen or None, timeout=60, what="this consumer to commit something")  # noqa: B023
            # Fault injection, not synchronisation: a random moment within the next batches.
            time.sleep(rng.uniform(0, 0.6))
        finally:
            consumer.kill()  # SIGKILL: no clean-up of any kind
        out, err = loader.communicate(timeout=120)
        assert loader.returncode == 0, err
        report = json.loads(out)
        for topic in ("trades", "quotes"):
            expected[topic] |= {m.value["event_id"] for m in messages_of(settings, report, topic)}

    # The survivor lands the backlog the kills left in large batches: small ones (the kills' random
    # moments fall between them above) would only add commits here (a poll takes at most a batch).
    last = ConsumerProcess(settings.model_copy(update={"stream_batch_rows": 20_000}), tmp_path / "last.log")
    want = {name: len(ids) for name, ids in expected.items()}
    try:
        poll(lambda: landed_counts(settings, list(want)) == want or None, timeout=120, what="everything to land")
        rc, _ = last.stop()
    finally:
        last.kill()
    assert rc == 0
    for name, ids in expected.items():
        landed = Counter(table(settings, name).column("event_id").to_pylist())
        assert set(landed) == ids
        assert max(landed.values()) == 1
    assert landed_sequence_events(settings) == sequence_events  # each once, nothing invented by the restarts


def test_two_consumers_split_the_partitions_and_one_takes_over_when_the_other_dies(
    ready: Settings, tmp_path: Path
) -> None:
    other = ready.model_copy(update={"stream_metrics_port": free_port()})
    a = ConsumerProcess(ready, tmp_path / "a.log")
    b = ConsumerProcess(other, tmp_path / "b.log")
    expected: dict[str, set[str]] = {"trades": set(), "quotes": set()}

    def assigned(process: ConsumerProcess) -> set[str]:
        return set(re.findall(r"assigned (\S+\[\d+\])", process.log_text()))

    def remember(report: dict[str, Any]) -> None:
        for topic in expected:
            expected[topic] |= {m.value["event_id"] for m in messages_of(ready, report, topic)}

    def all_landed() -> bool | None:
        want = {name: len(ids) for name, ids in expected.items()}
        return landed_counts(ready, list(want)) == want or None

    try:
        everything = {f"{ready.topic_prefix}{t}[{p}]" for t in ("trades", "quotes", "reference_data", "dead_letters")
                      for p in range(ready.topic_partitions)}  # fmt: skip
        both = "both consumers to get partitions"
        poll(lambda: (assigned(a) and assigned(b) and assigned(a) | assigned(b) >= everything) or None,
             timeout=90, what=both)  # fmt: skip
        remember(load(ready, str(SAMPLE), "--format", "k2"))
        poll(all_landed, timeout=90, what="the first load to land")
        b.kill()  # SIGKILL: its partitions go to the survivor after the session timeout
        data = tmp_path / "more"
        generated = run_k2(env_of(ready), "generate", "--out", str(data), "--symbols", "6", "--days", "1",
                           "--start", "2026-08-03", "--trades-per-day", "2000", "--seed", "5")  # fmt: skip
        assert generated.returncode == 0, generated.stderr
        remember(load(ready, str(data), "--format", "k2"))
        poll(all_landed, timeout=120, what="the survivor to land the second load")
        rc, _ = a.stop()
    finally:
        a.kill()
        b.kill()
    assert rc == 0
    for name, ids in expected.items():
        landed = Counter(table(ready, name).column("event_id").to_pylist())
        assert set(landed) == ids and max(landed.values()) == 1
