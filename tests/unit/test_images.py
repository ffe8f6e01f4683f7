"""K2's two images, checked without a Docker engine: hadolint on both Dockerfiles, and what they
install: requirements-runtime.lock, the runtime part of requirements.lock, enough for every K2
module and without the dev tools."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.compose import BIN, image_of
from tests.helpers import REPO

DOCKERFILES = [REPO / "Dockerfile", REPO / "docker" / "airflow" / "Dockerfile"]
RUNTIME_LOCK = REPO / "requirements-runtime.lock"
IMAGE_SITE = REPO / "tests" / "image_site"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: str(path.relative_to(REPO)))
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run([str(BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: str(path.relative_to(REPO)))
def test_both_images_install_the_runtime_lock_and_check_it(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert "-r requirements-runtime.lock" in text or "-r /opt/k2/requirements-runtime.lock" in text
    assert " requirements.lock" not in text and "/requirements.lock" not in text  # not with the dev tools
    assert "check" in text.split("--no-deps")[-1]  # `pip check` after the last install


def test_the_k2_image_runs_k2_as_an_unprivileged_user_from_a_clean_stage() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = text.count("\nFROM ") + text.startswith("FROM ")
    assert stages == 2 and "COPY --from=build /opt/k2 /opt/k2" in text
    final = text.rsplit("\nFROM ", 1)[1]
    assert "pip install" not in final and "apt-get" not in final  # nothing built or installed there
    assert "USER 10001" in final
    image = image_of(REPO / "Dockerfile")
    assert image.entrypoint == ["k2"] and image.env["K2_HOME"] == image.workdir == "/var/lib/k2"


def test_the_runtime_lock_is_requirements_lock_without_the_dev_tools() -> None:
    """Generated from requirements.lock (`make lock`): stale when a dependency changed since."""
    made = subprocess.run([sys.executable, str(REPO / "docker" / "runtime_lock.py")], capture_output=True,
                          text=True, timeout=60, check=True).stdout  # fmt: skip
    assert RUNTIME_LOCK.read_text() == made, "requirements-runtime.lock is stale: run `make lock`"
    pins = {line.split("==")[0]: line for line in RUNTIME_LOCK.read_text().splitlines() if "==" in line}
    lock = set((REPO / "requirements.lock").read_text().splitlines())
    assert set(pins.values()) <= lock  # the same versions, never a second resolution
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    runtime = {canonicalize_name(name) for name in pins}
    for tool in dev:
        assert canonicalize_name(Requirement(tool).name) not in runtime, tool
    assert {"apache-airflow", "pyiceberg", "confluent-kafka", "duckdb", "gunicorn", "redis"} <= runtime


def test_every_k2_module_imports_with_only_the_runtime_lock() -> None:
    """tests/image_site refuses the packages the image does not install: every module of k2_etl and
    api still imports, and a dev tool is refused (the check can fail)."""
    code = """if True:
        import importlib, pkgutil, k2_etl, api
        for package in (k2_etl, api):
            for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                if not module.name.endswith("__main__"):  # runs the CLI
                    importlib.import_module(module.name)
        try:
            import moto
        except ModuleNotFoundError as refused:
            print(refused)
    """
    env = {**os.environ, "PYTHONPATH": str(IMAGE_SITE)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                            check=False, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "moto is not in K2's image" in result.stdout, result.stdout
