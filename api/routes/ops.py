"""/health (each dependency with its latency) and /metrics (Prometheus, summed over workers)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from flask import Response, current_app
from flask_openapi3 import APIBlueprint, Tag
from prometheus_client import CONTENT_TYPE_LATEST

from api import metrics
from api.render import json_body
from api.responses import METRICS, TRANSPORT_ERRORS, Health
from k2_etl.config import Settings, format_host_port
from k2_etl.errors import K2Error, UnavailableError
from k2_etl.query.engine import QueryEngine

log = logging.getLogger("k2.api")
SLOW_SECONDS = 1.0  # a dependency answering slower than this makes the API degraded
CHECK_TIMEOUT_SECONDS = 2.0
blueprint = APIBlueprint("ops", __name__, abp_tags=[Tag(name="operations")], abp_responses=TRANSPORT_ERRORS)


def _check(name: str, probe: Callable[[], str]) -> dict[str, Any]:
    """The probe's status and latency; a failure's detail is a K2 error's message (it names the
    dependency and the error's class) or else the class alone: /health is open without a key, and
    a driver's message carries SQL statements and addresses (those go to the log)."""
    started = time.perf_counter()
    try:
        detail, ok = probe(), True
    except Exception as error:
        log.warning("health: the %s check failed: %s (%r)", name, error, error.__cause__ or error)
        detail, ok = str(error) if isinstance(error, K2Error) else type(error).__name__, False
    seconds = time.perf_counter() - started
    status = "down" if not ok else ("slow" if seconds > SLOW_SECONDS else "up")
    return {"status": status, "latency_ms": round(seconds * 1000, 2), "detail": detail}


@blueprint.get(
    "/health",
    summary="Health: each dependency with its latency (200 healthy or degraded, 503 unhealthy)",
    responses={200: Health, 503: Health},
)
def health() -> Response:
    """`healthy`: every check up. `degraded`: queries are answered, but a dependency is slow or the
    streaming consumer (when configured) is not healthy, so data may be stale. `unhealthy` (503): the
    catalog or the query engine fails."""
    engine: QueryEngine = current_app.extensions["k2.engine"]
    settings: Settings = current_app.extensions["k2.settings"]
    checks = {
        "catalog": _check("catalog", engine.catalog_check),
        "query_engine": _check("query_engine", lambda: f"select 1 = {engine.ping()}"),
    }
    if settings.stream_metrics_port:
        checks["consumer"] = _check("consumer", lambda: _consumer(settings))
    required = (checks["catalog"]["status"], checks["query_engine"]["status"])
    if "down" in required:
        status, code = "unhealthy", 503
    elif any(c["status"] != "up" for c in checks.values()):
        status, code = "degraded", 200
    else:
        status, code = "healthy", 200
    return Response(json_body({"status": status, "checks": checks}), status=code, mimetype="application/json")


@blueprint.get("/metrics", summary="Prometheus metrics of every API worker", responses={200: METRICS})
def prometheus_metrics() -> Response:
    return Response(metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)


def _consumer(settings: Settings) -> str:
    url = f"http://{format_host_port(settings.stream_metrics_host, settings.stream_metrics_port)}/healthz"
    response = httpx.get(url, timeout=CHECK_TIMEOUT_SECONDS)
    body = response.json()
    if response.status_code != 200:  # what it cannot do and on what: its reasons name servers and URLs
        failing = "; ".join(f"{what} ({on})" for what, on in (body.get("failing") or {}).items())
        failing = failing or f"HTTP {response.status_code}"
        raise UnavailableError(f"the streaming consumer is not healthy: {failing}; its /healthz says why", "consumer")
    return f"landed {body['landed']:,}, rejected {body['rejected']:,}"
