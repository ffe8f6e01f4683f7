"""The tests' port picker: a platform's ports are distinct, and no port is handed out twice.

A CI run failed when the broker and the API were given one port: picked one at a time (bind
port 0, close, repeat), the operating system may offer the same port again before either is used.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import _POOL, REPO, free_port, free_ports


def test_ports_are_distinct_and_never_handed_out_twice() -> None:
    first = free_ports(40)
    assert len(set(first)) == 40
    again = [*free_ports(40), *(free_port() for _ in range(40))]
    assert len(set(again)) == 80 and not set(first) & set(again)


def test_workers_of_one_run_pick_from_disjoint_ports() -> None:
    """pytest-xdist's processes each pick ports of their own residue class, below the kernel's
    ephemeral range (so no client connection is given one between its pick and its server's bind)."""
    script = "from tests.helpers import free_ports; print(' '.join(map(str, free_ports(50))))"
    picked = {}
    for worker in ("gw0", "gw1", "gw2"):
        env = {**os.environ, "PYTEST_XDIST_WORKER": worker, "PYTEST_XDIST_WORKER_COUNT": "3"}
        result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                                timeout=60, check=True)  # fmt: skip
        picked[worker] = [int(port) for port in result.stdout.split()]
    for index, worker in enumerate(("gw0", "gw1", "gw2")):
        assert len(set(picked[worker])) == 50
        assert all(port % 3 == index and port in _POOL for port in picked[worker]), picked[worker]
