"""The streaming consumer under the faults an operator meets, reproduced with real processes:
a broker that restarts empty, a partition stuck beyond its end, a catalog that goes away during
a rebalance, a registry that goes away mid-stream."""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import append_with_offsets
from k2_etl.lake.progress import CLOCK_SKEW, landed_offsets, pending_offsets, wanted_offsets
from k2_etl.schemas import TRADE
from k2_etl.wire.kafka import topic_ids
from tests.faults import TcpProxy
from tests.helpers import env_of, free_port, local_platform_env, poll, run_k2
from tests.integration.conftest import needs_postgres
from tests.integration.ingest_helpers import load
from tests.integration.stream_helpers import ConsumerProcess, ready_settings, table


def generate(env: dict[str, str], out: Path, day: str, seed: int) -> Path:
    result = run_k2(env, "generate", "--out", str(out), "--symbols", "4", "--trades-per-day", "60",
                    "--quotes-per-trade", "1", "--start", day, "--seed", str(seed))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def load_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = run_k2({**env, "K2_INGEST_METRICS_PORT": "0"}, "load", *args, "--format", "k2", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def event_ids(settings: Settings, name: str) -> Counter[str]:
    return Counter(table(settings, name).column("event_id").to_pylist())


def produced(report: dict[str, Any], record_type: str) -> int:
    return sum(f["rows_produced"] for f in report["files"] if f["record_type"] == record_type)


def gauge(metrics: str, name: str, **labels: str) -> list[float]:
    """Values of the samples of ``name`` whose labels include ``labels``."""
    values = []
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            values.append(float(line.rsplit(" ", 1)[1]))
    return values


def healthz(settings: Settings) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{settings.stream_metrics_port}/healthz", timeout=5)


def test_a_broker_restarted_empty_is_a_new_life_of_every_topic_and_the_next_load_lands(tmp_path: Path) -> None:
    """`k2 up`, a day loaded and landed, `k2 down`, `k2 up` (the local broker is memory-only: the
    topics come back empty, offsets start at 0 again), another day loaded: it lands. Before topic
    ids, the consumer resumed at the old offsets and never landed it, while saying healthy."""
    env = local_platform_env(tmp_path / "home", airflow_enabled="false", ingest_metrics_port="0",
                             stream_session_timeout_seconds="6", stream_max_poll_interval_seconds="7")  # fmt: skip
    settings = load_settings(**{k.removeprefix("K2_").lower(): v for k, v in env.items() if k.startswith("K2_")})
    try:
        assert run_k2(env, "up").returncode == 0
        assert run_k2(env, "schemas", "register").returncode == 0
        first = load_json(env, str(generate(env, tmp_path / "day1", "2026-11-02", seed=1)))
        first_trades = produced(first, "trade")
        poll(lambda: sum(event_ids(settings, "trades").values()) == first_trades or None, 90, "the first day landed")
        old_ids = topic_ids(settings, [TRADE.topic_name(settings)])

        down = run_k2(env, "down")
        assert down.returncode == 0, down.stderr
        up = run_k2(env, "up")
        assert up.returncode == 0, up.stderr + up.stdout
        assert topic_ids(settings, [TRADE.topic_name(settings)]) != old_ids  # a new life of the topic
        second = load_json(env, str(generate(env, tmp_path / "day2", "2026-11-03", seed=2)))
        again = load_json(env, str(tmp_path / "day1" / "2026-11-02"), "--force")  # re-sent: deduplicated
        second_trades = produced(second, "trade")
        assert second_trades > 0 and produced(again, "trade") == first_trades
        # Offsets are small again in the new life: lower than what the tables recorded before.
        poll(lambda: sum(event_ids(settings, "trades").values()) == first_trades + second_trades or None, 90,
             "the second day landed after the broker restarted")  # fmt: skip
        wanted = wanted_offsets(f["offsets"] for f in [*second["files"], *again["files"]])
        ids = {t: i for f in second["files"] for t, i in f["topic_ids"].items()}
        poll(lambda: not pending_offsets(wanted, landed_offsets(settings, wanted, topic_ids=ids)) or None, 60,
             "every topic's offsets recorded in the new life")  # fmt: skip
    finally:
        run_k2(env, "down")
    consumer_log = (Path(env["K2_HOME"]) / "logs" / "consumer.log").read_text(errors="replace")
    assert max(event_ids(settings, "trades").values()) == 1  # nothing twice
    assert "for another life of the topic" in consumer_log
    assert "reading the partition from the beginning" in consumer_log
    # The day loaded again was read and counted as deduplicated, not silently dropped: the
    # consumer's last words (k2 down stopped it) reconcile.
    stopped = re.findall(r"stopped: (\{.*\})", consumer_log)[-1]
    counts = json.loads(stopped)
    assert counts["consumed"] == counts["landed"] + counts["rejected"] + counts["deduplicated"]
    assert counts["deduplicated"] >= first_trades


def test_a_partition_stuck_past_its_end_shows_in_healthz_metrics_and_status(
    own_settings: Settings, tmp_path: Path
) -> None:
    """Where the topic id cannot help (the broker lost records but kept the topic; a table
    restored from elsewhere), the consumer waits beyond the partition's end for ever. What loads
    produced, against what landed, makes it impossible to miss."""
    settings = ready_settings(own_settings).model_copy(update={"stream_stall_seconds": 2.0})
    trades = open_catalog(settings).load_table((settings.namespace, "trades"))
    topic = TRADE.topic_name(settings)
    ids = topic_ids(settings, [topic])
    stuck = {p: 1_000_000 for p in range(settings.topic_partitions)}
    append_with_offsets(trades, trades.schema().as_arrow().empty_table(), settings.stream_group,
                        {topic: dict.fromkeys(stuck)}, {topic: stuck}, ids)  # fmt: skip
    recorded = time.time()
    day = generate(env_of(settings), tmp_path / "day", "2026-11-02", seed=3)
    consumer = ConsumerProcess(settings, tmp_path / "consume.log")
    try:
        # The stale offset must predate the load by more than the clocks of two hosts may disagree.
        poll(lambda: time.time() > recorded + CLOCK_SKEW.total_seconds() or None, 30, "the clock-skew margin")
        report = load(settings, str(day), "--format", "k2")
        assert produced(report, "trade") > 0
        unhealthy = poll(lambda: ((r := healthz(settings)).status_code == 503 and "not landed" in r.text and r) or None,
                         60, "/healthz to report the records not landed")  # fmt: skip
        problem = unhealthy.json()["problem"]
        assert "stalled" in unhealthy.json()["failing"].values(), unhealthy.text
        assert f"{topic}[" in problem and "recorded before these records existed" in problem, problem
        metrics = consumer.metrics(settings)
        assert max(gauge(metrics, "k2_stream_unlanded_seconds", topic=topic), default=0) >= 2.0, metrics
        assert sum(gauge(metrics, "k2_stream_unlanded_messages", topic=topic)) == produced(report, "trade")
        status = run_k2(env_of(settings), "status", "--json")
        landed_row = {c["name"]: c for c in json.loads(status.stdout)["components"]}["landed"]
        assert landed_row["healthy"] is False
        assert "not landed" in landed_row["detail"] and topic in landed_row["detail"]
        assert table(settings, "trades").num_rows == 0  # it truly landed nothing
    finally:
        consumer.kill()


@pytest.fixture
def postgres_ready(own_settings: Settings, postgres_database: str) -> tuple[Settings, TcpProxy]:
    """The test's topics and schemas, its catalog on Postgres reached through a proxy the test can cut."""
    proxy, url = TcpProxy.for_url(postgres_database)
    settings = ready_settings(own_settings.model_copy(update={"catalog_uri": url}))
    return settings, proxy


@needs_postgres
def test_a_catalog_outage_through_a_rebalance_never_ends_the_consumer(
    postgres_ready: tuple[Settings, TcpProxy], tmp_path: Path
) -> None:
    """Two consumers on a Postgres catalog; Postgres becomes unreachable; one consumer is killed.
    The survivor takes the dead one's partitions while it cannot read where the tables stand:
    it must wait (503 naming the catalog), not exit, and land everything once the catalog is back."""
    settings, proxy = postgres_ready
    first = ConsumerProcess(settings, tmp_path / "first.log")
    other = settings.model_copy(update={"stream_metrics_port": free_port()})
    second = ConsumerProcess(other, tmp_path / "second.log")
    try:
        for s, c in ((settings, first), (other, second)):
            poll(lambda s=s, c=c: ("resuming at" in c.log_text() and healthz(s).status_code == 200) or None, 60,
                 "both consumers placed")  # fmt: skip
        day = generate(env_of(settings), tmp_path / "day", "2026-11-02", seed=4)
        with proxy.down():
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(30)
            # The rebalance gives the survivor every partition, and it cannot read where the tables stand.
            placing = "read where the tables stand"
            body = poll(
                lambda: (
                    ((r := healthz(other)).status_code == 503 and placing in r.json()["failing"] and r.json()) or None
                ),
                90,
                "the survivor to report it cannot place the partitions",
            )
            assert body["failing"][placing] == "catalog" and "K2_CATALOG_URI" in body["problem"], body
            assert body["partitions"] == 0  # none placed: nothing is read meanwhile
            poll(lambda: "cannot read where the tables stand" in second.log_text() or None, 30, "a log line")
            assert second.process.poll() is None, second.log_text()  # alive
        loaded = produced(load(settings, str(day), "--format", "k2"), "trade")  # the catalog is back
        poll(lambda: sum(event_ids(settings, "trades").values()) == loaded or None, 120,
             "the survivor to land the day once the catalog is back")  # fmt: skip
        poll(lambda: healthz(other).status_code == 200 or None, 30, "the survivor healthy again")
        rc, counts = second.stop()
        assert max(event_ids(settings, "trades").values()) == 1
    finally:
        first.kill()
        second.kill()
        proxy.close()
    assert rc == 0
    assert counts["consumed"] == counts["landed"] + counts["rejected"] + counts["deduplicated"]


def test_a_registry_outage_is_named_logged_and_waited_out(own_settings: Settings, tmp_path: Path) -> None:
    """A consumer that needs a schema while the registry is unreachable says so in /healthz and
    its log (not just 'the poll loop has not turned'), and lands the batch when it is back."""
    settings = ready_settings(own_settings)
    proxy, url = TcpProxy.for_url(settings.schema_registry_url)
    through_proxy = settings.model_copy(update={"schema_registry_url": url})
    consumer = ConsumerProcess(through_proxy, tmp_path / "consume.log")
    try:
        poll(lambda: "resuming at" in consumer.log_text() or None, 60, "partitions placed")
        with proxy.down():
            report = load(settings, str(generate(env_of(settings), tmp_path / "day", "2026-11-02", seed=5)),
                          "--format", "k2")  # fmt: skip
            reason = poll(lambda: ((r := healthz(settings)).status_code == 503 and r.json()["problem"]) or None, 60,
                          "/healthz to name the registry")  # fmt: skip
            assert "schema registry" in reason and url in reason, reason
            poll(lambda: "schema registry" in consumer.log_text() or None, 30, "a log line about the registry")
            assert table(settings, "trades").num_rows == 0
        trades = produced(report, "trade")
        poll(lambda: sum(event_ids(settings, "trades").values()) == trades or None, 90, "landed after the outage")
        poll(lambda: healthz(settings).status_code == 200 or None, 30, "healthy again")
        rc, counts = consumer.stop()
    finally:
        consumer.kill()
        proxy.close()
    assert rc == 0
    assert counts["consumed"] == counts["landed"] + counts["rejected"] + counts["deduplicated"]
