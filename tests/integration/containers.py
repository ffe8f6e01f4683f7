"""docker-compose.yml's containers as local processes, for a machine without a Docker engine.

A container is emulated by what it would have of its own, and nothing else is changed:

- **its filesystem**: a folder standing for its root. Its mounts are links in that folder (a bind
  mount to the host path; a named volume to a folder the containers that mount it share), and so
  are the files its Dockerfile COPYs in (Airflow's dags/ and plugins/, to the repository). A
  container path in its environment is that path under the folder. K2 and its Python packages are
  the test's venv, which stands for the image's /opt/k2 (first on PATH), limited to
  requirements-runtime.lock by tests/image_site.
- **its network**: each port it listens on (what it publishes, and the ports its healthcheck asks
  on 127.0.0.1) becomes a free local port. Another service's address (``kafka:9092``,
  ``http://schema-registry:8081``, ...) becomes its local stand-in's.
- **its image's environment**: the Dockerfile's ENV, then the service's `environment`, as Compose
  interpolated them.

Its command is the service's `entrypoint` (else the image's ENTRYPOINT) and `command` (else the
image's CMD); its healthcheck is the service's `healthcheck.test`, translated the same way.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.compose import BIN, Image, seconds
from tests.helpers import REPO, free_ports

IMAGE_SITE = REPO / "tests" / "image_site"
#: The apache/airflow base image, as far as its containers see it: its entrypoint runs `airflow
#: <command>` (after `airflow db migrate` when _AIRFLOW_DB_MIGRATE is true), AIRFLOW_HOME /opt/airflow.
AIRFLOW_BASE = Image(entrypoint=["airflow"], env={"AIRFLOW_HOME": "/opt/airflow", "HOME": "/home/airflow"},
                     workdir="/opt/airflow")  # fmt: skip
#: An address as a container writes it: a host and a port, at the start of a value or after `//`,
#: `@`, a space, `=` or `,`, and not before `@` (so neither a longer name nor a URL's
#: `user:password@` is taken for one).
_ADDRESS = r"(?:^|(?<=//)|(?<=@)|(?<=[\s=,]))(?P<host>{hosts}):(?P<port>\d+)\b(?!@)"
_OWN_HOSTS = ("127.0.0.1", "localhost")


@dataclass
class Container:
    """One container of a compose service (``name``: e.g. ``k2-consumer-1``), emulated in ``root``."""

    name: str
    service: dict[str, Any]
    image: Image
    root: Path
    stand_ins: dict[str, str]
    volumes: Path
    #: K2's image has only requirements-runtime.lock's packages; Airflow's has its base image's too.
    runtime_lock_only: bool = True
    #: What a stand-in needs that its container would not (the CI Postgres's port for `psql`).
    extra_env: dict[str, str] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def __post_init__(self) -> None:
        own = {int(p["target"]) for p in self.service.get("ports", [])}
        hosts = "|".join(re.escape(h) for h in _OWN_HOSTS)
        for word in self.service.get("healthcheck", {}).get("test", []):
            own |= {int(m["port"]) for m in re.finditer(_ADDRESS.format(hosts=hosts), word)}
        self.ports = dict(zip(sorted(own), free_ports(len(own)), strict=True))
        self.root.mkdir(parents=True, exist_ok=True)
        links = dict(self.image.files)  # what the Dockerfile COPYs in
        for volume in self.service.get("volumes", []):
            source = Path(volume["source"]) if volume["type"] == "bind" else self.volumes / volume["source"]
            if volume["type"] == "volume":
                source.mkdir(parents=True, exist_ok=True)
            links[volume["target"]] = source
        for target, source in links.items():
            link = self.path(target)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)

    # --- translation -------------------------------------------------------------------------------
    def translate(self, text: str) -> str:
        """A command or value of the compose file as this container's process sees it here."""
        return self._addresses(text.replace("$$", "$"))  # Compose's escape for a `$` the container's shell expands

    def _addresses(self, text: str) -> str:
        hosts = "|".join(re.escape(h) for h in [*self.stand_ins, *_OWN_HOSTS])
        return re.sub(_ADDRESS.format(hosts=hosts), self._address, text)

    def _address(self, match: re.Match[str]) -> str:
        host, port = match["host"], int(match["port"])
        if host in self.stand_ins:
            return self.stand_ins[host]
        return f"127.0.0.1:{self.ports[port]}" if port in self.ports else match[0]

    def path(self, container_path: str) -> Path:
        """Where ``container_path`` is here (through the links of its mounts)."""
        return self.root / container_path.lstrip("/")

    def environment(self) -> dict[str, str]:
        """The image's ENV and the service's `environment`, translated; PATH finds the venv's
        commands first (the image's /opt/k2/bin); in K2's image Python sees only the runtime lock's
        packages."""
        env = {
            "PATH": f"{BIN}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(self.path(self.image.env.get("HOME", self.image.workdir))),
            "LANG": "C.UTF-8",
        }
        if self.runtime_lock_only:
            env["PYTHONPATH"] = str(IMAGE_SITE)
        given = {k: v for k, v in self.image.env.items() if k not in env}  # PATH and HOME: above
        for key, value in {**given, **self.service.get("environment", {})}.items():
            if value is None:  # `KEY` without a value: Compose passes the host's, and K2's file has none
                continue
            if value.startswith("/"):
                value = str(self.path(value))
            elif key.endswith("_PORT") and value.isdigit() and int(value) in self.ports:
                value = str(self.ports[int(value)])
            env[key] = self.translate(value)
        for key, value in list(env.items()):  # a service named alone (`X_HOST: k2-api`, `X_PORT: 8000`)
            if key.endswith("_HOST") and value in self.stand_ins:
                env[key], port = self.stand_ins[value].rsplit(":", 1)
                if f"{key.removesuffix('_HOST')}_PORT" in env:
                    env[f"{key.removesuffix('_HOST')}_PORT"] = port
        return {**env, **self.extra_env}

    def command(self) -> list[str]:
        entrypoint = self.service.get("entrypoint") or self.image.entrypoint
        command = self.service.get("command") or self.image.cmd
        return [self.translate(word) for word in [*entrypoint, *command]]

    # --- running -----------------------------------------------------------------------------------
    def run(self, argv: list[str] | None = None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        """Run its command (or ``argv``, as `docker compose run` would) to the end, with ``env`` added."""
        return subprocess.run(argv or self.command(), env={**self.environment(), **env}, cwd=self._workdir(),
                              capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip

    def start(self, argv: list[str] | None = None) -> None:
        """Start its command (or ``argv``) in the background, output to :attr:`log`."""
        self._log = self.log.open("wb")
        self.process = subprocess.Popen(argv or self.command(), env=self.environment(), cwd=self._workdir(),
                                        stdout=self._log, stderr=subprocess.STDOUT)  # fmt: skip

    def mounted(self, container_path: str) -> str:
        """The text of a file mounted into it, translated like its environment (a config file)."""
        return self._addresses(self.path(container_path).read_text())  # Compose reads no `$` in it

    @property
    def log(self) -> Path:
        return self.root.parent / f"{self.name}.log"

    def _workdir(self) -> Path:
        folder = self.path(self.service.get("working_dir") or self.image.workdir)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """Run the service's `healthcheck.test` once, with its timeout."""
        test = self.service["healthcheck"]["test"]
        kind, words = test[0], test[1:]
        argv = [self.translate(w) for w in words] if kind == "CMD" else ["/bin/sh", "-c", self.translate(words[0])]
        return subprocess.run(argv, env=self.environment(), cwd=self._workdir(), capture_output=True, text=True,
                              timeout=seconds(self.service["healthcheck"]["timeout"]), check=False)  # fmt: skip

    def unhealthy_after(self) -> float:
        """How long Docker gives the healthcheck to pass before it calls the container unhealthy."""
        check = self.service["healthcheck"]
        return seconds(check.get("start_period", "0s")) + check["retries"] * seconds(check["interval"])

    def stop(self, grace: float | None = None) -> int | None:
        """What `docker compose stop` does: SIGTERM, then SIGKILL after `stop_grace_period` (10 s by
        default). Returns the exit code, or None when it had to be killed."""
        if self.process is None:
            return None
        grace = grace if grace is not None else seconds(self.service.get("stop_grace_period") or "10s")
        code: int | None = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        else:
            code = self.process.returncode
        if self._log is not None:
            self._log.close()
        return code


def airflow_image(dockerfile: Image) -> Image:
    """The apache/airflow base image with what ``dockerfile`` (docker/airflow/Dockerfile) adds."""
    return Image(entrypoint=AIRFLOW_BASE.entrypoint, env={**AIRFLOW_BASE.env, **dockerfile.env},
                 workdir=AIRFLOW_BASE.workdir, files=dockerfile.files)  # fmt: skip
