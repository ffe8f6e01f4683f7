"""`k2 monitor`: the platform as one process sees it, for Prometheus to scrape.

Every ``K2_MONITOR_INTERVAL_SECONDS`` a pass:

* runs the health check `k2 status` runs on every component and sets ``k2_platform_component_up``
  and ``k2_platform_component_degraded_info`` (the reason) from it: the same words, the same verdict;
* reads each table's metadata (:mod:`k2_etl.lake.health`): snapshots, files, the worst partition,
  file size, the newest commit and freshness;
* compares what the load manifest says loads produced with what the tables record as landed, per
  topic-partition (:func:`k2_etl.lake.progress.progress`).

Between passes it receives Airflow's own metrics over StatsD (:mod:`k2_etl.monitor.statsd`).

Why a process of its own rather than the consumer or the API: these are the signals that must stay
true when a consumer is down, stuck at stale offsets while saying it is healthy, or scaled to
several replicas (each would export the same tables twice, and none can see the others); the API
runs several workers and replicas too. One monitor per deployment reads only metadata, so it is
cheap, and it is stateless: a restart loses nothing.

A part of a pass that fails (the catalog unreachable) counts in ``k2_monitor_errors_total`` and
leaves that part's series at their last values; the components' checks say what is down.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from prometheus_client import REGISTRY, Gauge
from pyiceberg.table import Table

from k2_etl.config import Settings
from k2_etl.lake.catalog import local_catalog_missing, open_catalog, reaching
from k2_etl.lake.health import table_health, worst_partition_files
from k2_etl.lake.progress import progress
from k2_etl.lake.tables import TABLES
from k2_etl.local.components import HEALTH_TIMEOUT_SECONDS, Component, platform
from k2_etl.local.supervisor import check
from k2_etl.monitor.statsd import StatsdMetrics, serve_udp
from k2_etl.observability import (
    COMPONENT_DEGRADED,
    COMPONENT_UP,
    LAKE_DATA_FILES,
    LAKE_FILE_SIZE_AVERAGE,
    LAKE_FRESHNESS,
    LAKE_LANDED_OFFSET,
    LAKE_PARTITION_FILES_MAX,
    LAKE_PRODUCED_OFFSET,
    LAKE_ROWS,
    LAKE_SNAPSHOT_AGE,
    LAKE_SNAPSHOT_ROWS,
    LAKE_SNAPSHOTS,
    LAKE_UNLANDED_IDLE_SECONDS,
    LAKE_UNLANDED_RECORDS,
    LAKE_UNLANDED_STALLED,
    MONITOR_ERRORS,
    MONITOR_INTERVAL,
    MONITOR_LAST_PASS,
    MONITOR_PASS_SECONDS,
)
from k2_etl.schemas import topic_names
from k2_etl.stream.health import Health, serve
from k2_etl.wire.kafka import topic_ids

log = logging.getLogger(__name__)

#: How often the worst partition of a table is counted (a scan of its manifests).
PARTITION_SCAN_SECONDS = 60.0
#: A reason label longer than this is cut (a label value is an index key in Prometheus).
REASON_MAX_CHARS = 200


_PARTITION_GAUGES = (LAKE_PRODUCED_OFFSET, LAKE_LANDED_OFFSET, LAKE_UNLANDED_RECORDS, LAKE_UNLANDED_IDLE_SECONDS,
                     LAKE_UNLANDED_STALLED)  # fmt: skip


def _replace(gauge: Gauge, values: dict[tuple[str, ...], float]) -> None:
    """Set ``values``, then remove the series no longer among them: a scrape in between never sees
    a series missing (an alert's `for:` would start again)."""
    for labels, value in values.items():
        gauge.labels(*labels).set(value)
    for family in gauge.collect():
        for sample in family.samples:
            labels = tuple(sample.labels.values())  # in the gauge's label order
            if labels not in values:
                gauge.remove(*labels)


def watched(settings: Settings) -> list[Component]:
    """The components a pass checks: every one `k2 status` shows, but the monitor itself."""
    return [c for c in platform(settings) if c.name != "monitor"]


def problem(component: Component) -> str | None:
    """None when healthy, else why, as `k2 status` words it (cut to :data:`REASON_MAX_CHARS`)."""
    healthy, detail, _ = check(component)
    return None if healthy else detail[:REASON_MAX_CHARS]


class Monitor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.components = watched(settings)
        self.health = Health(stale_after_seconds=max(60.0, 4 * settings.monitor_interval_seconds))
        self._stop = threading.Event()
        for part in ("tables", "offsets"):
            MONITOR_ERRORS.labels(part)  # 0 until a part fails, rather than no series
        MONITOR_INTERVAL.set(settings.monitor_interval_seconds)
        self._partition_scans: dict[str, tuple[float, int | None, int]] = {}  # table -> (when, snapshot, files)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.components)), thread_name_prefix="k2-monitor")

    def run_pass(self) -> None:
        started = time.perf_counter()
        problems = dict(zip(self.components, self._pool.map(problem, self.components), strict=True))
        for component, why in problems.items():
            COMPONENT_UP.labels(component.name).set(int(why is None))
        _replace(COMPONENT_DEGRADED, {(c.name, why): 1 for c, why in problems.items() if why is not None})
        for part, work in (("tables", self._tables), ("offsets", self._offsets)):
            try:
                work()
            except Exception as exc:  # the catalog or broker unreachable: the components' checks say so
                MONITOR_ERRORS.labels(part).inc()
                log.warning("monitor: %s not read: %s", part, str(exc).splitlines()[0] if str(exc) else exc)
        MONITOR_PASS_SECONDS.observe(time.perf_counter() - started)
        MONITOR_LAST_PASS.set_to_current_time()
        self.health.beat()

    def _tables(self) -> None:
        if local_catalog_missing(self.settings):
            return  # not initialised yet (`k2 init`): nothing to read, and a read must not create it
        catalog = open_catalog(self.settings)
        now = datetime.now(UTC)
        for definition in TABLES:
            with reaching(definition.name):
                table = catalog.load_table((self.settings.namespace, definition.name))
            found = table_health(table, now, self._worst_partition(definition.name, table))
            name = definition.name
            LAKE_SNAPSHOTS.labels(name).set(found.snapshots)
            LAKE_DATA_FILES.labels(name).set(found.data_files)
            LAKE_ROWS.labels(name).set(found.rows)
            LAKE_PARTITION_FILES_MAX.labels(name).set(found.max_files_per_partition)
            for gauge, value in (
                (LAKE_FILE_SIZE_AVERAGE, found.average_file_bytes),
                (LAKE_SNAPSHOT_AGE, found.newest_snapshot_age_seconds),
                (LAKE_SNAPSHOT_ROWS, found.newest_snapshot_rows),
                (LAKE_FRESHNESS, found.freshness_seconds),
            ):
                if value is None:
                    gauge.remove(name)  # no series rather than a made-up number (a removal of none is fine)
                else:
                    gauge.labels(name).set(value)

    def _worst_partition(self, name: str, table: Table) -> int:
        """The worst partition's files, counted again when the table has changed, but at most every
        :data:`PARTITION_SCAN_SECONDS` once it has data: the count reads every manifest (thousands
        an hour on a streaming table, from S3 in production), and compaction's alert looks at hours."""
        snapshot = table.current_snapshot()
        current = snapshot.snapshot_id if snapshot else None
        scanned = self._partition_scans.get(name)
        due = scanned is None or scanned[2] == 0 or time.monotonic() - scanned[0] >= PARTITION_SCAN_SECONDS
        if scanned is None or (due and scanned[1] != current):
            scanned = self._partition_scans[name] = (time.monotonic(), current, worst_partition_files(table))
        return scanned[2]

    def _offsets(self) -> None:
        if local_catalog_missing(self.settings):
            return
        ids = topic_ids(self.settings, topic_names(self.settings), timeout=HEALTH_TIMEOUT_SECONDS)
        where, unlanded = progress(self.settings, ids)
        waiting = {(u.topic, u.partition): u for u in unlanded}
        values: dict[Gauge, dict[tuple[str, ...], float]] = {gauge: {} for gauge in _PARTITION_GAUGES}
        for p in where:
            labels = (p.topic, str(p.partition))
            behind = waiting.get((p.topic, p.partition))
            idle = 0.0
            if behind is not None:
                idle = min(behind.waiting_seconds, behind.idle_seconds if behind.idle_seconds is not None else 1e18)
            values[LAKE_PRODUCED_OFFSET][labels] = p.produced
            values[LAKE_LANDED_OFFSET][labels] = -1 if p.landed is None else p.landed
            values[LAKE_UNLANDED_RECORDS][labels] = behind.records if behind else 0
            values[LAKE_UNLANDED_IDLE_SECONDS][labels] = idle
            values[LAKE_UNLANDED_STALLED][labels] = int(behind is not None and
                                                        behind.stalled(self.settings.stall_after_seconds))  # fmt: skip
        for gauge, series in values.items():
            _replace(gauge, series)

    def run(self) -> None:
        """Serve /healthz and /metrics (and receive Airflow's StatsD), and pass until :meth:`stop`
        (or SIGTERM, SIGINT)."""
        server = serve(self.health, self.settings.monitor_host, self.settings.monitor_port)
        statsd = None
        if self.settings.monitor_statsd_port:
            airflow = StatsdMetrics()
            REGISTRY.register(airflow)
            statsd = serve_udp(airflow, self.settings.monitor_host, self.settings.monitor_statsd_port)
        self.health.details = lambda: {"components": [c.name for c in self.components]}
        log.info("monitor: serving on %s:%s, a pass every %g s", self.settings.monitor_host,
                 self.settings.monitor_port, self.settings.monitor_interval_seconds)  # fmt: skip
        try:
            while not self._stop.is_set():
                self.run_pass()
                self._stop.wait(self.settings.monitor_interval_seconds)
        finally:
            server.shutdown()
            if statsd is not None:
                statsd.close()
            self._pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            log.info("%s: stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
