"""Local stand-ins for production services that have no K2 component: Debian's redis-server and
moto's S3-compatible server, each on a free port, stopped by the test that started it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis

from tests.helpers import free_port, poll


class RedisServer:
    """Debian's redis-server on a free port, no persistence (what `docker compose` runs as `redis`)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("needs Debian's redis-server (apt-get install redis-server; .ci/run installs it)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([*command, "--dir", str(folder)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        poll(lambda: self._answers(client), timeout=30, what=f"redis-server on port {self.port}")
        client.close()

    def _answers(self, client: redis.Redis) -> bool:
        assert self.process.poll() is None, "redis-server exited"
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class S3Server:
    """moto's S3-compatible server on a free port (SeaweedFS serves S3 in docker-compose.yml, not here)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = (folder / "moto.log").open("wb")
        moto = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                        stderr=subprocess.STDOUT)  # fmt: skip
        poll(lambda: httpx.get(self.endpoint).status_code < 500, timeout=30, what="moto server")

    def client(self, key_id: str = "testing", secret: str = "testing") -> Any:  # boto3 clients are untyped
        """An S3 client of this server (moto takes any credentials)."""
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key_id,
                            aws_secret_access_key=secret, region_name="us-east-1")  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self._log.close()


class Pushgateway:
    """Debian's prometheus-pushgateway on a free port (the stack runs prom/pushgateway)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("prometheus-pushgateway")
        if binary is None:
            pytest.skip("needs Debian's prometheus-pushgateway (.ci/run installs it)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (folder / "pushgateway.log").open("wb")
        self.process = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self._log,
                                        stderr=subprocess.STDOUT)  # fmt: skip
        poll(self._answers, timeout=30, what="the Pushgateway")

    def _answers(self) -> bool:
        assert self.process.poll() is None, "prometheus-pushgateway exited (its port taken?)"  # not another's
        return httpx.get(f"{self.url}/-/healthy").status_code == 200

    def groups(self) -> list[dict[str, str]]:
        """The labels of each group pushed (job and grouping key)."""
        answer = httpx.get(f"{self.url}/api/v1/metrics", timeout=10).json()
        return [group["labels"] for group in answer["data"]]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self._log.close()
