"""Vendor TradingView's Lightweight Charts from the npm registry: the explorer's one dependency.

    .venv/bin/python api/explorer/vendor/update.py [VERSION]     (default: npm's latest)

Fetches the package's tarball, checks it against the registry's sha512 ``integrity``, and keeps
two files in ``lightweight-charts-<VERSION>/``: the standalone production build (one script,
no module loader, no build step) and its LICENSE. The version is in the path, so the API serves
the file as immutable; the explorer's page is rewritten to load the new path, and the old
version's folder is removed. Review the library's changelog before landing an update: the
browser tests (tests/integration/test_explorer.py) draw with it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
import sys
import tarfile
from pathlib import Path

import httpx

REGISTRY = "https://registry.npmjs.org/lightweight-charts"
HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "explore.html"
KEEP = {"package/dist/lightweight-charts.standalone.production.js", "package/LICENSE"}


def main(version: str | None = None) -> None:
    meta = httpx.get(f"{REGISTRY}/{version or 'latest'}", timeout=60, follow_redirects=True).raise_for_status().json()
    version = meta["version"]
    tarball = httpx.get(meta["dist"]["tarball"], timeout=120, follow_redirects=True).raise_for_status().content
    algorithm, _, expected = meta["dist"]["integrity"].partition("-")
    if algorithm != "sha512" or base64.b64encode(hashlib.sha512(tarball).digest()).decode() != expected:
        sys.exit(f"lightweight-charts {version}: the tarball does not match the registry's integrity {algorithm}")
    target = HERE / f"lightweight-charts-{version}"
    target.mkdir(exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member in archive.getmembers():
            if member.name in KEEP and member.isfile():
                source = archive.extractfile(member)
                assert source is not None
                (target / Path(member.name).name).write_bytes(source.read())
    for old in HERE.glob("lightweight-charts-*"):
        if old != target and old.is_dir():
            shutil.rmtree(old)
    page = PAGE.read_text()
    PAGE.write_text(re.sub(r"vendor/lightweight-charts-[^/]+/", f"vendor/lightweight-charts-{version}/", page))
    print(f"lightweight-charts {version} in {target.relative_to(HERE.parents[2])}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
