"""Real processes for integration tests: the local broker and registry, on free ports.

They are started with the same supervisor `k2 up` uses, each in a temporary
K2_HOME, and stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka.schema_registry import SchemaRegistryClient

from k2_etl.config import Settings, load_settings
from k2_etl.local.components import broker, registry
from k2_etl.local.supervisor import start, stop
from tests.helpers import free_ports, quiet
from tests.integration.airflow_helpers import airflow, airflow_env
from tests.integration.lake_helpers import trades_table
from tests.integration.query_helpers import land_sample
from tests.integration.stream_helpers import ready_settings

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(
    POSTGRES_URL is None,
    reason="needs a PostgreSQL server: set TEST_POSTGRES_URL (.ci/run starts one and sets it)",
)


def make_settings(home: Path, **overrides: object) -> Settings:
    broker_port, registry_port = free_ports(2)
    return load_settings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{broker_port}",
        schema_registry_url=f"http://127.0.0.1:{registry_port}",
        **{"pushgateway_url": "", **overrides},
    )


@pytest.fixture(scope="session")
def platform_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Broker + registry shared by the whole session (tests use their own topics/subjects)."""
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("K2_")]:  # the developer's settings stay out
            env.delenv(name)
        env.chdir(tmp_path_factory.mktemp("cwd"))
        settings = make_settings(tmp_path_factory.mktemp("platform"))
    components = [broker(settings), registry(settings)]
    try:
        for component in components:
            start(settings, component, quiet)
        yield settings
    finally:
        for component in reversed(components):
            stop(settings, component, quiet)


@pytest.fixture
def own_settings(platform_settings: Settings, tmp_path: Path) -> Settings:
    """The shared broker and registry, with a K2_HOME (catalog, warehouse) and topic names of this test's own."""
    return load_settings(
        home=tmp_path / "home",
        kafka_bootstrap=platform_settings.kafka_bootstrap,
        schema_registry_url=platform_settings.schema_registry_url,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
    )


@pytest.fixture
def ready(own_settings: Settings) -> Settings:
    """:func:`own_settings` with topics, tables and schemas made, and settings for a consumer of its
    own (see :func:`ready_settings`)."""
    return ready_settings(own_settings)


@pytest.fixture(scope="session")
def landed(platform_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The committed sample landed (a day, two exchanges) and one rejected row, once per session: the
    query engine and API tests read it. A test that lands more into it lands symbols of its own, which
    no other test reads, so the tests pass in any order."""
    return land_sample(platform_settings, tmp_path_factory)


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow home with its metadata database migrated and K2's DAGs serialized, for `airflow dags
    test` runs (each test runs DAGs of its own or on logical dates of its own)."""
    home = tmp_path_factory.mktemp("airflow")
    settings, _ = trades_table(tmp_path_factory.mktemp("k2"))
    env = airflow_env(settings, home)
    for step in (("db", "migrate"), ("dags", "reserialize")):
        done = airflow(env, *step)
        assert done.returncode == 0, done.stderr[-3000:]
    return home


class RegistryProcess:
    """A registry of its own (own database), for tests that restart it or change global config."""

    def __init__(self, home: Path, **overrides: object) -> None:
        self.settings = make_settings(home, **overrides)
        self.component = registry(self.settings)
        self.url = self.settings.schema_registry_url
        self._clients: list[SchemaRegistryClient] = []

    def client(self) -> SchemaRegistryClient:
        """A new confluent-kafka client (empty cache, the registry's credentials if it has them),
        closed with the process."""
        conf = {"url": self.url}
        if self.settings.registry_auth is not None:
            conf["basic.auth.user.info"] = ":".join(self.settings.registry_auth)
        client = SchemaRegistryClient(conf)
        self._clients.append(client)
        return client

    def start(self) -> None:
        start(self.settings, self.component, quiet)

    def stop(self) -> None:
        stop(self.settings, self.component, quiet)

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()


@contextlib.contextmanager
def running_registry(home: Path, **overrides: object) -> Iterator[RegistryProcess]:
    """A :class:`RegistryProcess` started, and stopped (its clients closed) on the way out."""
    process = RegistryProcess(home, **overrides)
    process.start()
    try:
        yield process
    finally:
        process.close_clients()
        process.stop()


@pytest.fixture
def registry_process(tmp_path: Path) -> Iterator[RegistryProcess]:
    with running_registry(tmp_path / "registry-home") as process:
        yield process


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A new, empty database on the test server; dropped afterwards."""
    assert POSTGRES_URL is not None
    name = f"k2_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # name is generated above, not input
    try:
        yield sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
