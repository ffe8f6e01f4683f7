"""K2's settings: the only place a default lives.

Every setting is an environment variable ``K2_<NAME>`` or a key ``<name>``
(lower case, no prefix) in an optional TOML file (``K2_CONFIG``, else
``k2.toml`` in the working directory if present). Environment variables win
over the file; unknown keys in the file are errors. Defaults describe the
embedded local platform; pointing the same settings at Apache Kafka, a
Confluent Schema Registry, a Postgres or REST catalog and an S3 warehouse
needs no code change.

Longer than K2's other modules on purpose: one model holds every setting with
its default, limits and description (docs/settings.md is generated from it),
so that no fact about a setting lives anywhere else.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretBytes, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import to_jsonable_python
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from k2_etl.errors import ConfigError

ENV_PREFIX = "K2_"
CONFIG_FILE_ENV = "K2_CONFIG"
DEFAULT_CONFIG_FILE = "k2.toml"

#: URI schemes of the catalogs pyiceberg can open from settings alone:
#: SQL catalogs (SQLAlchemy URLs) and REST catalogs.
SQL_CATALOG_SCHEMES = frozenset({"sqlite", "postgresql", "postgresql+psycopg2", "postgresql+psycopg", "mysql+pymysql"})
REST_CATALOG_SCHEMES = frozenset({"http", "https"})
WAREHOUSE_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "abfs", "abfss"})


def _config_file() -> Path | None:
    explicit = os.environ.get(CONFIG_FILE_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{CONFIG_FILE_ENV}={explicit!r}: no such file")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's or a taskset's share)."""
    return max(1, len(os.sched_getaffinity(0)))


def parse_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (the first of a comma-separated list)."""
    first = value.split(",")[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port[,host:port...], got {value!r}")
    return host.strip("[]"), int(port)


def format_host_port(host: str, port: int) -> str:
    """``host:port`` with an IPv6 address bracketed, as URLs and bind strings need."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Settings(BaseSettings):
    """Typed view of every ``K2_*`` setting. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    home: Path = Field(
        Path(".k2"),
        description="State directory, relative to the working directory unless absolute: `run/` (pid files), "
        "`logs/`, `registry.db`, `catalog.db`, `warehouse/`.",
    )

    # --- Kafka -------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        description="Kafka bootstrap servers, `host:port[,host:port]`. The local broker listens on the first.",
    )
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        description='Extra librdkafka properties as JSON, e.g. `{"security.protocol": "SASL_SSL", '
        '"sasl.mechanisms": "PLAIN", ...}`. A property librdkafka rejects is a malformed setting (exit 2).',
    )
    topic_prefix: str = Field(
        "k2.", description="Prefix of K2's topics: k2.trades, k2.quotes, k2.reference_data, k2.dead_letters."
    )
    topic_partitions: int = Field(3, ge=1, le=10_000, description="Partitions of topics `k2 init` creates.")
    topic_replication_factor: int = Field(
        1, ge=1, le=32, description="Replication factor of topics `k2 init` creates (3 in production)."
    )

    # --- Schema registry ---------------------------------------------------
    schema_registry_url: str = Field(
        "http://127.0.0.1:8081",
        description="URL of any Confluent-compatible schema registry. The local one listens here.",
    )
    schema_registry_basic_auth: SecretStr | None = Field(
        None,
        description="`user:password` every K2 client sends the schema registry (basic auth). The local registry "
        "then requires it for every request but a read (GET): one setting for server and clients.",
    )
    registry_db_url: str | None = Field(
        None,
        description="Storage of the *local* registry: any SQLAlchemy URL (e.g. `postgresql+psycopg2://...`). "
        "Unset: `sqlite:///$K2_HOME/registry.db`.",
    )

    # --- Iceberg -----------------------------------------------------------
    catalog_name: str = Field("k2", description="Iceberg catalog name (SQL catalogs store tables under it).")
    catalog_uri: str | None = Field(
        None,
        description="The Iceberg catalog: `sqlite:///...`, `postgresql+psycopg2://...` (a SQL catalog) or "
        "`http(s)://...` (a REST catalog); other schemes are rejected. Unset: `sqlite:///$K2_HOME/catalog.db`.",
    )
    warehouse: str | None = Field(
        None,
        description="Where table files go: a path, `file://`, `s3://` (also `s3a`, `gs`, `abfs`, `abfss`). "
        "Unset: `file://$K2_HOME/warehouse`.",
    )
    namespace: str = Field(
        "market_data", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Iceberg namespace of K2's tables."
    )
    s3_endpoint: str | None = Field(None, description="S3 endpoint URL (MinIO, moto); unset for AWS.")
    s3_access_key_id: str | None = Field(None, description="S3 access key id.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key (never printed).")
    s3_region: str | None = Field(None, description="S3 region.")

    # --- Batch ingestion -----------------------------------------------------
    formats_dir: Path | None = Field(
        None,
        description="Folder of your own format files (`*.toml`); a file there shadows a built-in format of the "
        "same name.",
    )
    ingest_metrics_port: int = Field(
        9102,
        ge=0,
        le=65535,
        description="Port on 127.0.0.1 where `k2 load` serves Prometheus `/metrics` while it runs (0: off; a busy "
        "port gives a warning, the load goes on).",
    )
    ingest_manifest_retry_seconds: float = Field(
        120.0, ge=0, le=86_400, allow_inf_nan=False,
        description="How long `k2 load` keeps retrying a load manifest write through catalog failures (a "
        "`k2: warning:` line at the first retry) before it gives up (exit 3; records already produced stay in "
        "Kafka and the report lists them).",
    )  # fmt: skip
    landing: Path | None = Field(
        None, description="Where vendor files wait for the daily load: `<landing>/<format>/<YYYY-MM-DD>/...` (the "
        "folder's date is the files' trading date). Unset: `$K2_HOME/landing`."
    )  # fmt: skip

    # --- Streaming consumer ----------------------------------------------------
    stream_group: str = Field(
        "k2-stream",
        min_length=1,
        description="Kafka consumer group of `k2 consume`; the tables record offsets per group.",
    )
    stream_batch_rows: int = Field(
        40_000,
        ge=1,
        le=1_000_000,
        description="`k2 consume` appends a batch when it holds this many records (a poll never takes more, so a "
        "backlog lands in batches of this size), or sooner (K2_STREAM_BATCH_SECONDS). Measured: 20k rows "
        "69k rows/s, 438 MB at peak; 40k 82k rows/s, 471 MB; 50k 88k rows/s, 505 MB.",
    )
    stream_batch_seconds: float = Field(
        1.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="`k2 consume` also appends a batch once its oldest record has waited this long (freshness).",
    )
    stream_metrics_host: str = Field(
        "127.0.0.1", description="Address `k2 consume` serves `/healthz` and `/metrics` on (0.0.0.0 in a container)."
    )
    stream_metrics_port: int = Field(
        9103,
        ge=0,
        le=65535,
        description="Port of `k2 consume`'s `/healthz` and `/metrics` (0: not served, and `k2 up` starts no "
        "consumer). `k2 status` checks the consumer there.",
    )
    stream_session_timeout_seconds: float = Field(
        10.0, ge=1, le=3600, allow_inf_nan=False, description="Consumer-group session timeout (heartbeats: a fifth)."
    )
    stream_stall_seconds: float = Field(
        120.0, gt=0, le=86_400, allow_inf_nan=False,
        description="Records a load produced (the load manifest) that wait this long unlanded, with their "
        "partition's landed offset not moving, make the consumer's `/healthz` and the `landed` row of `k2 status` "
        "unhealthy: a stalled consumer (a busy one moves the offset). At least two K2_STREAM_BATCH_SECONDS count.",
    )  # fmt: skip
    stream_max_poll_interval_seconds: float = Field(
        60.0,
        ge=1,
        le=86_400,
        allow_inf_nan=False,
        description="Longest pause between polls (a slow Iceberg commit) before the group reassigns partitions; "
        "also how long a rebalance waits for members. The local broker joins groups only after this wait: use "
        "short values there (the tests use 6 s for the session timeout and 7 s for this).",
    )

    # --- REST API (`k2 api`) ------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the REST API binds to (0.0.0.0 in a container).")
    api_port: int = Field(
        8000, ge=1, le=65535, description="Port of the REST API. `k2 status` checks its `/health` there."
    )
    api_workers: int = Field(
        default_factory=cores,
        ge=1,
        le=1024,  # a default of one per core must validate on any host
        description="gunicorn worker processes of the API (default: one per core the process may run on; a "
        "container limited by a CPU quota rather than a cpuset sees the host's cores: set it). Each has one DuckDB "
        "database (a thread per core, its own caches) and its share of the Python work (JSON, Flask) under its own "
        "GIL.",
    )
    api_threads: int = Field(
        8,
        ge=1,
        le=64,
        description="Requests an API worker runs at once, each with a cursor of the worker's DuckDB database "
        "(DuckDB releases the GIL; its threads are shared by the cursors).",
    )
    api_queue: int = Field(
        16,
        ge=0,
        le=1024,
        description="Requests an API worker holds waiting for one of its K2_API_THREADS; one more is answered at once "
        "with 503 `overloaded` and `Retry-After` rather than made to wait behind them. Requests that wait are "
        "counted in `k2_api_queued_requests`; one waits at most K2_API_QUERY_BUDGET_SECONDS for its turn, and its "
        "budget starts when its turn comes.",
    )
    api_query_budget_seconds: float = Field(
        5.0, gt=0, le=600, allow_inf_nan=False,
        description='Time budget of one API query: past it the API answers what it found so far '
        '(`"partial": true`) or 504.',
    )  # fmt: skip
    api_rate_limit: str = Field(
        "100/second;3000/minute",
        description="Requests per client (API key, else address) and endpoint, in Flask-Limiter syntax; 429 with "
        "`Retry-After` beyond it. Checked at start-up.",
    )
    api_rate_limit_storage_uri: str = Field(
        "memory://",
        description="Where rate-limit counters live (a Flask-Limiter storage URI): `memory://` counts per worker; "
        "`redis://host:6379/0` shares one count across workers and API instances (behind a load balancer). While "
        "Redis is unreachable each worker counts on its own (logged) and goes back to Redis once it answers.",
    )
    api_trusted_proxies: list[str] = Field(
        default_factory=list,
        description='Networks of the proxies in front of the API (JSON list of CIDRs, e.g. `["172.30.250.0/24"]`; '
        "the compose stack: its `api-edge` network, which only its load balancer shares with the API). A request "
        "from one of them is counted (rate limits) by the last address in its `X-Forwarded-For`, and its scheme "
        "taken from `X-Forwarded-Proto`; from anywhere else, by its peer, headers ignored. List only networks "
        "nothing but your proxies can send from. Empty: no proxy is trusted.",
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description='API keys (JSON list, e.g. `["k1","k2"]`); when set, `/v1` needs one in the `X-API-Key` header '
        "(401 otherwise). Never printed.",
    )

    # --- Table maintenance (`k2 compact`, `k2 expire`, `k2 clean-orphans`, k2_maintenance) ---------
    maintenance_min_files: int = Field(
        5,
        ge=2,
        le=100_000,
        description="`k2 compact` rewrites a partition once it holds at least this many data files.",
    )
    maintenance_snapshot_retention_hours: float = Field(
        2.0, gt=0, le=24 * 3650, allow_inf_nan=False,
        description="`k2 expire` drops snapshots older than this: how far back time travel by time reaches "
        "(tagged snapshots are kept whatever their age). Short on purpose: the consumer commits about every "
        "second, and each snapshot kept adds ~650 bytes to the metadata file every commit rewrites (a week "
        "would be ~400 MB).",
    )  # fmt: skip
    maintenance_retain_snapshots: int = Field(
        50, ge=1, le=100_000, description="The newest snapshots `k2 expire` always keeps, whatever their age."
    )
    maintenance_orphan_age_hours: float = Field(
        72.0, ge=1, le=24 * 3650, allow_inf_nan=False,
        description="`k2 clean-orphans` deletes unreferenced files only once this old (at least 1 h: a younger "
        "file may belong to a commit in flight).",
    )  # fmt: skip

    # --- Daily load (k2_daily_load) -------------------------------------------
    daily_load_wait_seconds: float = Field(
        7200.0, gt=0, le=7 * 86_400, allow_inf_nan=False,
        description="How long `k2_daily_load` waits for the consumer to land what it loaded, before the run fails "
        "(clear it once the consumer runs: nothing is loaded twice).",
    )  # fmt: skip
    daily_load_poke_seconds: float = Field(
        30.0, ge=1, le=3600, allow_inf_nan=False,
        description="How often the daily load looks; between looks the sensor holds no worker slot (reschedule "
        "mode).",
    )  # fmt: skip
    daily_load_on_no_files: Literal["fail", "skip"] = Field(
        "fail", description="What `k2_daily_load` does on a day without files in the landing folder: `fail` "
        "(saying where it looked), or `skip`; the default of its `on_no_files` param. The local Airflow of "
        "`k2 up` skips unless this is set: a laptop has no vendor feed, so today's scheduled run finds nothing."
    )  # fmt: skip

    # --- Local platform ----------------------------------------------------
    start_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, allow_inf_nan=False,
        description="How long `k2 up` waits for a component to become healthy (Airflow gets at least 180 s: it "
        "migrates its database and starts four processes).",
    )  # fmt: skip

    # --- Local Airflow (`k2 up`) ---------------------------------------------------
    airflow_enabled: bool = Field(
        True,
        description="`k2 up` starts a local Airflow (`airflow standalone`) running K2's DAGs; false: no Airflow "
        "(`k2 demo` then loads the sample day itself).",
    )
    airflow_host: str = Field(
        "127.0.0.1",
        description="Address of the local Airflow's UI and REST API (loopback: anything else is not started).",
    )
    airflow_port: int = Field(
        8080,
        ge=1,
        le=65535,
        description="Port of the local Airflow's UI and REST API. `k2 status` checks `/api/v2/monitor/health` there.",
    )
    airflow_database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the local Airflow's metadata database, such as "
        "`postgresql+psycopg2://airflow:***@127.0.0.1:5432/airflow` (the database must exist; Airflow creates its "
        "tables). Unset: Airflow's own, SQLite in AIRFLOW_HOME (K2_HOME/airflow unless AIRFLOW_HOME is set). "
        "Its password is never printed.",
    )

    # --- Monitoring (`k2 monitor`, the Pushgateway, the local Prometheus) -----------------------
    monitor_host: str = Field(
        "127.0.0.1", description="Address `k2 monitor` serves `/healthz` and `/metrics` on (0.0.0.0 in a container)."
    )
    monitor_port: int = Field(
        9104, ge=0, le=65535,
        description="Port of `k2 monitor` (component health, table health, produced against landed offsets), "
        "which Prometheus scrapes (0: not served, and `k2 up` starts no monitor).",
    )  # fmt: skip
    monitor_statsd_port: int = Field(
        9125, ge=0, le=65535,
        description="UDP port where `k2 monitor` receives Airflow's StatsD metrics (on K2_MONITOR_HOST) and serves "
        "them as `airflow_*`; the local Airflow of `k2 up` sends there (0: not received).",
    )  # fmt: skip
    monitor_interval_seconds: float = Field(
        15.0, ge=0.2, le=3600, allow_inf_nan=False,
        description="How often `k2 monitor` checks the components and reads the tables' metadata.",
    )  # fmt: skip
    pushgateway_url: str = Field(
        "http://127.0.0.1:9091",
        description="Prometheus Pushgateway that batch work (`k2 load`, maintenance, replay, rollback, the daily "
        "load's checks, from the CLI or Airflow) pushes its metrics to when it ends, grouped by job and what it "
        "ran on. `k2 up` starts one there when it is on this machine. Empty: nothing is pushed.",
    )
    prometheus_enabled: bool = Field(
        True,
        description="`k2 up` starts a local Prometheus (Debian's `prometheus`) with K2's alert rules, scraping "
        "the local platform; false: none.",
    )
    prometheus_port: int = Field(
        9090, ge=1, le=65535, description="Port of the local Prometheus's UI and API on 127.0.0.1."
    )
    prometheus_scrape_seconds: float = Field(
        15.0, ge=0.2, le=3600, allow_inf_nan=False,
        description="Scrape and rule evaluation interval of the local Prometheus.",
    )  # fmt: skip

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        path = _config_file()
        if path is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=path),)
        return sources

    @field_validator("api_rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse_many  # Flask-Limiter's own parser: the syntax is checked at startup

        parse_many(value)
        return value

    @field_validator("api_rate_limit_storage_uri")
    @classmethod
    def _rate_limit_storage(cls, value: str) -> str:
        from limits.storage import SCHEMES  # the storages Flask-Limiter can use

        scheme = urlsplit(value).scheme
        if scheme not in SCHEMES or scheme.startswith("async+"):
            known = ", ".join(sorted(s for s in SCHEMES if not s.startswith("async+")))
            raise ValueError(f"expected a Flask-Limiter storage URI: {known}")
        return value

    @field_validator("api_trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        networks = []
        for given in value:
            try:
                networks.append(str(ipaddress.ip_network(given)))
            except ValueError:
                raise ValueError(
                    f"{given!r} is not a network (a CIDR such as 172.30.250.0/24, host bits zero)"
                ) from None
        return networks

    @field_validator("pushgateway_url", mode="before")
    @classmethod
    def _pushgateway(cls, value: object) -> object:
        if value in ("", None):
            return ""  # none (a string, not None: a child process is given the empty value, not the default)
        parts = urlsplit(str(value))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http(s):// URL, or empty for none")
        parts.port  # noqa: B018 - raises ValueError on a non-numeric port
        return str(value).rstrip("/")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http(s):// URL")
        parts.port  # noqa: B018 - raises ValueError on a non-numeric port
        return value.rstrip("/")

    @field_validator("catalog_uri")
    @classmethod
    def _catalog_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = urlsplit(value).scheme
        known = sorted(SQL_CATALOG_SCHEMES | REST_CATALOG_SCHEMES)
        if scheme not in SQL_CATALOG_SCHEMES | REST_CATALOG_SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; expected one of {', '.join(known)}")
        return value

    @field_validator("warehouse")
    @classmethod
    def _warehouse(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = urlsplit(value).scheme
        if not scheme:  # a plain path
            return Path(value).resolve().as_uri()
        if scheme not in WAREHOUSE_SCHEMES:
            raise ValueError(
                f"unknown scheme {scheme!r}; expected a path or one of {', '.join(sorted(WAREHOUSE_SCHEMES))}"
            )
        return value

    @field_validator("kafka_config", mode="before")
    @classmethod
    def _kafka_config(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, dict):
            nested = [k for k, v in value.items() if isinstance(v, dict | list) or v is None]
            if nested:
                raise ValueError(f"librdkafka properties take plain values; not {', '.join(map(repr, nested))}")
            return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
        return value

    @field_validator("schema_registry_basic_auth")
    @classmethod
    def _basic_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and ":" not in value.get_secret_value():
            raise ValueError("expected user:password")
        return value

    @field_validator("registry_db_url", "airflow_database_url")
    @classmethod
    def _sqlalchemy_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                make_url(value)
            except ArgumentError:
                raise ValueError(
                    "expected a SQLAlchemy URL such as sqlite:///path or postgresql+psycopg2://..."
                ) from None
        return value

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        # Paths under K2_HOME are resolved once, here, so that processes
        # started elsewhere (the supervisor's children) see the same files.
        home = self.home.resolve()
        object.__setattr__(self, "home", home)
        if self.registry_db_url is None:
            object.__setattr__(self, "registry_db_url", f"sqlite:///{home / 'registry.db'}")
        if self.catalog_uri is None:
            object.__setattr__(self, "catalog_uri", f"sqlite:///{home / 'catalog.db'}")
        if self.warehouse is None:
            object.__setattr__(self, "warehouse", (home / "warehouse").as_uri())
        object.__setattr__(self, "landing", (self.landing or home / "landing").resolve())
        return self

    # --- derived values (never settings of their own) -------------------------
    @cached_property
    def kafka_address(self) -> tuple[str, int]:
        """Host and port of the first bootstrap server (where the local broker listens)."""
        return parse_host_port(self.kafka_bootstrap)

    @cached_property
    def registry_address(self) -> tuple[str, int]:
        parts = urlsplit(self.schema_registry_url)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def registry_auth(self) -> tuple[str, str] | None:
        """(user, password) for the schema registry, when basic auth is configured."""
        if self.schema_registry_basic_auth is None:
            return None
        user, _, password = self.schema_registry_basic_auth.get_secret_value().partition(":")
        return user, password

    @property
    def stall_after_seconds(self) -> float:
        """How long unlanded records with no progress make a stall: K2_STREAM_STALL_SECONDS, but at
        least two batch intervals (a partition's landed offset moves once a batch)."""
        return max(self.stream_stall_seconds, 2 * self.stream_batch_seconds)

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def to_env(self) -> dict[str, str]:
        """These settings as K2_* environment variables, so child processes see exactly them.

        Each value is pydantic's own serialization of the field (JSON), secrets revealed (a child
        needs the real value): a JSON string goes bare (``K2_HOME=/x``), anything else as JSON text
        (``K2_API_KEYS=["k1"]``, ``K2_AIRFLOW_ENABLED=false``), which is how the environment source
        reads it back. None is left out: every optional setting defaults to None.
        """
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            encoded = json.dumps(value, default=_revealed, ensure_ascii=False)
            env[env_name(name)] = json.loads(encoded) if encoded.startswith('"') else encoded
        return env

    def public_dict(self) -> dict[str, Any]:
        """Settings as JSON-able values, secrets masked (for `k2 config`)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            elif name.endswith(("_uri", "_url")):
                value = redact_url(value)
            out[ENV_PREFIX + name.upper()] = value
        return out


def _revealed(value: Any) -> Any:
    """What :func:`json.dumps` writes for a value it cannot encode itself: a secret's real value,
    else pydantic's JSON form (paths, dates...)."""
    if isinstance(value, SecretStr | SecretBytes):
        return value.get_secret_value()
    return to_jsonable_python(value)


def redact_url(url: str | None) -> str | None:
    """``url`` with any password replaced by ``***`` (for messages and `k2 config`)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # not even a URL (an unclosed [IPv6]): nothing in it is shown
        return "***"
    if not parts.password:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return ENV_PREFIX + field.upper()


#: Settings renamed since a release used them: the old name is refused, naming the new one.
RENAMED = {"K2_API_RATE_LIMIT_STORAGE": "K2_API_RATE_LIMIT_STORAGE_URI"}


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment and config file.

    Raises:
        ConfigError: one line naming the setting, its value and what is wrong.
    """
    for old, new in RENAMED.items():
        if old in os.environ:  # ignored like any unknown variable otherwise: a silent change of behaviour
            raise ConfigError(f"{old} was renamed {new}; set that instead")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            if err["type"] == "extra_forbidden":  # only a config file can name a setting that does not exist
                problems.append(f"unknown key {field!r} in the config file")
                continue
            message = err["msg"].removeprefix("Value error, ")
            if field == "settings":  # a rule across settings: its message names them
                problems.append(message)
                continue
            name = env_name(field.split(".")[0])
            raw = err.get("input")
            if isinstance(raw, str) and field.endswith(("_uri", "_url")):
                raw = redact_url(raw)  # a URI's password never reaches a message (as in `k2 config`)
            shown = f"={raw!r}" if isinstance(raw, str | int | float) else ""
            problems.append(f"{name}{shown}: {message}")
        raise ConfigError("invalid setting " + "; ".join(problems)) from None
    except SettingsError as exc:  # a complex value (JSON) that does not parse
        match = re.search(r'field "(\w+)"', str(exc))
        name = env_name(match.group(1)) if match else "a setting"
        raw = os.environ.get(name, "")
        raise ConfigError(f"invalid setting {name}={raw!r}: not valid JSON") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid config file: {exc}") from None
