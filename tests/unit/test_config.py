"""Settings: defaults for the local platform, overrides from env and file, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from pydantic import SecretStr

from k2_etl.config import Settings, env_name, load_settings, redact_url
from k2_etl.errors import ConfigError


def test_defaults_point_at_the_local_platform(tmp_path: Path) -> None:
    s = load_settings()
    assert s.home == (tmp_path / ".k2").resolve()  # the tests run in tmp_path
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.schema_registry_url == "http://127.0.0.1:8081"
    assert s.catalog_uri == f"sqlite:///{tmp_path / '.k2' / 'catalog.db'}"
    assert s.registry_db_url == f"sqlite:///{tmp_path / '.k2' / 'registry.db'}"
    assert s.warehouse == (tmp_path / ".k2" / "warehouse").as_uri()
    assert (s.api_host, s.api_port) == ("127.0.0.1", 8000)


def test_production_values_need_no_code_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K2_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("K2_SCHEMA_REGISTRY_URL", "http://schema-registry:8081/")
    monkeypatch.setenv("K2_CATALOG_URI", "postgresql+psycopg2://k2:pw@postgres:5432/k2")
    monkeypatch.setenv("K2_WAREHOUSE", "s3://lake/warehouse")
    monkeypatch.setenv("K2_KAFKA_CONFIG", '{"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN"}')
    s = load_settings()
    assert s.kafka_address == ("kafka-1", 9092)
    assert s.registry_address == ("schema-registry", 8081)
    assert s.schema_registry_url == "http://schema-registry:8081"
    assert s.warehouse == "s3://lake/warehouse"
    assert s.kafka_config == {"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN"}


def test_home_moves_every_derived_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("K2_HOME", str(tmp_path / "elsewhere"))
    s = load_settings()
    assert s.catalog_uri == f"sqlite:///{tmp_path / 'elsewhere' / 'catalog.db'}"
    assert s.run_dir == tmp_path / "elsewhere" / "run"


def test_config_file_and_environment_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "k2.toml").write_text('namespace = "ref"\ntopic_partitions = 6\n')
    assert load_settings().topic_partitions == 6
    monkeypatch.setenv("K2_TOPIC_PARTITIONS", "12")
    s = load_settings()
    assert (s.namespace, s.topic_partitions) == ("ref", 12)
    other = tmp_path / "other.toml"
    other.write_text('namespace = "other"\n')
    monkeypatch.setenv("K2_CONFIG", str(other))
    assert load_settings().namespace == "other"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("K2_API_PORT", "abc", "K2_API_PORT='abc': Input should be a valid integer"),
        ("K2_API_PORT", "0", "K2_API_PORT='0'"),
        ("K2_CATALOG_URI", "mongodb://x/y", "K2_CATALOG_URI='mongodb://x/y': unknown scheme 'mongodb'"),
        ("K2_WAREHOUSE", "ftp://x/y", "K2_WAREHOUSE='ftp://x/y': unknown scheme 'ftp'"),
        ("K2_KAFKA_BOOTSTRAP", "kafka", "K2_KAFKA_BOOTSTRAP='kafka': expected host:port"),
        ("K2_SCHEMA_REGISTRY_URL", "ftp://r", "K2_SCHEMA_REGISTRY_URL='ftp://r': expected an http(s):// URL"),
        ("K2_NAMESPACE", "bad-name", "K2_NAMESPACE='bad-name'"),
        ("K2_KAFKA_CONFIG", "{not json", "K2_KAFKA_CONFIG"),
        ("K2_KAFKA_CONFIG", '{"a": [1]}', "plain values"),
        (
            "K2_SCHEMA_REGISTRY_BASIC_AUTH",
            "justuser",
            "K2_SCHEMA_REGISTRY_BASIC_AUTH='justuser': expected user:password",
        ),
        ("K2_REGISTRY_DB_URL", "not a url", "K2_REGISTRY_DB_URL='not a url': expected a SQLAlchemy URL"),
        ("K2_START_TIMEOUT_SECONDS", "nan", "K2_START_TIMEOUT_SECONDS='nan'"),
        ("K2_API_RATE_LIMIT_STORAGE_URI", "cache:6379", "K2_API_RATE_LIMIT_STORAGE_URI='cache:6379': expected a"),
        (
            "K2_API_RATE_LIMIT_STORAGE_URI",
            "postgres://k2:s3cret@db/x",  # a password in a rejected URI is masked like everywhere else
            "K2_API_RATE_LIMIT_STORAGE_URI='postgres://k2:***@db/x': expected a Flask-Limiter storage URI: memcached",
        ),
        ("K2_CATALOG_URI", "mongodb://u:pw@x/y", "K2_CATALOG_URI='mongodb://u:***@x/y': unknown scheme 'mongodb'"),
        ("K2_API_TRUSTED_PROXIES", '["172.30.250.1/24"]', "'172.30.250.1/24' is not a network (a CIDR such as"),
        ("K2_API_TRUSTED_PROXIES", '["proxy"]', "'proxy' is not a network"),
    ],
)
def test_malformed_settings_name_setting_and_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_in_config_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "k2.toml").write_text('kafka_bootstrapp = "x:1"\n')
    with pytest.raises(ConfigError, match="unknown key 'kafka_bootstrapp' in the config file"):
        load_settings()


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "k2.toml").write_bytes(b'namespace = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="invalid config file"):
        load_settings()


def test_missing_explicit_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("K2_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="K2_CONFIG"):
        load_settings()


def test_redact_url() -> None:
    assert redact_url("postgresql://u:secret@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redact_url(None) is None


#: A value unlike the default for every setting, chosen to trip a lossy encoding: secrets, lists of
#: secrets and dicts (JSON), paths with spaces, bools, floats that are not round, quotes, commas,
#: colons, non-ASCII. test_to_env_round_trips_every_setting fails on a setting missing here.
NON_DEFAULT: dict[str, object] = {
    "home": "h o m e",  # relative: resolved against the working directory, as the child's is
    "kafka_bootstrap": "kafka-1:9093,kafka-2:9093",
    "kafka_config": {"security.protocol": "SASL_SSL", "sasl.password": 'p,"q": r\u00e9', "enable.idempotence": True},
    "topic_prefix": '"k2". ',
    "topic_partitions": 7,
    "topic_replication_factor": 3,
    "schema_registry_url": "https://registry.example:8443",
    "schema_registry_basic_auth": 'user:pa:ss "w\u00f6rd", [1]',
    "registry_db_url": "postgresql+psycopg2://k2:s3cret@db:5432/registry",
    "catalog_name": "lake",
    "catalog_uri": "postgresql+psycopg2://k2:s3cret@db:5432/catalog",
    "warehouse": "s3://bucket/warehouse",
    "namespace": "md_2",
    "s3_endpoint": "http://s3:9000",
    "s3_access_key_id": "AKIA",
    "s3_secret_access_key": "sec ret/+=",
    "s3_region": "eu-west-1",
    "formats_dir": "my formats",
    "ingest_metrics_port": 0,
    "ingest_manifest_retry_seconds": 0.5,
    "landing": "land ing",
    "stream_group": "group one",
    "stream_batch_rows": 123,
    "stream_batch_seconds": 0.1 + 0.2,
    "stream_stall_seconds": 7.5,
    "stream_metrics_host": "0.0.0.0",
    "stream_metrics_port": 9,
    "stream_session_timeout_seconds": 6.5,
    "stream_max_poll_interval_seconds": 7.25,
    "api_host": "::1",
    "api_port": 8443,
    "api_workers": 3,
    "api_threads": 5,
    "api_queue": 0,
    "api_query_budget_seconds": 1e-3,
    "api_rate_limit": "5/second",
    "api_trusted_proxies": ["10.0.0.0/8", "fd00::/8"],
    "api_rate_limit_storage_uri": "redis://cache:6379/0",
    "api_keys": ["k1", 'k,2 "quoted"', "[not json]"],
    "maintenance_min_files": 9,
    "maintenance_snapshot_retention_hours": 0.5,
    "maintenance_retain_snapshots": 3,
    "maintenance_orphan_age_hours": 100.0,
    "daily_load_wait_seconds": 60.0,
    "daily_load_poke_seconds": 2.0,
    "daily_load_on_no_files": "skip",
    "monitor_host": "0.0.0.0",
    "monitor_port": 9,
    "monitor_statsd_port": 0,
    "monitor_interval_seconds": 2.5,
    "pushgateway_url": "",
    "prometheus_enabled": False,
    "prometheus_port": 19090,
    "prometheus_scrape_seconds": 1.5,
    "start_timeout_seconds": 45.5,
    "airflow_enabled": False,
    "airflow_host": "localhost",
    "airflow_port": 8081,
    "airflow_database_url": "postgresql+psycopg2://af:pw@db:5432/airflow",
}


def revealed(settings: Settings) -> dict[str, object]:
    """Every field's value, secrets as their secret values (a masked secret must not compare equal)."""

    def reveal(value: object) -> object:
        if isinstance(value, SecretStr):
            return ("secret", value.get_secret_value())
        if isinstance(value, list):
            return [reveal(v) for v in value]
        return value

    return {name: reveal(getattr(settings, name)) for name in Settings.model_fields}


def test_to_env_round_trips_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child process started with ``to_env()`` sees exactly the parent's settings, every field."""
    missing = [name for name in Settings.model_fields if name not in NON_DEFAULT]
    assert not missing, f"give {missing} a non-default value in NON_DEFAULT, so its trip to a child is tested"
    original = load_settings(**NON_DEFAULT)
    defaults = Settings.model_construct()
    same = [name for name in Settings.model_fields if getattr(original, name) == getattr(defaults, name)]
    assert not same, f"NON_DEFAULT gives {same} their defaults; choose other values"

    env = original.to_env()
    assert set(env) == {env_name(name) for name in Settings.model_fields}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert revealed(load_settings()) == revealed(original)


def test_to_env_leaves_out_unset_optional_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = load_settings(home=tmp_path / "h", api_port=9001)
    env = original.to_env()
    assert "K2_S3_SECRET_ACCESS_KEY" not in env and "K2_SCHEMA_REGISTRY_BASIC_AUTH" not in env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert revealed(load_settings()) == revealed(original)
    # Left out means the default: so every setting that may be None must default to None.
    optional = {name: f for name, f in Settings.model_fields.items() if type(None) in get_args(f.annotation)}
    assert {name: f.default for name, f in optional.items() if f.default is not None} == {}


def test_a_stall_outlasts_two_batches() -> None:
    """The landed offset moves once a batch: a shorter stall window would call a healthy consumer stalled."""
    assert load_settings(stream_stall_seconds=2, stream_batch_seconds=1.5).stall_after_seconds == 3
    assert load_settings(stream_stall_seconds=120, stream_batch_seconds=1).stall_after_seconds == 120


def test_a_renamed_setting_is_refused_naming_its_new_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown variables are ignored; a renamed one would silently stop applying (here: a shared
    rate limit falling back to one count per worker)."""
    monkeypatch.setenv("K2_API_RATE_LIMIT_STORAGE", "redis://cache:6379/0")
    with pytest.raises(ConfigError, match="K2_API_RATE_LIMIT_STORAGE was renamed K2_API_RATE_LIMIT_STORAGE_URI"):
        load_settings()


@pytest.mark.parametrize("url", ["htps://user:s3cret@registry:8081", "http://user:s3cret@[::1"])
def test_a_rejected_url_never_shows_its_password(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("K2_SCHEMA_REGISTRY_URL", url)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "s3cret" not in str(info.value) and "K2_SCHEMA_REGISTRY_URL" in str(info.value)
