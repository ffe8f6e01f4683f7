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
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def _platform_lock(settings: Settings) -> Iterator[None]:
    """Serialise starts and stops on one K2_HOME, so two `k2 up` never race on ports and pid files."""
    try:
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        handle = (settings.run_dir / ".lock").open("a")
    except OSError as exc:
        raise ComponentError(
            f"cannot use K2_HOME={settings.home} ({exc.strerror}); set K2_HOME to a writable directory"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def _read_pid_file(path: Path) -> tuple[int, float, str] | None:
    try:
        data = json.loads(path.read_text())
        return int(data["pid"]), float(data["create_time"]), str(data.get("exe", ""))
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise ComponentError(f"K2_HOME={path.parent.parent} is not a directory; set K2_HOME to a directory") from None
    except (OSError, ValueError, KeyError, TypeError):
        return (-1, 0.0, "")  # unreadable: treat as stale


def _identity(proc: psutil.Process) -> tuple[float, str]:
    """What recognises our process when its pid is reused: start time and executable.

    The executable, not the command line: gunicorn rewrites its process title.
    """
    return proc.create_time(), os.path.realpath(proc.exe())


def _is_gone(proc: psutil.Process) -> bool:
    """Exited, or a zombie whose parent has not reaped it yet: either way it no longer runs."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _owned(settings: Settings, component: Component) -> psutil.Process | Literal["stale"] | None:
    """Our running process, None when there is no pid file, "stale" when it names a dead or foreign pid."""
    found = _read_pid_file(_pid_file(settings, component))
    if found is None:
        return None
    pid, create_time, exe = found
    try:
        proc = psutil.Process(pid)
        started, actual_exe = _identity(proc)
        # A second of tolerance: psutil derives start times from the boot time, which moves with the clock.
        if abs(started - create_time) < 1.0 and actual_exe == exe and not _is_gone(proc):
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        pass
    return "stale"


def check(component: Component, *, ready: bool = False) -> tuple[bool, str, float]:
    """Run its health check (``ready``: only what its start waits for); (healthy, detail, ms)."""
    started = time.perf_counter()
    try:
        detail = (component.ready or component.check)() if ready else component.check()
        healthy = True
    except Exception as exc:  # any failure of a health check means "unhealthy", with its reason
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        healthy = False
    return healthy, detail, round((time.perf_counter() - started) * 1000, 1)


def status(settings: Settings, component: Component) -> ComponentStatus:
    healthy, detail, latency = check(component)
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


def _exited(settings: Settings, component: Component, proc: subprocess.Popen[bytes]) -> ComponentError:
    log = log_file(settings, component)
    last = _last_log_line(log)
    return ComponentError(
        f"{component.name}: exited with code {proc.wait()} while starting"
        + (f" ({last})" if last else "")
        + f"; see {log}"
    )


def _wait_healthy(settings: Settings, component: Component, proc: subprocess.Popen[bytes] | None) -> str:
    """Poll the component's readiness check until it passes; fail fast if our process exits meanwhile."""

    def attempt() -> str:
        if proc is not None and proc.poll() is not None:
            raise _exited(settings, component, proc)
        healthy, detail, _ = check(component, ready=True)
        if not healthy:
            raise _NotReady(detail)
        # Healthy, but is it ours? Something else may answer on the port while our process dies on bind.
        if proc is not None and proc.poll() is not None:
            raise _exited(settings, component, proc)
        return detail

    timeout = component.start_timeout or settings.start_timeout_seconds
    try:
        for try_ in Retrying(
            retry=retry_if_exception_type(_NotReady),
            stop=stop_after_delay(timeout),
            wait=wait_fixed(0.1),
            reraise=True,
        ):
            with try_:
                return attempt()
    except _NotReady as exc:
        raise ComponentError(
            f"{component.name}: not healthy after {timeout:g} s ({exc}); "
            f"see {log_file(settings, component)}, then `k2 down` and `k2 up`"
        ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def start(settings: Settings, component: Component, say: Say) -> bool:
    """Start ``component`` unless it already runs; return once it is ready.

    Returns:
        True when this call started it (False: it was running already, or is not ours to start).
    """
    if not component.startable:
        say(f"{component.name}: {component.address} is not on this machine ({component.setting}); not starting it")
        return False
    with _platform_lock(settings):
        return _start(settings, component, say)


@contextlib.contextmanager
def stopped_on_failure(settings: Settings, say: Say) -> Iterator[Callable[[Component], None]]:
    """Start components with the function this yields; if the block raises, stop the ones it
    started, newest first, and re-raise. Those already running before are left alone: a failed
    `k2 up` leaves the machine as it found it, not a broker with no registry."""
    started: list[Component] = []

    def start_one(component: Component) -> None:
        if start(settings, component, say):
            started.append(component)

    try:
        yield start_one
    except BaseException:
        for component in reversed(started):
            try:
                stop(settings, component, say)
            except ComponentError as exc:  # the error that made us stop is the one to report
                say(f"{component.name}: could not stop it: {exc}")
        raise


def _start(settings: Settings, component: Component, say: Say) -> bool:
    pid_file = _pid_file(settings, component)
    owned = _owned(settings, component)
    if isinstance(owned, psutil.Process):
        _wait_healthy(settings, component, None)
        say(f"{component.name}: already running (pid {owned.pid}) at {component.address}")
        return False
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
    extra_env = component.environment() if component.environment is not None else {}
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
            env={**os.environ, **settings.to_env(), **extra_env},  # the child sees exactly these settings
        )
    _children[proc.pid] = proc
    try:
        # The start time is fixed at fork; the executable is what exec will run (not yet, maybe).
        started = psutil.Process(proc.pid).create_time()
        exe = os.path.realpath(shutil.which(argv[0]) or argv[0])
        pid_file.write_text(json.dumps({"pid": proc.pid, "create_time": started, "exe": exe}))
        detail = _wait_healthy(settings, component, proc)
    except psutil.NoSuchProcess:
        pid_file.unlink(missing_ok=True)
        _children.pop(proc.pid, None)
        raise _exited(settings, component, proc) from None
    except BaseException:  # not ready in time, or interrupted (Ctrl-C): no half-started process stays
        _terminate(proc.pid, component.stop_signal)
        pid_file.unlink(missing_ok=True)
        raise
    say(f"{component.name}: started (pid {proc.pid}), listening at {component.address} — {detail}")
    return True


def _terminate(pid: int, stop_signal: signal.Signals = signal.SIGTERM) -> bool:
    """Send ``stop_signal``, wait, then SIGKILL its whole process group and any descendant that
    left it. True if it stopped on ``stop_signal``."""
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    clean = True
    descendants: list[psutil.Process] = []
    try:
        proc = psutil.Process(pid)
        with contextlib.suppress(psutil.Error):
            descendants = proc.children(recursive=True)  # known now: they are orphaned once it exits
        proc.send_signal(stop_signal)
        child = _children.get(pid)
        while not _is_gone(proc):
            if child is not None:
                child.poll()  # reap it if it is ours
            if time.monotonic() > deadline:
                clean = False
                break
            time.sleep(0.05)
    except psutil.NoSuchProcess:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # stragglers (e.g. worker processes) of its session
    for straggler in descendants:  # is_running() checks the start time too: never a recycled pid
        with contextlib.suppress(psutil.Error):
            if straggler.is_running():
                straggler.kill()
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()
    return clean


def stop(settings: Settings, component: Component, say: Say) -> None:
    """Stop ``component`` if we started it."""
    if not component.startable:
        return
    with _platform_lock(settings):
        _stop(settings, component, say)


def _stop(settings: Settings, component: Component, say: Say) -> None:
    pid_file = _pid_file(settings, component)
    owned = _owned(settings, component)
    if owned is None:
        say(f"{component.name}: not running")
        return
    if owned == "stale":
        pid_file.unlink(missing_ok=True)
        say(f"{component.name}: not running; removed stale pid file {pid_file}")
        return
    clean = _terminate(owned.pid, component.stop_signal)
    pid_file.unlink(missing_ok=True)
    say(
        f"{component.name}: stopped (pid {owned.pid})" + ("" if clean else f"; killed after {STOP_TIMEOUT_SECONDS:g} s")
    )
