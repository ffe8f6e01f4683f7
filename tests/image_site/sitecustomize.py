"""K2's image, as far as Python can see it: on PYTHONPATH, this makes importing a module of any
installed distribution that requirements-runtime.lock does not pin fail, as it would in the image
(which installs only that lock). The venv the tests run in also has the dev tools (pytest, moto,
mypy, ...): a K2 module that needed one would pass every test here and fail in production.

Python imports ``sitecustomize`` at start-up, before any other code, so every process started with
this folder on PYTHONPATH (a `k2` command, gunicorn's workers, a healthcheck's `python -c`) is covered.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import re
import sys
from collections.abc import Sequence
from importlib.metadata import packages_distributions
from pathlib import Path
from types import ModuleType

RUNTIME_LOCK = Path(__file__).resolve().parents[2] / "requirements-runtime.lock"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class NotInTheImage(importlib.abc.MetaPathFinder):
    """Refuses the top-level modules whose distributions are all missing from the runtime lock."""

    def __init__(self) -> None:
        pinned = {_canonical(m[1]) for m in re.finditer(r"^([A-Za-z0-9._-]+)==", RUNTIME_LOCK.read_text(), re.M)}
        pinned.add("k2-etl")
        self.refused = {module: sorted(dists) for module, dists in packages_distributions().items()
                        if not any(_canonical(d) in pinned for d in dists)}  # fmt: skip

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        top = name.partition(".")[0]
        if top in self.refused:
            raise ModuleNotFoundError(
                f"{name} is not in K2's image: {', '.join(self.refused[top])} is not in requirements-runtime.lock",
                name=name,
            )
        return None


sys.meta_path.insert(0, NotInTheImage())
