"""Small helpers shared by the tests (no fixtures here: see the conftest files)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import psutil

from k2_etl.bootstrap import init_platform
from k2_etl.config import Settings
from k2_etl.schemas.registration import register_schemas

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]


#: Every port handed out in this process: never handed out twice. A port is free only until its
#: user binds it, so picking ports one at a time (bind port 0, close, repeat) can return the same
#: port twice before either is used (a CI run gave the broker and the API one port).
_handed_out: set[int] = set()

#: pytest-xdist runs the suite in several processes at once (`make test`: `-n 2`). Each takes only
#: the ports of its own residue class (port % workers == its index), so two processes never hand
#: out one port, however their picks interleave. Without xdist: one class, every port.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def _below_ephemeral() -> range:
    """Ports under the kernel's ephemeral range: the kernel never gives one of them to a client's
    connect() (or a bind to port 0), so a port chosen here stays free until its server binds it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    if low < 20_000:  # a machine that lets clients take almost any port: a fixed block, its best
        return range(10_000, 20_000)
    return range(10_000, low)


_POOL = _below_ephemeral()
_pick = random.Random()  # its own generator: tests that seed `random` must not make picks repeat


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports nobody listens on now, all held bound while they are chosen, never
    handed out before in this process, and never handed out by another worker of this run."""
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        while len(chosen) < count:
            port = _pick.choice(_POOL)
            if port in _handed_out or port in chosen or port % _WORKERS != _INDEX:
                continue
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # someone listens there (or just closed it): another
                sock.close()
                continue
            held.append(sock)
            chosen.append(port)
        _handed_out.update(chosen)
        return chosen
    finally:
        for sock in held:
            sock.close()


def free_port() -> int:
    """One port nobody listens on now (see :func:`free_ports`)."""
    return free_ports(1)[0]


def trino_catalog() -> dict[str, str]:
    """docker/trino/catalog/k2.properties: what Trino is told of K2's catalog (key = value lines)."""
    lines = (REPO / "docker" / "trino" / "catalog" / "k2.properties").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def quiet(_: str) -> None:
    """A supervisor's progress callback that prints nothing (tests read its outcome, not its lines)."""


def initialized(settings: Settings) -> Settings:
    """``settings``, with its topics and tables made (`k2 init`) and its schemas registered."""
    init_platform(settings)
    register_schemas(settings)
    return settings


def poll(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "condition", every: float = 0.05) -> T:
    """Call ``probe`` every ``every`` seconds until it returns something truthy; fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except AssertionError:
            raise  # a real failure, not "not ready yet"
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def k2_env(home: Path, **settings: str) -> dict[str, str]:
    """Environment for a `k2` subprocess: this one minus any K2_*, plus K2_HOME and ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env["K2_HOME"] = str(home)
    env["K2_PUSHGATEWAY_URL"] = ""  # none, unless ``settings`` name one
    env.update({f"K2_{k.upper()}": v for k, v in settings.items()})
    return env


def local_platform_env(home: Path, **settings: str) -> dict[str, str]:
    """:func:`k2_env` for a `k2 up` of its own: every component on a free port (the monitoring ones
    too: the Pushgateway, the monitor and Prometheus)."""
    broker, registry, consumer, api, monitor, statsd, pushgateway, prometheus = free_ports(8)
    ports = {"kafka_bootstrap": f"127.0.0.1:{broker}", "schema_registry_url": f"http://127.0.0.1:{registry}",
             "stream_metrics_port": str(consumer), "api_port": str(api), "monitor_port": str(monitor),
             "monitor_statsd_port": str(statsd), "pushgateway_url": f"http://127.0.0.1:{pushgateway}",
             "prometheus_port": str(prometheus)}  # fmt: skip
    return k2_env(home, **{**ports, **settings})


def processes_of(home: Path) -> list[psutil.Process]:
    """Every live process started for this K2_HOME: it inherited K2_HOME, or has a file under it
    open (its log, at least). The second because gunicorn's processes retitle themselves
    (setproctitle), which leaves their environment unreadable: psutil reads it as empty."""
    home = home.resolve()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("K2_HOME") == str(home) or any(
                Path(f.path).is_relative_to(home) for f in proc.open_files()
            ):
                found.append(proc)
        except psutil.Error:  # exited meanwhile, or not ours to inspect
            continue
    return found


def env_of(settings: Settings) -> dict[str, str]:
    """Environment for a `k2` subprocess that sees exactly ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env["K2_PUSHGATEWAY_URL"] = ""  # none, unless ``settings`` name one
    env.update(settings.to_env())
    return env


def run_k2(
    env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the installed `k2` command as a user would."""
    k2 = Path(sys.executable).with_name("k2")
    return subprocess.run(
        [str(k2), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def a_trade() -> dict[str, object]:
    """One valid trade record (Python values as Avro and Arrow expect them)."""
    now = datetime(2026, 11, 25, 0, 0, 1, 123456, tzinfo=UTC)
    return {
        "event_id": "e1",
        "symbol": "BHP",
        "exchange": "ASX",
        "event_time": now,
        "price": Decimal("45.12345678"),
        "size": Decimal("100"),
        "currency": "AUD",
        "sequence_number": 1,
        "trading_date": date(2026, 11, 25),  # Sydney's day
        "conditions": ["XT"],
        "venue": None,
        "buyer_id": None,
        "quality_flags": [],
        "source": "test",
        "load_id": None,
        "ingest_time": now,
    }
