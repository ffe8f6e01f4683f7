"""The streaming consumer as tests run it: `k2 consume` in a subprocess, on settings of a test's own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow as pa

from k2_etl.config import Settings
from k2_etl.lake.catalog import open_catalog
from tests.helpers import env_of, free_port, initialized


def ready_settings(own_settings: Settings) -> Settings:
    """Topics, tables and schemas of a test's own; consumer timeouts short (the local broker's
    group join waits for the rebalance timeout, see PLATFORM-NOTES) and commits every half second."""
    settings = own_settings.model_copy(
        update={
            "stream_session_timeout_seconds": 6,
            "stream_max_poll_interval_seconds": 7,
            "stream_batch_seconds": 0.5,
            "stream_metrics_port": free_port(),
        }
    )
    return initialized(settings)


class ConsumerProcess:
    """`k2 consume --json` as a subprocess, its log in a file."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.log = log
        k2 = Path(sys.executable).with_name("k2")
        self._log_handle = log.open("w")
        self.process = subprocess.Popen(
            [str(k2), "consume", "--json"],
            env=env_of(settings),
            stdout=subprocess.PIPE,
            stderr=self._log_handle,
            text=True,
        )

    def log_text(self) -> str:
        return self.log.read_text()

    def healthz(self, settings: Settings) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{settings.stream_metrics_port}/healthz", timeout=5)

    def metrics(self, settings: Settings) -> str:
        return httpx.get(f"http://127.0.0.1:{settings.stream_metrics_port}/metrics", timeout=5).text

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, dict[str, int]]:
        self.process.send_signal(sig)
        out, _ = self.process.communicate(timeout=60)
        self._log_handle.close()
        assert "Traceback" not in self.log_text(), self.log_text()
        return self.process.returncode, json.loads(out)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log_handle.close()


def table(settings: Settings, name: str) -> pa.Table:
    return open_catalog(settings).load_table((settings.namespace, name)).scan().to_arrow()


def landed_counts(settings: Settings, names: list[str]) -> dict[str, int]:
    return {name: table(settings, name).num_rows for name in names}
