"""Settings: defaults for the local platform, overrides from env and file, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from k2_etl.config import load_settings, redact_url
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


def test_to_env_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = load_settings(home=tmp_path / "h", kafka_config={"acks": "all"}, s3_secret_access_key="x", api_port=9001)
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)
    assert load_settings() == original
