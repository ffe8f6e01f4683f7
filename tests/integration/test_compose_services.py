"""docker-compose.yml's K2 services run as the file writes them (issue 16), where no Docker engine runs.

Each K2 service (k2-init, the k2-consumer replicas, k2-api) and the Airflow task environment
(airflow-init, then `airflow dags test k2_daily_load` with airflow-scheduler's environment) is
started as a local process with exactly the file's entrypoint, command and environment, as the
real Compose interpolates them from a test .env (tests/integration/containers.py says what
stands for a container). The other services are local stand-ins: kafka is K2's local broker,
schema-registry is K2's registry, postgres is the PostgreSQL CI starts (set up by the file's own
init script), s3 is moto's server (the bucket s3-init would make, made with boto3: the SeaweedFS
`weed shell` commands cannot run here), redis is Debian's redis-server.

Not run here: the healthchecks of kafka, schema-registry, s3 and redis (their tools are in their
images), Airflow's long-running services, Prometheus, Grafana and Trino.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import sqlalchemy as sa
from confluent_kafka.admin import AdminClient

from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.local.components import broker, registry
from k2_etl.local.supervisor import start, stop
from k2_etl.schemas import TOPIC_RECORD_TYPES
from tests.compose import TEST_ENV, image_of, resolve
from tests.helpers import REPO, poll, quiet
from tests.integration.conftest import POSTGRES_URL, make_settings, needs_postgres
from tests.integration.containers import Container, airflow_image
from tests.integration.query_helpers import SAMPLE
from tests.integration.stand_ins import RedisServer, S3Server

pytestmark = needs_postgres

DAY = date(2026, 11, 2)
#: What the postgres image's init script makes (docker/postgres/init-databases.sh), on CI's server.
DATABASES = ("k2_catalog", "airflow")
ROLES = ("k2", "airflow")
#: Marks the databases this test made, so a run that died before cleaning up is cleaned up after.
MARK = "made by tests/integration/test_compose_services.py"


@dataclass
class Stack:
    config: dict
    consumers: list[Container]
    api: Container
    postgres: Container
    redis: RedisServer
    s3: S3Server
    folder: Path
    make: Callable[[str, str], Container]  # a container of a service, by name

    def settings_of(self, container: Container) -> Settings:
        """The K2 settings ``container``'s process reads (its K2_* variables)."""
        env = container.environment()
        return load_settings(**{k[3:].lower(): v for k, v in env.items() if k.startswith("K2_")})


def _admin_engine() -> sa.Engine:
    assert POSTGRES_URL is not None
    return sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")


def _drop_ours(engine: sa.Engine, fail_if_foreign: bool) -> None:
    """Drop the init script's databases and roles if this test made them; refuse to touch others'."""
    with engine.connect() as conn:
        for name in DATABASES:
            comment = conn.execute(
                sa.text("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if comment is None:
                continue
            if comment[0] != MARK:
                assert not fail_if_foreign, (
                    f"TEST_POSTGRES_URL's server already has a database {name!r} this test did not make: the test "
                    "runs docker/postgres/init-databases.sh there, which creates it; use a server without it"
                )
                continue
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))  # names are constants above
        for role in ROLES:
            if conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
                owns = conn.execute(sa.text("SELECT 1 FROM pg_database d JOIN pg_roles r ON d.datdba = r.oid "
                                            "WHERE r.rolname = :r"), {"r": role}).first()  # fmt: skip
                if not owns:
                    conn.execute(sa.text(f'DROP ROLE "{role}"'))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("compose")
    landing = folder / "landing"
    shutil.copytree(SAMPLE / DAY.isoformat(), landing / "k2" / DAY.isoformat())
    shutil.copy(SAMPLE / "reference_data.csv", landing / "k2" / DAY.isoformat())
    postgres_url = sa.make_url(POSTGRES_URL or "")
    env = {**TEST_ENV, "POSTGRES_PASSWORD": postgres_url.password or "", "K2_LANDING_DIR": str(landing)}
    config = resolve(env)

    platform = make_settings(folder / "platform")  # a broker and registry of this module's own
    components = [broker(platform), registry(platform)]
    redis_server = RedisServer(folder)
    s3 = S3Server(folder)
    admin = _admin_engine()
    _drop_ours(admin, fail_if_foreign=True)
    containers: list[Container] = []
    try:
        for component in components:
            start(platform, component, quiet)
        registry_url = urlsplit(platform.schema_registry_url)
        stand_ins = {
            "kafka": platform.kafka_bootstrap,
            "schema-registry": registry_url.netloc,
            "postgres": f"{postgres_url.host}:{postgres_url.port}",
            "s3": f"127.0.0.1:{s3.port}",
            "redis": f"127.0.0.1:{redis_server.port}",
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
        postgres.extra_env = {"PGPORT": str(postgres_url.port), "PGHOST": str(postgres_url.host)}
        init_script = postgres.path("/docker-entrypoint-initdb.d/10-k2-databases.sh")
        made = postgres.run(
            ["/bin/bash", str(init_script)], POSTGRES_USER="postgres", PGPASSWORD=env["POSTGRES_PASSWORD"]
        )
        assert made.returncode == 0, made.stderr
        with admin.connect() as conn:
            for name in DATABASES:
                conn.execute(sa.text(f"COMMENT ON DATABASE \"{name}\" IS '{MARK}'"))  # constants
        # s3-init: the warehouse bucket, with K2's credentials
        bucket = urlsplit(config["services"]["k2-init"]["environment"]["K2_WAREHOUSE"]).netloc
        s3.client(env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)

        init = make("k2-init", "k2-init-1").run(timeout=300)
        assert init.returncode == 0, init.stdout + init.stderr

        replicas = config["services"]["k2-consumer"]["deploy"]["replicas"]
        consumers = [make("k2-consumer", f"k2-consumer-{i}") for i in range(1, replicas + 1)]
        api = make("k2-api", "k2-api-1")
        for container in [*consumers, api]:
            container.start()
        for container in [*consumers, api]:
            poll(lambda c=container: _healthy(c), timeout=container.unhealthy_after(), what=f"{container.name} healthy")
        yield Stack(config, consumers, api, postgres, redis_server, s3, folder, make)
    finally:
        for container in reversed(containers):
            container.stop()
        s3.stop()
        redis_server.stop()
        for component in reversed(components):
            stop(platform, component, quiet)
        _drop_ours(admin, fail_if_foreign=False)
        admin.dispose()


def _healthy(container: Container) -> bool:
    assert container.process is None or container.process.poll() is None, container.log.read_text()[-3000:]
    return container.healthcheck().returncode == 0


@pytest.fixture(scope="module")
def daily_loaded(stack: Stack) -> str:
    """airflow-init (the base image's entrypoint migrates the database first), then the daily load of
    the sample day in airflow-scheduler's environment: its tasks run there (LocalExecutor)."""
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


def test_each_services_healthcheck_passes_and_fails_without_its_process(stack: Stack) -> None:
    for container in [*stack.consumers, stack.api, stack.postgres]:
        result = container.healthcheck()
        assert result.returncode == 0, (container.name, result.stdout, result.stderr)
    nobody = stack.make("k2-consumer", "k2-consumer-never-started")  # its port: nothing listens there
    assert nobody.healthcheck().returncode != 0


def test_the_daily_load_lands_exactly_once_on_two_consumers_and_the_api_serves_it(
    stack: Stack, daily_loaded: str
) -> None:
    assert "ok   every record landed" in daily_loaded and "ok   no duplicate ids" in daily_loaded
    settings = stack.settings_of(stack.api)
    catalog = open_catalog(settings)
    trades = catalog.load_table((settings.namespace, "trades")).scan().to_arrow()
    ids = trades.column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) > 1000
    owned = [httpx.get(_url(c, "/healthz"), timeout=10).json()["partitions"] for c in stack.consumers]
    every = len(TOPIC_RECORD_TYPES) * settings.topic_partitions
    assert sum(owned) == every and all(owned), owned  # the replicas split the partitions between them

    per_symbol = Counter(trades.column("symbol").to_pylist())
    for symbol, count in per_symbol.items():
        answer = httpx.get(_url(stack.api, f"/v1/summary/{symbol}/{DAY}"), timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["trades"] == count, (symbol, answer.json())
    limiter = redis.Redis.from_url(stack.redis.url)
    try:
        assert limiter.keys("LIMITS*"), "the API did not count its requests in Redis"
    finally:
        limiter.close()


def test_sigterm_lets_each_consumer_commit_and_exit_0_within_its_grace_period(stack: Stack, daily_loaded: str) -> None:
    """What `docker compose stop` does: SIGTERM, and SIGKILL once `stop_grace_period` ran out."""
    landed = []
    for consumer in stack.consumers:
        code = consumer.stop()  # None: killed at the end of the grace period
        log = consumer.log.read_text()
        assert code == 0, log[-3000:]
        assert "SIGTERM: committing the batch in hand, then stopping" in log and "Traceback" not in log
        stopped = re.search(r"stopped: (\{.*\})", log)
        assert stopped, log[-3000:]
        landed.append(json.loads(stopped[1])["landed"])
    settings = stack.settings_of(stack.api)
    catalog = open_catalog(settings)
    rows = sum(len(catalog.load_table((settings.namespace, t)).scan().to_arrow())
               for t in ("trades", "quotes", "reference_data"))  # fmt: skip
    assert sum(landed) == rows  # every row landed by exactly one replica
    assert stack.api.stop() == 0, stack.api.log.read_text()[-3000:]


def _url(container: Container, path: str) -> str:
    port = next(iter(container.ports.values()))
    return f"http://127.0.0.1:{port}{path}"
