"""K2's image, as far as Python can see it: on PYTHONPATH, this hides every installed distribution
that requirements-runtime.lock does not pin, as the image (which installs only that lock) has none
of them. The venv the tests run in also has the dev tools (pytest, moto, mypy, ...): a K2 module
that needed one would pass every test here and fail in production.

Python imports ``sitecustomize`` at start-up, before any other code, so every process started with
this folder on PYTHONPATH (a `k2` command, gunicorn's workers, a healthcheck's `python -c`) is covered.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import re
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import Distribution, DistributionFinder, packages_distributions
from pathlib import Path
from types import ModuleType

from packaging.utils import canonicalize_name  # in the runtime lock: the image has it too

RUNTIME_LOCK = Path(__file__).resolve().parents[2] / "requirements-runtime.lock"


class InTheImage(importlib.abc.MetaPathFinder):
    """Python's path finder, blind to the top-level modules whose distributions are all missing
    from the runtime lock: importing one fails, and `importlib.util.find_spec` says it is not
    there, as in the image."""

    def __init__(self) -> None:
        pinned = {canonicalize_name(m[1]) for m in re.finditer(r"^([A-Za-z0-9._-]+)==", RUNTIME_LOCK.read_text(), re.M)}
        pinned.add("k2-etl")
        self.pinned = pinned
        self.refused = {module for module, dists in packages_distributions().items()
                        if not any(canonicalize_name(d) in pinned for d in dists)}  # fmt: skip

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name.partition(".")[0] in self.refused:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    def find_distributions(
        self,
        context: DistributionFinder.Context = DistributionFinder.Context(),  # noqa: B008  # importlib's own default
    ) -> Iterator[Distribution]:
        """importlib.metadata's view: only the pinned distributions (and K2) are installed."""
        for found in importlib.machinery.PathFinder.find_distributions(context):
            if canonicalize_name(found.metadata["Name"] or "") in self.pinned:
                yield found

    def invalidate_caches(self) -> None:
        importlib.machinery.PathFinder.invalidate_caches()


sys.meta_path[:] = [InTheImage() if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
