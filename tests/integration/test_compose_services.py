"""docker-compose.yml's K2 services run as the file writes them (issue 16), where no Docker engine runs.

Each K2 service (k2-init, the k2-consumer replicas, k2-api, k2-monitor) is started as a local process with
exactly the file's entrypoint, command and environment, as the real Compose interpolates them
from a test .env (tests/integration/containers.py says what stands for a container). So is
Airflow's task environment: `airflow db migrate` with airflow-init's environment (what the base
image's entrypoint does for it), then `airflow dags test k2_daily_load` with airflow-scheduler's.
`dags test` runs the tasks in its own process, so LocalExecutor, the execution API's address and
the JWT secret are not exercised here.

The other services are local stand-ins: kafka is K2's local broker, schema-registry is K2's
registry, postgres is the PostgreSQL CI starts (set up by the file's own init script), s3 is
moto's server (the bucket s3-init would make, made with boto3: the SeaweedFS `weed shell`
commands cannot run here), redis is Debian's redis-server, pushgateway is Debian's
prometheus-pushgateway, and k2-api-lb is Debian's nginx with the file's server block. Not run
here: the healthchecks of kafka, schema-registry, s3 and redis (their tools are in their images),
Airflow's long-running services, Prometheus, Grafana, Trino.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import redis
import sqlalchemy as sa
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.local.components import broker, registry
from k2_etl.local.supervisor import start, stop
from k2_etl.schemas import TOPIC_RECORD_TYPES
from tests.compose import TEST_ENV, image_of, resolve
from tests.helpers import REPO, free_port, k2_env, poll, quiet, run_k2
from tests.integration.conftest import POSTGRES_URL, make_settings, needs_postgres
from tests.integration.containers import Container, airflow_image
from tests.integration.query_helpers import SAMPLE
from tests.integration.stand_ins import Pushgateway, RedisServer, S3Server

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = [
    needs_postgres,
    pytest.mark.skipif(not Path(NGINX).exists(), reason="needs Debian's nginx for k2-api-lb (.ci/run installs it)"),
    pytest.mark.timeout(1200),  # the stack's start and the daily load count against the first tests
]

DAY = date(2026, 11, 2)
NEXT_DAY = date(2026, 11, 3)
RATE_LIMIT = 30  # requests per client, through .env (K2_API_RATE_LIMIT)
TABLES = ("trades", "quotes", "reference_data")
#: What the postgres image's init script makes (docker/postgres/init-databases.sh), on CI's server.
DATABASES = ("k2_catalog", "airflow")
ROLES = ("k2", "airflow")
#: Marks the databases and roles this test made, so what a run that died left is cleaned up after.
MARK = "made by tests/integration/test_compose_services.py"


@dataclass
class Stack:
    config: dict[str, Any]
    consumers: list[Container]
    api: Container
    lb: Container
    monitor: Container
    postgres: Container
    redis: RedisServer
    pushgateway: Pushgateway
    s3: S3Server
    landing: Path
    make: Callable[[str, str], Container]  # a container of a service, by name

    def settings_of(self, container: Container) -> Settings:
        """The K2 settings ``container``'s process reads (its K2_* variables)."""
        env = container.environment()
        # a list setting comes as JSON text, which the environment source reads and keyword arguments do not
        given = {k[3:].lower(): json.loads(v) if v.startswith("[") else v for k, v in env.items()
                 if k.startswith("K2_")}  # fmt: skip
        return load_settings(**given)

    def rows(self) -> dict[str, int]:
        settings = self.settings_of(self.api)
        catalog = open_catalog(settings)
        return {name: len(catalog.load_table((settings.namespace, name)).scan().to_arrow()) for name in TABLES}


#: Each kind of object the init script makes, and the query of one's comment (no row: it does not exist).
COMMENT_OF = {
    "DATABASE": "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :n",
    "ROLE": "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = :n",
}
MADE = [*(("DATABASE", name) for name in DATABASES), *(("ROLE", name) for name in ROLES)]


def _drop_ours(engine: sa.Engine, refuse_others: bool) -> None:
    """Drop the init script's databases and roles if this test made them (:data:`MARK`); with
    ``refuse_others``, fail on ones it did not make, which the init script cannot create again."""
    with engine.connect() as conn:
        for kind, name in MADE:  # databases first: a role is dropped once it owns none
            found = conn.execute(sa.text(COMMENT_OF[kind]), {"n": name}).first()
            if found is None:
                continue
            if found[0] != MARK:
                assert not refuse_others, (
                    f"TEST_POSTGRES_URL's server has a {kind.lower()} {name!r} this test did not make: it runs "
                    "docker/postgres/init-databases.sh there, which creates it. Use a server without it (if a run "
                    f"of this test died before marking it, drop it: DROP {kind} {name})"
                )
                continue
            force = " WITH (FORCE)" if kind == "DATABASE" else ""
            conn.execute(sa.text(f'DROP {kind} "{name}"{force}'))  # names are the constants above, never input


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("compose")
    landing = folder / "landing"
    shutil.copytree(SAMPLE / DAY.isoformat(), landing / "k2" / DAY.isoformat())
    shutil.copy(SAMPLE / "reference_data.csv", landing / "k2" / DAY.isoformat())
    postgres_url = sa.make_url(POSTGRES_URL or "")
    env = {**TEST_ENV, "POSTGRES_PASSWORD": postgres_url.password or "", "K2_LANDING_DIR": str(landing),
           "K2_API_RATE_LIMIT": f"{RATE_LIMIT}/day",  # a day: no window ends during the test
           "K2_API_EDGE_SUBNET": "127.0.0.1/32"}  # where nginx connects to the API from, here  # fmt: skip
    config = resolve(env)
    platform = make_settings(folder / "platform")  # a broker and registry of this module's own
    admin = sa.create_engine(str(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    containers: list[Container] = []
    with ExitStack() as cleanup:
        cleanup.callback(admin.dispose)
        _drop_ours(admin, refuse_others=True)
        cleanup.callback(_drop_ours, admin, refuse_others=False)
        for component in (broker(platform), registry(platform)):
            start(platform, component, quiet)
            cleanup.callback(stop, platform, component, quiet)
        redis_server = RedisServer(folder)
        cleanup.callback(redis_server.stop)
        pushgateway = Pushgateway(folder)
        cleanup.callback(pushgateway.stop)
        s3 = S3Server(folder)
        cleanup.callback(s3.stop)
        cleanup.callback(lambda: [c.stop() for c in reversed(containers)])
        stand_ins = {
            "kafka": platform.kafka_bootstrap,
            "schema-registry": urlsplit(platform.schema_registry_url).netloc,
            "postgres": f"{postgres_url.host}:{postgres_url.port}",
            "s3": f"127.0.0.1:{s3.port}",
            "redis": f"127.0.0.1:{redis_server.port}",
            "pushgateway": f"127.0.0.1:{pushgateway.port}",
        }
        k2_image = image_of(REPO / "Dockerfile")
        airflow = airflow_image(image_of(REPO / "docker" / "airflow" / "Dockerfile"))

        def make(service: str, name: str) -> Container:
            is_airflow = service.startswith("airflow-")
            container = Container(name, config["services"][service], airflow if is_airflow else k2_image,
                                  folder / "containers" / name, stand_ins, folder / "volumes",
                                  runtime_lock_only=not is_airflow)  # fmt: skip
            containers.append(container)
            return container

        # postgres: its image runs the init script once, as the superuser (here over TCP, not its socket)
        postgres = make("postgres", "postgres-1")
        postgres.extra_env = {"PGHOST": str(postgres_url.host), "PGPORT": str(postgres_url.port)}
        superuser = {"POSTGRES_USER": "postgres", "PGPASSWORD": env["POSTGRES_PASSWORD"]}
        made = postgres.run(["/bin/bash", str(postgres.path("/docker-entrypoint-initdb.d/10-k2-databases.sh"))],
                            **superuser)  # fmt: skip
        with admin.connect() as conn:  # marked at once, even when the script failed half-way
            for kind, name in MADE:
                if conn.execute(sa.text(COMMENT_OF[kind]), {"n": name}).first() is not None:
                    conn.execute(sa.text(f"COMMENT ON {kind} \"{name}\" IS '{MARK}'"))  # constants, not input
        assert made.returncode == 0, made.stderr
        # s3-init: the warehouse bucket, with K2's credentials
        bucket = urlsplit(config["services"]["k2-init"]["environment"]["K2_WAREHOUSE"]).netloc
        s3.client(env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)

        init = make("k2-init", "k2-init-1").run(timeout=300)
        assert init.returncode == 0, init.stdout + init.stderr

        replicas = config["services"]["k2-consumer"]["deploy"]["replicas"]
        consumers = [make("k2-consumer", f"k2-consumer-{i}") for i in range(1, replicas + 1)]
        api = make("k2-api", "k2-api-1")
        stand_ins["k2-api"] = f"127.0.0.1:{api.ports[int(api.service['environment']['K2_API_PORT'])]}"
        for container in [*consumers, api]:
            container.start()
        for container in [*consumers, api]:
            _wait_healthy(container)
        lb = make("k2-api-lb", "k2-api-lb-1")  # once k2-api is healthy (its depends_on)
        lb.start(_nginx(lb))
        _wait_healthy(lb)
        monitor = make("k2-monitor", "k2-monitor-1")  # Airflow's StatsD goes to its UDP port
        statsd_port = int(monitor.service["environment"]["K2_MONITOR_STATSD_PORT"])
        monitor.ports[statsd_port] = free_port()
        stand_ins["k2-monitor"] = f"127.0.0.1:{monitor.ports[statsd_port]}"
        monitor.start()
        _wait_healthy(monitor)
        yield Stack(config, consumers, api, lb, monitor, postgres, redis_server, pushgateway, s3, landing, make)


def _nginx(lb: Container) -> list[str]:
    """Debian's nginx with k2-api-lb's server block (docker/nginx/k2-api.conf, translated). The
    image's own nginx.conf around it is replaced by a minimal one that keeps everything in the
    container's folder."""
    conf = lb.mounted("/etc/nginx/conf.d/default.conf")
    conf = re.sub(r"listen (\d+);", lambda m: f"listen {lb.ports[int(m[1])]};", conf)
    temp = " ".join(f"{kind}_temp_path {lb.root / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                        "scgi"))  # fmt: skip
    main = lb.root / "nginx.conf"
    main.write_text(f"user root; daemon off; pid {lb.root / 'nginx.pid'}; error_log stderr notice;\n"
                    f"events {{}}\nhttp {{ access_log off; {temp}\n{conf}\n}}\n")  # fmt: skip
    return [NGINX, "-p", str(lb.root), "-c", str(main)]


def _wait_healthy(container: Container) -> None:
    """Its healthcheck, run as Docker runs it (at most until Docker would call it unhealthy)."""

    def healthy() -> bool:
        assert container.process is None or container.process.poll() is None, container.log.read_text()[-3000:]
        return container.healthcheck().returncode == 0

    poll(healthy, timeout=container.unhealthy_after(), what=f"{container.name} healthy", every=1)


def _url(container: Container, path: str) -> str:
    return f"http://127.0.0.1:{next(iter(container.ports.values()))}{path}"


def _counts(consumer: Container) -> dict[str, int]:
    """The consumer's counts, from its /healthz."""
    body = httpx.get(_url(consumer, "/healthz"), timeout=10).json()
    return {key: body[key] for key in ("consumed", "landed", "rejected", "deduplicated", "partitions")}


def _in_hand(counts: dict[str, int]) -> int:
    """Records taken and not (yet) landed, rejected or dropped as duplicates."""
    return counts["consumed"] - counts["landed"] - counts["rejected"] - counts["deduplicated"]


def _holding(consumers: list[Container], gaps: list[int]) -> tuple[int, dict[str, int]] | None:
    """The first replica holding records it has not landed (beyond ``gaps``), and its counts."""
    for i, consumer in enumerate(consumers):
        counts = _counts(consumer)
        if _in_hand(counts) > gaps[i]:
            return i, counts
    return None


@pytest.fixture(scope="module")
def daily_loaded(stack: Stack) -> str:
    """airflow-init (the base image's entrypoint migrates the database first), then the daily load of
    the sample day in airflow-scheduler's environment, with the consumers running."""
    init = stack.make("airflow-init", "airflow-init-1")
    migrated = init.run(["airflow", "db", "migrate"])
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    version = init.run(timeout=120)
    assert version.returncode == 0 and version.stdout.strip(), version.stderr
    scheduler = stack.make("airflow-scheduler", "airflow-scheduler-1")
    conf = json.dumps({"trading_date": DAY.isoformat()})
    run = scheduler.run(["airflow", "dags", "test", "k2_daily_load", f"{DAY}T06:00:00+00:00", "-c", conf],
                        timeout=600)  # fmt: skip
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    return log


def test_k2_init_made_topics_tables_and_schemas_on_the_production_back_ends(stack: Stack) -> None:
    settings = stack.settings_of(stack.api)
    metadata = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=10)
    k2_topics = {name: len(t.partitions) for name, t in metadata.topics.items() if name.startswith("k2.")}
    assert k2_topics and set(k2_topics.values()) == {settings.topic_partitions} == {6}, k2_topics
    engine = sa.create_engine(settings.catalog_uri)  # the role and database the init script made
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT catalog_name, table_name, metadata_location FROM iceberg_tables")).all()
    finally:
        engine.dispose()
    assert {row.catalog_name for row in rows} == {"k2"} and {"trades", "quotes"} <= {row.table_name for row in rows}
    assert all(row.metadata_location.startswith("s3://k2-warehouse/warehouse/") for row in rows)
    keys = stack.s3.client().list_objects_v2(Bucket="k2-warehouse").get("Contents", [])
    assert any(obj["Key"].endswith(".metadata.json") for obj in keys)
    subjects = httpx.get(f"{settings.schema_registry_url}/subjects", timeout=10).json()
    assert {"k2.trades-value", "k2.quotes-value"} <= set(subjects)


def test_each_healthcheck_passes_and_the_services_listen_where_the_file_says(stack: Stack) -> None:
    for container in [*stack.consumers, stack.api, stack.lb, stack.postgres]:
        result = container.healthcheck()
        assert result.returncode == 0, (container.name, result.stdout, result.stderr)
    health = httpx.get(_url(stack.lb, "/health"), timeout=30).json()
    assert "consumer" not in health["checks"], health  # no check of a consumer it cannot see (K2_STREAM_METRICS_PORT=0)
    assert {check["status"] for check in health["checks"].values()} <= {"up", "slow"}, health  # slow: a busy machine
    for container in [*stack.consumers, stack.api]:
        assert container.process is not None
        family = [container.process.pid, *(p.pid for p in psutil.Process(container.process.pid).children(True))]
        listening = {(c.laddr.ip, c.laddr.port) for pid in family for c in psutil.Process(pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}  # fmt: skip
        assert ("0.0.0.0", next(iter(container.ports.values()))) in listening, (container.name, listening)


def test_the_daily_load_lands_exactly_once_on_two_consumers_and_the_api_serves_it(
    stack: Stack, daily_loaded: str
) -> None:
    assert "ok   every record landed" in daily_loaded and "ok   no duplicate ids" in daily_loaded
    settings = stack.settings_of(stack.api)
    trades = open_catalog(settings).load_table((settings.namespace, "trades")).scan().to_arrow()
    ids = trades.column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) > 1000
    owned = [_counts(c)["partitions"] for c in stack.consumers]
    every = len(TOPIC_RECORD_TYPES) * settings.topic_partitions
    assert sum(owned) == every and all(owned), owned  # the replicas split the partitions between them

    for symbol, count in Counter(trades.column("symbol").to_pylist()).items():
        answer = httpx.get(_url(stack.lb, f"/v1/summary/{symbol}/{DAY}"), timeout=30)  # the API's one address
        assert answer.status_code == 200, answer.text
        assert answer.json()["trades"] == count, (symbol, answer.json())
    limiter = redis.Redis.from_url(stack.redis.url)
    try:
        assert limiter.keys("LIMITS*"), "the API did not count its requests in Redis"
    finally:
        limiter.close()
    # The DAG's tasks pushed their metrics where the stack's K2_PUSHGATEWAY_URL says.
    jobs = {group["job"] for group in stack.pushgateway.groups()}
    assert {"k2_load", "k2_day_quality"} <= jobs, jobs


def test_the_monitor_sees_the_stack_and_receives_airflows_metrics(stack: Stack, daily_loaded: str) -> None:
    """k2-monitor as the file writes it: the components it checks there healthy (not the consumers,
    which Prometheus scrapes itself), the tables' rows, and Airflow's StatsD from the daily load."""
    url = f"http://127.0.0.1:{stack.monitor.ports[int(stack.monitor.service['environment']['K2_MONITOR_PORT'])]}"

    def families() -> dict[str, list[Any]]:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        return {f.name: f.samples for f in text_string_to_metric_families(text)}

    def up() -> dict[str, float] | None:
        found = {s.labels["component"]: s.value for s in families().get("k2_platform_component_up", [])}
        wanted = {"broker", "registry", "catalog", "pushgateway", "landed", "api"}
        return found if wanted <= found.keys() and all(found[c] == 1 for c in wanted) else None

    components = poll(up, 60, "k2-monitor's checks", every=1)
    assert "consumer" not in components  # K2_STREAM_METRICS_PORT=0 there: the replicas are scraped
    rows = {s.labels["table"]: s.value for s in families()["k2_lake_rows"]}
    assert rows["trades"] > 1000, rows
    airflow = [name for name in families() if name.startswith("airflow_")]
    assert airflow, "no Airflow metric reached k2-monitor over StatsD"


def test_the_balancer_gives_each_client_its_own_limit_which_a_header_cannot_change(stack: Stack) -> None:
    """Two clients on addresses of their own, through k2-api-lb: the API counts each by the address
    nginx puts in X-Forwarded-For (it trusts api-edge, here 127.0.0.1/32, where nginx connects
    from), not by nginx's, and a client's own X-Forwarded-For does not buy it a fresh allowance."""

    def client(address: str) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)

    with client("127.0.0.3") as first, client("127.0.0.4") as second, client("127.0.0.5") as around:
        url = _url(stack.lb, "/v1/symbols")
        statuses = Counter(first.get(url).status_code for _ in range(RATE_LIMIT))
        assert statuses == {200: RATE_LIMIT}, statuses
        assert first.get(url).status_code == 429
        assert first.get(url, headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 429
        assert second.get(url).status_code == 200  # counted on its own, not as the balancer
        # Around the balancer, straight to k2-api (from outside api-edge): X-Forwarded-For is not
        # believed, so a new address in it each time still counts against the one peer.
        direct = _url(stack.api, "/v1/symbols")
        forged = [around.get(direct, headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
                  for i in range(RATE_LIMIT + 1)]  # fmt: skip
        assert forged == [200] * RATE_LIMIT + [429], forged


def test_sigterm_lands_the_batch_in_hand_and_the_other_replica_the_rest_exactly_once(
    stack: Stack, daily_loaded: str, tmp_path: Path
) -> None:
    """What `docker compose stop` does (SIGTERM, SIGKILL once `stop_grace_period` ran out), to one
    replica while a second day streams in, then to the other once it has landed the rest."""
    before = stack.rows()
    gaps = [_in_hand(_counts(c)) for c in stack.consumers]  # dropped at the start-up rebalance, if any
    generated = run_k2(k2_env(tmp_path), "generate", "--out", str(tmp_path / "gen"), "--symbols", "4", "--days", "1",
                       "--start", NEXT_DAY.isoformat(), "--trades-per-day", "1500", "--no-anomalies",
                       "--seed", "16")  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    day = stack.landing / "k2" / NEXT_DAY.isoformat()
    shutil.copytree(tmp_path / "gen" / NEXT_DAY.isoformat(), day)
    shutil.copy(tmp_path / "gen" / "reference_data.csv", day)  # its symbols, as vendors send them
    expected = {name: before[name] + sum(len(f.read_text().splitlines()) - 1 for f in day.glob(f"{name}*.csv"))
                for name in TABLES}  # fmt: skip
    # `docker compose exec k2-consumer k2 load ...` (the landing folder as the container sees it),
    # watched while it runs: the first replica seen holding records it has not landed is stopped
    loader = stack.consumers[0]
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(
            loader.run, ["k2", "load", str(loader.path(f"/data/landing/k2/{NEXT_DAY}")), "--format", "k2"]
        )
        first, then = poll(lambda: _holding(stack.consumers, gaps), timeout=120, what="a replica with a batch in hand",
                           every=0.05)  # fmt: skip
        stopped, other = stack.consumers[first], stack.consumers[1 - first]
        code = stopped.stop()  # None: killed at the end of the grace period
        loaded = load.result(timeout=300)
    assert loaded.returncode == 0, loaded.stdout[-3000:] + loaded.stderr[-3000:]
    log = stopped.log.read_text()
    assert code == 0, log[-3000:]
    assert "SIGTERM: committing the batch in hand, then stopping" in log and "Traceback" not in log
    final = json.loads(re.findall(r"stopped: (\{.*\})", log)[-1])
    # What it held when told to stop, it landed (a batch dropped instead would be uncounted, and read
    # again by the other replica): nothing in hand at the end, and at least that much landed since.
    assert _in_hand(final) == gaps[first], final
    assert final["landed"] - then["landed"] >= _in_hand(then) - gaps[first] > 0, (then, final)
    assert stopped.healthcheck().returncode != 0  # its healthcheck sees it gone

    poll(lambda: stack.rows() == expected or None, timeout=300, what=f"{expected} rows", every=2)
    settings = stack.settings_of(stack.api)
    ids = open_catalog(settings).load_table((settings.namespace, "trades")).scan().to_arrow().column("event_id")
    assert len(ids) == len(set(ids.to_pylist()))  # exactly once across the stop and the handover
    code = other.stop()
    assert code == 0, other.log.read_text()[-3000:]
    assert stack.api.stop() == 0, stack.api.log.read_text()[-3000:]
