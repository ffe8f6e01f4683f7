"""`/healthz` and `/metrics` of a running consumer (on ``K2_STREAM_METRICS_PORT``).

Healthy means: the poll loop turned recently, and nothing the consumer needs
is failing: placing its partitions and landing its batches succeed (a
catalog, storage, registry or broker outage keeps the batch in hand and
retries it with backoff), and no record a load produced to its partitions has
waited unlanded, with no progress, for ``K2_STREAM_STALL_SECONDS``. Otherwise
`/healthz` answers 503 with every reason, and `k2 status` shows them.
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
        self.problems: dict[str, str] = {}  # what cannot be done -> why, in a line (set by fail, cleared by clear)
        self.failing: dict[str, str] = {}  # what cannot be done -> the dependency it fails on (or "stalled")
        self.details: Callable[[], dict[str, Any]] = dict
        self._beat = time.monotonic()

    def beat(self) -> None:
        self._beat = time.monotonic()

    def fail(self, what: str, dependency: str, why: str) -> None:
        self.problems[what], self.failing[what] = why, dependency

    def clear(self, what: str) -> None:
        self.problems.pop(what, None)
        self.failing.pop(what, None)

    def report(self) -> tuple[bool, dict[str, Any]]:
        idle = time.monotonic() - self._beat
        reasons = list(self.problems.values())
        if idle > self.stale_after:
            reasons.insert(0, f"the poll loop has not turned for {idle:.0f} s")
        problem = "; ".join(reasons) or None
        return problem is None, {"status": "healthy" if problem is None else "unhealthy", "problem": problem,
                                 "failing": dict(self.failing), **self.details()}  # fmt: skip


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
