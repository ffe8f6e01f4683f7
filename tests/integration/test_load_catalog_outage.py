"""`k2 load` when the catalog goes away at the end: the records are in Kafka, the manifest write fails.

Real parts throughout: a `k2 load` process, a broker of the test's own, the shared registry, a
Postgres catalog reached through a TCP proxy the test cuts. The cut lands at the end of the load
deterministically: the test holds a row lock that makes the load's first manifest write (its
`started` rows) wait, stops the broker meanwhile (SIGSTOP), lets the write through, and once the
load's /metrics show rows produced (so that write has returned) cuts the catalog and resumes the
broker: the load can only reach its last manifest write after that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.manifest import Manifest
from k2_etl.local.components import broker
from k2_etl.local.supervisor import start, stop
from k2_etl.schemas.registration import register_schemas
from tests.faults import TcpProxy
from tests.helpers import REPO, env_of, free_ports, poll, quiet, run_k2
from tests.integration import ingest_helpers
from tests.integration.conftest import needs_postgres
from tests.integration.ingest_helpers import messages_of

pytestmark = needs_postgres
TRADES = REPO / "data" / "sample" / "k2" / "2026-11-02" / "trades_CXA.csv"


@dataclass
class Outage:
    """Settings of a load whose catalog is behind ``proxy`` and whose broker the test can pause."""

    settings: Settings  # as the load sees them (catalog through the proxy)
    direct: Settings  # the same catalog, not through the proxy
    database: str
    proxy: TcpProxy
    broker_pid: int
    metrics_port: int
    lines: list[str] = field(default_factory=list)


@pytest.fixture
def outage(platform_settings: Settings, postgres_database: str, tmp_path: Path) -> Iterator[Outage]:
    proxy, proxied = TcpProxy.for_url(postgres_database)
    broker_port, metrics_port = free_ports(2)
    common: dict[str, Any] = {
        "home": tmp_path / "home",
        "kafka_bootstrap": f"127.0.0.1:{broker_port}",
        "schema_registry_url": platform_settings.schema_registry_url,
        "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
    }
    settings = load_settings(**common, catalog_uri=proxied, ingest_metrics_port=metrics_port)
    component = broker(settings)
    start(settings, component, quiet)
    try:
        env = env_of(settings)
        initialized = run_k2(env, "init")
        assert initialized.returncode == 0, initialized.stderr
        register_schemas(settings)
        pid = json.loads((settings.run_dir / "broker.pid").read_text())["pid"]
        direct = load_settings(**common, catalog_uri=postgres_database)
        yield Outage(settings, direct, postgres_database, proxy, pid, metrics_port)
    finally:
        proxy.close()
        stop(settings, component, quiet)


class Load:
    """A `k2 load --json` process; its stderr lines are collected as they come."""

    def __init__(self, outage: Outage, *args: str, **settings: str) -> None:
        env = env_of(outage.settings)
        env.update({f"K2_{k.upper()}": v for k, v in settings.items()})
        k2 = Path(sys.executable).with_name("k2")
        self.process = subprocess.Popen([str(k2), "load", *args, "--json"], env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        self.stderr: list[str] = []
        self.stdout = ""
        self._readers = [threading.Thread(target=self._read_stderr), threading.Thread(target=self._read_stdout)]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line.rstrip("\n"))

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self.stdout = self.process.stdout.read()

    def said(self, text: str) -> bool:
        return any(text in line for line in self.stderr)

    def wait(self) -> int:
        code = self.process.wait(timeout=120)
        for reader in self._readers:
            reader.join(timeout=10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.wait()


def rows_produced(outage: Outage) -> float:
    text = httpx.get(f"http://127.0.0.1:{outage.metrics_port}/metrics", timeout=2).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("k2_ingest_rows_produced_total{"))  # fmt: skip


def start_load_and_cut_the_catalog_at_its_end(outage: Outage, path: Path, **settings: str) -> Load:
    """Start `k2 load path`; return once its first manifest write has returned and nothing can have
    been delivered yet, with the catalog cut and the broker running again (see the module docstring)."""
    engine = sa.create_engine(outage.database)
    try:
        with engine.connect() as lock:
            lock.execute(sa.text("SELECT 1 FROM iceberg_tables WHERE table_name = 'load_manifest' FOR UPDATE"))
            load = Load(outage, str(path), "--format", "k2", **settings)
            with engine.connect() as watch:
                waiting = sa.text("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                                  "WHERE NOT l.granted AND a.datname = current_database()")  # fmt: skip
                poll(lambda: watch.execute(waiting).scalar(), timeout=60, what="the load's manifest write to wait")
            os.kill(outage.broker_pid, signal.SIGSTOP)
            lock.rollback()
        poll(lambda: rows_produced(outage) > 0, timeout=60, what="the load to produce (past its first write)")
        outage.proxy.cut()
    except BaseException:
        os.kill(outage.broker_pid, signal.SIGCONT)
        raise
    finally:
        engine.dispose()
    os.kill(outage.broker_pid, signal.SIGCONT)
    return load


def test_catalog_down_at_the_end_exits_3_with_a_report_of_what_reached_kafka(outage: Outage, tmp_path: Path) -> None:
    path = tmp_path / "day" / "trades_CXA.csv"
    path.parent.mkdir()
    shutil.copy(TRADES, path)
    load = start_load_and_cut_the_catalog_at_its_end(outage, path, ingest_manifest_retry_seconds="1")
    try:
        code = load.wait()
    finally:
        load.kill()

    assert code == 3, load.stderr
    assert not load.said("Traceback"), "\n".join(load.stderr)
    last = load.stderr[-1]
    assert last.startswith("k2: error: cannot write the load manifest ") and "K2_CATALOG_URI=" in last, last
    assert "run the same `k2 load` again" in last and "1 of 1 file(s) reached Kafka" in last, last
    report = json.loads(load.stdout)  # one JSON report on stdout
    assert report["ok"] is False and report["manifest"]["recorded"] is False
    assert report["manifest"]["files_not_recorded"] == [str(path)]
    assert report["manifest"]["error"] == last.removeprefix("k2: error: ")
    [done] = report["files"]
    assert done["status"] == "loaded" and done["rows_produced"] == 1130 and done["offsets"]
    assert "in Kafka (offsets here), but the load manifest did not record it" in done["message"]
    first = messages_of(outage.settings, report, "trades")
    assert len(first) == 1130  # every record reached Kafka, where the report says

    outage.proxy.restore()
    manifest = Manifest(open_catalog(outage.direct), outage.direct.namespace)
    assert [e.status for e in manifest.history(done["load_id"])[done["load_id"]]] == ["started"]

    # the stale `started` row does not block a later load: the same load again produces the file again
    again = ingest_helpers.load(outage.settings, str(path), "--format", "k2")
    [redone] = again["files"]
    assert again["ok"] and again["manifest"] == {"recorded": True} and redone["status"] == "loaded"
    assert sorted(m.value["event_id"] for m in messages_of(outage.settings, again, "trades")) == sorted(
        m.value["event_id"] for m in first
    )  # the same records again: the consumer keeps one of each (event ids)
    history = Manifest(open_catalog(outage.direct), outage.direct.namespace).history(done["load_id"])
    assert [e.status for e in history[done["load_id"]]] == ["started", "started", "completed"]
    assert history[done["load_id"]][-1].offsets == redone["offsets"]


def test_a_catalog_outage_at_the_end_is_ridden_out(outage: Outage, tmp_path: Path) -> None:
    path = tmp_path / "day" / "trades_CXA.csv"
    path.parent.mkdir()
    shutil.copy(TRADES, path)
    load = start_load_and_cut_the_catalog_at_its_end(outage, path)
    try:
        poll(lambda: load.said("k2: warning: cannot write the load manifest"), timeout=60, what="a retry")
        outage.proxy.restore()  # the catalog is back while the load retries its last write
        code = load.wait()
    finally:
        load.kill()

    assert code == 0, load.stderr
    report = json.loads(load.stdout)
    assert report["ok"] and report["manifest"] == {"recorded": True}
    [done] = report["files"]
    history = Manifest(open_catalog(outage.direct), outage.direct.namespace).history(done["load_id"])
    assert [e.status for e in history[done["load_id"]]] == ["started", "completed"]
    assert history[done["load_id"]][-1].offsets == done["offsets"]
