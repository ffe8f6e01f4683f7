"""Start, stop and inspect the local platform's processes (``k2 up/down/status``).

Each started process gets a pid file (``K2_HOME/run/<name>.pid``, holding the
pid and the process's start time, so a recycled pid is never mistaken for
ours) and a log (``K2_HOME/logs/<name>.log``). Processes run in their own
session, so they outlive the shell that ran ``k2 up`` and a Ctrl-C there.

Every failure is a :class:`ComponentError` with one line naming the
component and what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import psutil
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from k2_etl.config import Settings
from k2_etl.errors import ComponentError
from k2_etl.local.components import Component, port_holder

STOP_TIMEOUT_SECONDS = 15.0

State = Literal["running", "stopped", "stale", "external", "service"]
Say = Callable[[str], None]


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    address: str
    state: State
    healthy: bool
    detail: str
    pid: int | None = None
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class _NotReady(Exception):
    pass


#: Processes this Python process started and has not reaped. Keeping the Popen
#: objects lets :func:`stop` reap them when the caller lives on (tests, an
#: embedding program); a `k2 up` process simply exits and leaves them running.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _pid_file(settings: Settings, component: Component) -> Path:
    return settings.run_dir / f"{component.name}.pid"


def log_file(settings: Settings, component: Component) -> Path:
    return settings.log_dir / f"{component.name}.log"


def _read_pid_file(path: Path) -> tuple[int, float] | None:
    try:
        data = json.loads(path.read_text())
        return int(data["pid"]), float(data["create_time"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return (-1, 0.0)  # unreadable: treat as stale


def _owned(settings: Settings, component: Component) -> psutil.Process | Literal["stale"] | None:
    """Our running process, None when there is no pid file, "stale" when it names a dead or foreign pid."""
    found = _read_pid_file(_pid_file(settings, component))
    if found is None:
        return None
    pid, create_time = found
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        pass
    return "stale"


def _check(component: Component) -> tuple[bool, str, float]:
    started = time.perf_counter()
    try:
        detail = component.check()
        healthy = True
    except Exception as exc:  # any failure of a health check means "unhealthy", with its reason
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        healthy = False
    return healthy, detail, round((time.perf_counter() - started) * 1000, 1)


def status(settings: Settings, component: Component) -> ComponentStatus:
    healthy, detail, latency = _check(component)
    if not component.startable:
        state: State = "external" if component.command is not None else "service"
        return ComponentStatus(component.name, component.address, state, healthy, detail, None, latency)
    owned = _owned(settings, component)
    if owned == "stale":
        detail = f"stale pid file {_pid_file(settings, component)}; run `k2 up` (or `k2 down`) to clear it. {detail}"
        return ComponentStatus(component.name, component.address, "stale", healthy, detail, None, latency)
    if owned is None:
        return ComponentStatus(component.name, component.address, "stopped", healthy, detail, None, latency)
    return ComponentStatus(component.name, component.address, "running", healthy, detail, owned.pid, latency)


def _last_log_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1][:300] if lines else ""


def _wait_healthy(settings: Settings, component: Component, proc: subprocess.Popen[bytes] | None) -> str:
    """Poll the health check until it passes; fail fast if our process exits meanwhile."""
    log = log_file(settings, component)

    def attempt() -> str:
        if proc is not None and proc.poll() is not None:
            _pid_file(settings, component).unlink(missing_ok=True)
            last = _last_log_line(log)
            raise ComponentError(
                f"{component.name}: exited with code {proc.returncode} while starting"
                + (f" ({last})" if last else "")
                + f"; see {log}"
            )
        healthy, detail, _ = _check(component)
        if not healthy:
            raise _NotReady(detail)
        return detail

    try:
        for try_ in Retrying(
            retry=retry_if_exception_type(_NotReady),
            stop=stop_after_delay(settings.start_timeout_seconds),
            wait=wait_fixed(0.1),
            reraise=True,
        ):
            with try_:
                return attempt()
    except _NotReady as exc:
        raise ComponentError(
            f"{component.name}: not healthy after {settings.start_timeout_seconds:g} s ({exc}); "
            f"see {log}, then `k2 down` and `k2 up`"
        ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def start(settings: Settings, component: Component, say: Say) -> None:
    """Start ``component`` unless it already runs; return once it is healthy."""
    if not component.startable:
        say(f"{component.name}: {component.address} is not on this machine ({component.setting}); not starting it")
        return
    pid_file = _pid_file(settings, component)
    owned = _owned(settings, component)
    if isinstance(owned, psutil.Process):
        _wait_healthy(settings, component, None)
        say(f"{component.name}: already running (pid {owned.pid}) at {component.address}")
        return
    if owned == "stale":
        say(f"{component.name}: removed stale pid file {pid_file} (its process is gone)")
        pid_file.unlink(missing_ok=True)
    holder = port_holder(component.host, component.port)
    if holder is not None:
        raise ComponentError(
            f"{component.name}: port {component.host}:{component.port} is already in use by {holder}; "
            f"stop it or set {component.setting} to a free port"
        )
    assert component.command is not None
    argv = component.command()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log = log_file(settings, component)
    with log.open("ab") as out:
        out.write(f"\n=== k2 up: starting {component.name}: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **settings.to_env()},  # the child sees exactly these settings
        )
    _children[proc.pid] = proc
    pid_file.write_text(json.dumps({"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()}))
    try:
        detail = _wait_healthy(settings, component, proc)
    except ComponentError:
        _terminate(proc.pid)
        pid_file.unlink(missing_ok=True)
        raise
    say(f"{component.name}: started (pid {proc.pid}), listening at {component.address} — {detail}")


def _terminate(pid: int) -> bool:
    """SIGTERM the process, wait, then SIGKILL its whole process group. True if it stopped on SIGTERM."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs([proc], timeout=STOP_TIMEOUT_SECONDS)
    except psutil.NoSuchProcess:
        alive = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # stragglers (e.g. worker processes) of its session
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()
    return not alive


def stop(settings: Settings, component: Component, say: Say) -> None:
    if not component.startable:
        return
    pid_file = _pid_file(settings, component)
    owned = _owned(settings, component)
    if owned is None:
        say(f"{component.name}: not running")
        return
    if owned == "stale":
        pid_file.unlink(missing_ok=True)
        say(f"{component.name}: not running; removed stale pid file {pid_file}")
        return
    clean = _terminate(owned.pid)
    pid_file.unlink(missing_ok=True)
    say(
        f"{component.name}: stopped (pid {owned.pid})" + ("" if clean else f"; killed after {STOP_TIMEOUT_SECONDS:g} s")
    )
