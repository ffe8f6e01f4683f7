"""`k2 api` as the API tests run it: a real gunicorn on a free port, over a test's settings."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from k2_etl.config import Settings
from tests.helpers import env_of, free_port, poll


class Api:
    """`k2 api` as a user starts it, on a free port; stopped with SIGTERM."""

    def __init__(self, settings: Settings, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.environment = {**env_of(settings), "K2_API_PORT": str(self.port), "K2_STREAM_METRICS_PORT": "0",
                            "K2_API_WORKERS": "2", "K2_API_RATE_LIMIT": "1000/second", **env}  # fmt: skip
        self.home = Path(self.environment["K2_HOME"])
        with (self.home / f"api-{self.port}.log").open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [str(Path(sys.executable).with_name("k2")), "api"], env=self.environment, stdout=log, stderr=log
            )
        poll(lambda: self._up(), timeout=60, what=f"k2 api on {self.url}")

    def _up(self) -> bool:
        assert self.process.poll() is None, (self.home / f"api-{self.port}.log").read_text()
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code in (200, 503)
        except httpx.TransportError:
            return False

    def get(self, path: str, **params: Any) -> httpx.Response:
        headers = params.pop("headers", None)
        return httpx.get(f"{self.url}{path}", params=params, headers=headers, timeout=30)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)
