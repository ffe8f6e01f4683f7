"""Serve the local registry with gunicorn (a production WSGI server), embedded.

One worker process with threads: the registry is I/O-light, and a single
process keeps SQLite's single writer and the Prometheus counters simple.
No control socket (gunicorn 25.1+ binds one for `gunicornc`, by default at one
path per user, ~/.gunicorn/gunicorn.ctl, so every gunicorn of the user, the
API's and other K2 homes' included, would fight over it): K2 stops and
inspects its processes by pid and signal.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from k2_etl.config import format_host_port
from k2_etl.registry.app import create_app


class _Gunicorn(BaseApplication):
    def __init__(self, db_url: str, credentials: tuple[str, str] | None, options: dict[str, Any]) -> None:
        self.db_url = db_url
        self.credentials = credentials
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self.db_url, self.credentials)


def serve(db_url: str, host: str, port: int, credentials: tuple[str, str] | None = None, threads: int = 8) -> None:
    """Run until SIGTERM/SIGINT (gunicorn finishes in-flight requests, then exits 0); with
    ``credentials`` (user, password), changes need basic auth (see :mod:`k2_etl.registry.app`)."""
    _Gunicorn(
        db_url,
        credentials,
        {
            "bind": format_host_port(host, port),
            "workers": 1,
            "worker_class": "gthread",
            "threads": threads,
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": "info",
            "graceful_timeout": 10,
            "proc_name": "k2-registry",
            "control_socket_disable": True,
        },
    ).run()
