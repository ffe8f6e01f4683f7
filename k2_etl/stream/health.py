"""`/healthz` and `/metrics` of a running consumer (on ``K2_STREAM_METRICS_PORT``).

Healthy means: the poll loop turned recently and the last append succeeded.
A catalog or storage outage keeps the batch in hand and retries it forever;
meanwhile `/healthz` answers 503 with the reason, and `k2 status` shows it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app


class Health:
    def __init__(self, stale_after_seconds: float) -> None:
        self.stale_after = stale_after_seconds
        self.problem: str | None = None
        self.details: Callable[[], dict[str, Any]] = dict
        self._beat = time.monotonic()

    def beat(self) -> None:
        self._beat = time.monotonic()

    def report(self) -> tuple[bool, dict[str, Any]]:
        idle = time.monotonic() - self._beat
        problem = self.problem
        if problem is None and idle > self.stale_after:
            problem = f"the poll loop has not turned for {idle:.0f} s"
        return problem is None, {"status": "healthy" if problem is None else "unhealthy", "problem": problem,
                                 **self.details()}  # fmt: skip


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(health: Health, host: str, port: int) -> WSGIServer:
    """Serve in a daemon thread; raises OSError when the port is taken."""
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            healthy, body = health.report()
            start_response("200 OK" if healthy else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]
        if environ.get("PATH_INFO") == "/metrics":
            return metrics(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /healthz or /metrics\n"]

    server = make_server(host, port, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="k2-stream-health", daemon=True).start()
    return server
