"""K2's two images, checked without a Docker engine: hadolint on both Dockerfiles, and what they
install: requirements-runtime.lock, the runtime part of requirements.lock, enough for every K2
module and without the dev tools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.compose import BIN, image_of, instructions
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
    runs = [line for line in instructions(dockerfile).splitlines() if line.startswith("RUN ")]
    installs = [run for run in runs if re.search(r"\bpip\b.*\binstall\b", run)]
    assert re.search(r"-r \S*requirements-runtime\.lock", installs[0]), installs  # the lock, then K2
    assert not any("requirements.lock" in run for run in installs)  # never the one with the dev tools
    assert all("--no-deps" in run for run in installs)  # nothing resolved at build time: the lock's pins
    assert re.search(r"\bpip\b( --python \S+)? check\b", installs[-1]), installs[-1]  # after the last install


def test_the_k2_image_runs_k2_as_an_unprivileged_user_from_a_clean_stage() -> None:
    text = instructions(REPO / "Dockerfile")
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]  # one base, twice
    final = text.rsplit("\nFROM ", 1)[1]
    assert "COPY --from=build /opt/k2 /opt/k2" in final
    assert not re.search(r"\b(pip|apt-get|apk)\b", final)  # nothing built or installed there
    assert "USER 10001" in final
    image = image_of(REPO / "Dockerfile")
    assert image.entrypoint == ["k2"] and image.env["K2_HOME"] == image.workdir == "/var/lib/k2"


def test_the_wheel_the_image_installs_carries_k2s_package_data(tmp_path: Path) -> None:
    """The image builds K2 from what its build stage COPYs and installs it as a wheel (the tests
    run it editable, from the checkout): the Avro schemas and the built-in formats must be in it."""
    copied = re.findall(r"^COPY (?!--from)(.+) \./?\S*$", instructions(REPO / "Dockerfile"), re.M)
    source = tmp_path / "src"
    source.mkdir()
    for name in (word for line in copied for word in line.split()):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("k2_etl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [p for p in (REPO / "k2_etl").rglob("*") if p.suffix in (".avsc", ".toml")]
    assert data and all(str(p.relative_to(REPO)) in names for p in data), sorted(names)
    assert "api/app.py" in names and "k2_etl/cli/__init__.py" in names


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
    """tests/image_site hides the packages the image does not install: every module of k2_etl and
    api still imports, and a dev tool is not there (the check can fail)."""
    code = """if True:
        import importlib, pkgutil, k2_etl, api
        for package in (k2_etl, api):
            for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                if not module.name.endswith("__main__"):  # runs the CLI
                    importlib.import_module(module.name)
        import importlib.util
        print("moto:", importlib.util.find_spec("moto"))
        try:
            import moto
        except ModuleNotFoundError as missing:
            print(missing)
    """
    env = {**os.environ, "PYTHONPATH": str(IMAGE_SITE)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                            check=False, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "moto: None" in result.stdout and "No module named 'moto'" in result.stdout, result.stdout
