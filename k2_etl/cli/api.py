"""``k2 api``: the REST API in the foreground."""

from __future__ import annotations

import os
import sys

import typer

from k2_etl.config import load_settings
from k2_etl.errors import ComponentError

app = typer.Typer()


@app.command("api")
def serve_api() -> None:
    """Serve the REST API (gunicorn; K2_API_HOST/PORT/WORKERS/THREADS) until SIGTERM or Ctrl-C.

    Docs at /docs, the OpenAPI document at /openapi.json, health at /health, metrics at /metrics.
    """
    import shutil

    from k2_etl.config import format_host_port
    from k2_etl.local.components import port_holder

    settings = load_settings()
    holder = port_holder(settings.api_host, settings.api_port)
    if holder is not None:
        raise ComponentError(
            f"api: {format_host_port(settings.api_host, settings.api_port)} is taken by {holder}; "
            "stop it or set K2_API_PORT"
        )
    metrics_dir = settings.home / "run" / "api-metrics"  # per-worker metric files, summed by /metrics
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    command = [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app"]
    os.execve(sys.executable, command, env)  # gunicorn becomes this process: signals reach it directly
