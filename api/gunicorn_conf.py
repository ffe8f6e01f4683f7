"""gunicorn's settings for the API (``k2 api`` runs ``gunicorn -c python:api.gunicorn_conf api.wsgi:app``).

Threads (gthread) rather than more processes: a request spends most of its time in
DuckDB, which releases the GIL, and every worker process holds its own engine (its
DuckDB connections and cached plans). Request lines and headers are capped so an
oversized request is refused by gunicorn before it reaches Flask.
"""

from __future__ import annotations

from typing import Any

from k2_etl.config import format_host_port, load_settings

_settings = load_settings()
bind = format_host_port(_settings.api_host, _settings.api_port)
workers = _settings.api_workers
worker_class = "gthread"
threads = _settings.api_threads
timeout = max(30, int(_settings.api_query_budget_seconds * 3))  # a worker stuck past this is restarted
graceful_timeout = 10
keepalive = 5
limit_request_line = 8190  # bytes of the request line (the URL and its query string)
limit_request_fields = 50
limit_request_field_size = 8190
accesslog = "-"
errorlog = "-"
loglevel = "info"
proc_name = "k2-api"
# No control socket: gunicorn 25.1+ binds one for `gunicornc` at one path per user
# (~/.gunicorn/gunicorn.ctl), shared by every gunicorn master of the user (the registry's,
# other K2 homes'); the last to start would take it. K2 manages its processes by pid and signal.
control_socket_disable = True


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges leave /metrics (its counters stay summed)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
