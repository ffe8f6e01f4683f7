"""gunicorn's settings for the API (``k2 api`` runs ``gunicorn -c python:api.gunicorn_conf api.wsgi:app``).

A worker per core (K2_API_WORKERS), each with threads (gthread): a request spends most of
its time in DuckDB, which releases the GIL, and each worker holds one DuckDB database whose
threads its requests share. gunicorn gets more threads than the K2_API_THREADS requests a
worker runs at once: the K2_API_QUEUE requests waiting for a turn wait inside the app, where
they are counted and the next one refused (:mod:`api.admission`), and a few threads are left
for /health and /metrics. gunicorn's own queue, beyond its threads, is neither bounded nor
seen. Measured (bench/api_bench.py, 8 clients): 2 workers of 4 threads left some requests
queued in gunicorn when the 8 connections fell 6 to 2 between the workers (a p99 of 1.2 s for
a 100 ms median). Request lines and headers are capped so an
oversized request is refused by gunicorn before it reaches Flask, in the API's
problem JSON like every other error (:func:`post_worker_init`).
"""

from __future__ import annotations

from typing import Any

from k2_etl.config import format_host_port, load_settings

_settings = load_settings()
bind = format_host_port(_settings.api_host, _settings.api_port)
workers = _settings.api_workers
worker_class = "gthread"
threads = _settings.api_threads + _settings.api_queue + 4  # + /health, /metrics and the refusals
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


def post_worker_init(worker: Any) -> None:
    """Two things once the worker has loaded the app:

    - gunicorn answers a request it cannot read (400), a request line over ``limit_request_line``
      (414) or headers over the limits (431) itself, in HTML, through ``gunicorn.util.write_error``;
      no setting changes that body, so each worker replaces that function with one writing the
      problem JSON (tested against the real server in tests/integration/test_api.py).
    - ``gc.freeze()``: the ~190,000 objects of the loaded app (modules, pyiceberg, the OpenAPI
      document) live as long as the worker; frozen, a full collection no longer walks them. A full
      collection that did was the API's slowest requests at one client (up to 120 ms, once in
      80 requests, profiled).
    """
    import gc

    from gunicorn import util

    util.write_error = _write_problem
    gc.freeze()


def _write_problem(sock: Any, status: int, reason: str, message: str) -> None:
    """``gunicorn.util.write_error``'s signature: the status line, then the problem JSON, then close."""
    from gunicorn import util

    from api.errors import problem_body

    said = f"{message}; {_what_to_do(status)}" if message else _what_to_do(status)  # a 500 says nothing
    body = problem_body(status, reason.lower().replace(" ", "_"), said)
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    util.write_nonblock(sock, head.encode("latin-1") + body)


def _what_to_do(status: int) -> str:
    if status == 414:
        return f"the request line (URL and query) is limited to {limit_request_line:,} bytes: ask for fewer symbols"
    if status == 431:
        return f"at most {limit_request_fields} headers of {limit_request_field_size:,} bytes each"
    if status == 400:
        return "not an HTTP/1.x request this server can read"
    return "see the API's log"


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges leave /metrics (its counters stay summed)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
