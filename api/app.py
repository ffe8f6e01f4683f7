"""The Flask app factory: settings, the query engine, blueprints, errors, limits, metrics.

Every error leaves as JSON ``{"error": {status, error, message, parameter?, value?}}``
through one handler per kind (the Flask pattern of "API errors as JSON"): a
:class:`QueryError` is a 400 naming the parameter, a :class:`QueryTimeout` a 504,
an unknown symbol a 404, an :class:`UnavailableError` (the catalog or the
warehouse cannot be read) a 503 with ``Retry-After``; a bug is a 500 with no
internals. User input never reaches a 500: the schemathesis test holds the API
to that, and every answer to the document it publishes.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Response, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_openapi3 import Info, OpenAPI
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from api import metrics
from api.admission import RETRY_AFTER_SECONDS as OVERLOADED_RETRY_AFTER_SECONDS
from api.admission import Admission, Overloaded
from api.errors import UnknownSymbol, problem
from api.render import json_body
from api.responses import Problem
from api.routes import catalog, explore, market, ops
from k2_etl import __version__
from k2_etl.config import Settings, load_settings
from k2_etl.errors import K2Error, QueryError, QueryTimeout, UnavailableError
from k2_etl.query.engine import QueryEngine
from k2_etl.query.runner import SPENT, Spent

log = logging.getLogger("k2.api")
MAX_BODY_BYTES = 64 * 1024  # no endpoint takes a body; anything bigger is refused with 413
JSON = "application/json"
#: Served without an API key or rate limit: these paths and what is under them, and the index "/".
OPEN_PATHS = ("/health", "/metrics", "/openapi.json", "/docs", "/explore")
RETRY_AFTER_SECONDS = 5  # a dependency away: when to ask again (the engine tries it again every second)


def create_app(settings: Settings | None = None, engine: QueryEngine | None = None) -> OpenAPI:
    """Build the API from ``K2_*`` settings (or the given ones); ``engine`` for tests that shape it."""
    settings = settings or load_settings()
    app = OpenAPI(
        __name__,
        info=Info(
            title="K2 market data API",
            version=__version__,
            description="Trades, quotes, OHLCV bars, VWAP, as-of joins and time travel over K2's Iceberg tables. "
            "See them drawn in the [explorer](/explore).",
        ),
        security_schemes={"api_key": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        doc_prefix="/docs",
        doc_url="/openapi.json",
        validation_error_status=400,
        validation_error_model=Problem,
        validation_error_callback=_validation_error,
    )
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    if settings.api_trusted_proxies:  # behind a load balancer: the client is who it says, not the balancer
        app.wsgi_app = BehindProxies(app.wsgi_app, settings.api_trusted_proxies)  # type: ignore[method-assign]
    app.extensions["k2.settings"] = settings
    app.extensions["k2.engine"] = engine or QueryEngine(  # a cursor per turn, and one for /health's ping
        settings, connections=settings.api_threads + 1, budget_seconds=settings.api_query_budget_seconds
    )
    budget = settings.api_query_budget_seconds  # the longest a request waits for its turn
    app.extensions["k2.admission"] = Admission(settings.api_threads, settings.api_queue, budget)
    app.extensions["k2.keys"] = [key.get_secret_value().encode() for key in settings.api_keys]

    app.after_request(_hold_until_sent)
    app.after_request(_count)  # registered before the limiter's, so it runs after it (Flask runs them in reverse)
    limiter = Limiter(
        key_func=_client,
        app=app,
        default_limits=[settings.api_rate_limit],
        storage_uri=settings.api_rate_limit_storage_uri,
        # Redis unreachable: count per worker (Flask-Limiter logs it) and go back to Redis once it
        # answers, rather than answering 500 to every request while the limit's store is down.
        in_memory_fallback_enabled=True,
        storage_options=_storage_options(settings.api_rate_limit_storage_uri),
        headers_enabled=True,  # X-RateLimit-* and Retry-After
        default_limits_exempt_when=lambda: request.path == "/" or request.path.startswith(OPEN_PATHS),
    )
    # Flask-Limiter logs to a logger it silences (a NullHandler): K2's own, so a fallback to per-worker
    # counting ("Rate limit storage unreachable") reaches the API's log like K2's other warnings.
    limiter.logger = logging.getLogger("k2.api.rate_limit")
    app.extensions["k2.limiter"] = limiter
    app.register_api(market.blueprint)
    app.register_api(catalog.blueprint)
    app.register_api(ops.blueprint)
    app.register_blueprint(explore.blueprint)  # the page is a client of /v1, not part of its document
    app.add_url_rule("/openapi.json", "openapi_json", lambda: Response(json_body(app.api_doc), mimetype=JSON))
    for rule in app.url_map.iter_rules():  # refusals are 0 until the first: alerts and panels see 0, not nothing
        if rule.rule.startswith("/v1"):
            metrics.OVERLOADED.labels(rule.rule)

    app.before_request(_start)
    app.before_request(_check_key)
    app.before_request(_admit)  # last: a request refused for its key or its rate takes no turn
    app.teardown_request(_leave)
    app.register_error_handler(Overloaded, _overloaded)
    app.register_error_handler(QueryError, _query_error)
    app.register_error_handler(QueryTimeout, _timeout)
    app.register_error_handler(UnknownSymbol, _unknown_symbol)
    app.register_error_handler(UnavailableError, _unavailable)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(K2Error, _k2_error)
    app.register_error_handler(Exception, _bug)
    return app


class BehindProxies:
    """werkzeug's ProxyFix (one hop: the address the proxy put last in X-Forwarded-For, and
    X-Forwarded-Proto) for requests whose peer is in one of ``networks``; other requests as they
    came. ProxyFix alone believes whoever connects, and a client that reaches the API around its
    proxy could then choose the address its rate limit counts."""

    def __init__(self, app: Any, networks: list[str]) -> None:
        self.app = app
        self.fixed = ProxyFix(app, x_for=1, x_proto=1)
        self.networks = [ipaddress.ip_network(network) for network in networks]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        try:
            peer = ipaddress.ip_address(environ.get("REMOTE_ADDR", ""))
        except ValueError:  # a Unix socket, or no address
            return self.app(environ, start_response)
        trusted = any(peer in network for network in self.networks)
        return (self.fixed if trusted else self.app)(environ, start_response)


def _client() -> str:
    """Whom a rate limit counts: a configured API key, else the address (a made-up key would
    otherwise be a fresh allowance per request)."""
    from flask import current_app

    given = request.headers.get("X-API-Key", "").encode()
    for number, key in enumerate(current_app.extensions["k2.keys"]):
        if given and hmac.compare_digest(given, key):
            return f"key:{number}"
    return f"addr:{get_remote_address()}"


def _start() -> Response | None:
    g.k2_started = time.perf_counter()
    if (request.content_length or 0) > MAX_BODY_BYTES:  # Flask checks only bodies it reads; GETs are not read
        return problem(413, "request_too_large", f"request bodies are limited to {MAX_BODY_BYTES:,} bytes")
    return None


def _check_key() -> Response | None:
    from flask import current_app

    keys: list[bytes] = current_app.extensions["k2.keys"]
    if not keys or not request.path.startswith("/v1"):
        return None
    given = request.headers.get("X-API-Key", "").encode()
    if any(hmac.compare_digest(given, key) for key in keys):
        return None
    return problem(401, "unauthorized", "this API needs a key in the X-API-Key header")


def _admit() -> None:
    """A /v1 request takes its turn (:mod:`api.admission`) and counts where its time goes."""
    from flask import current_app

    if not request.path.startswith("/v1"):
        return
    g.k2_spent = Spent()
    g.k2_spent_token = SPENT.set(g.k2_spent)
    waited = current_app.extensions["k2.admission"].enter()
    g.k2_admitted = g.k2_took_turn = True
    metrics.STAGE.labels(_endpoint(), "queue").observe(waited)


def _hold_until_sent(response: Response) -> Response:
    """A turn lasts until the body is sent: a streamed body is encoded as the server sends it,
    after the request's teardown, and that encoding is work the turn bounds."""
    from flask import current_app

    if g.pop("k2_admitted", False):
        response.call_on_close(current_app.extensions["k2.admission"].leave)
    return response


def _leave(error: BaseException | None) -> None:
    from flask import current_app

    if g.get("k2_took_turn"):
        metrics.STAGE.labels(_endpoint(), "query").observe(g.k2_spent.running)
    if g.pop("k2_admitted", False):  # no answer was made (after_request did not run): the turn ends here
        current_app.extensions["k2.admission"].leave()
    token = g.pop("k2_spent_token", None)
    if token is not None:
        SPENT.reset(token)


def _endpoint() -> str:
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _overloaded(error: Overloaded) -> Response:
    metrics.OVERLOADED.labels(_endpoint()).inc()
    response = problem(503, "overloaded", str(error))
    g.k2_retry_after = response.headers["Retry-After"] = str(OVERLOADED_RETRY_AFTER_SECONDS)
    return response


def _count(response: Response) -> Response:
    endpoint = _endpoint()
    metrics.REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
    started = g.get("k2_started")
    if started is not None:
        metrics.LATENCY.labels(endpoint).observe(time.perf_counter() - started)
    if response.status_code == 429:
        metrics.RATE_LIMITED.inc()
    elif g.get("k2_retry_after") is not None:  # a 503: Flask-Limiter replaced it by its window's reset
        response.headers["Retry-After"] = g.k2_retry_after
    else:
        response.headers.pop("Retry-After", None)  # Flask-Limiter adds it to every answer; only a 429 means it
    return response


def _validation_error(error: ValidationError) -> Response:
    """pydantic's complaint as a 400 naming the first bad parameter, its value and why."""
    first = error.errors()[0]
    parameter = ".".join(str(part) for part in first["loc"]) or "query"
    why = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        why = "unknown parameter"
    value = first.get("input")
    if isinstance(value, dict | list):
        value = None if first["type"] != "extra_forbidden" else value
    return problem(400, "bad_parameter", f"{parameter}: {why}", parameter, value)


def _query_error(error: QueryError) -> Response:
    return problem(400, "bad_parameter", str(error), error.parameter, error.value)


def _timeout(error: QueryTimeout) -> Response:
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.TIMEOUTS.labels(endpoint).inc()
    return problem(504, "query_timeout", f"{error}; narrow the range or the symbols")


def _unknown_symbol(error: UnknownSymbol) -> Response:
    return problem(404, "unknown_symbol", str(error), "symbol", ",".join(error.symbols))


def _http_error(error: HTTPException) -> Response:
    """Werkzeug's errors in the problem shape, with their headers (a 405's ``Allow``)."""
    status = error.code or 500
    response = problem(status, (error.name or "error").lower().replace(" ", "_"), error.description or "")
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    if status == 429:
        limit = getattr(error, "limit", None)
        response.headers["Retry-After"] = str(_retry_after(limit))
    return response


#: A Redis that does not answer (host down, network cut) must cost a request this long at most, not
#: the kernel's connect timeout, before the fallback takes over; redis-py waits forever by default.
NETWORK_STORE_TIMEOUT_SECONDS = 0.5


def _storage_options(uri: str) -> dict[str, Any]:
    """Flask-Limiter's options for the storage at ``uri``: timeouts for Redis (and Valkey). (Any:
    Flask-Limiter annotates them as str | int, but they go to redis-py, which takes float seconds.)"""
    if urlsplit(uri).scheme.split("+")[0] in ("redis", "rediss", "valkey", "valkeys"):
        return {
            "socket_connect_timeout": NETWORK_STORE_TIMEOUT_SECONDS,
            "socket_timeout": NETWORK_STORE_TIMEOUT_SECONDS,
        }
    return {}


def _retry_after(limit: Any) -> int:
    """Seconds until the client's window resets (Flask-Limiter knows it; 1 when it does not say)."""
    from flask import current_app

    limiter: Limiter = current_app.extensions["k2.limiter"]
    window = limiter.current_limit
    if window is not None:
        return max(1, int(window.reset_at - time.time()) + 1)
    return 1


def _unavailable(error: UnavailableError) -> Response:
    """503 naming the dependency (``catalog_unavailable``), with when to ask again; the error's
    cause (its SQL, its address) goes to the log only."""
    log.warning("request %s failed: %s (%r)", request.full_path, error, error.__cause__)
    code = f"{error.dependency}_unavailable" if error.dependency else "unavailable"
    response = problem(503, code, str(error))
    g.k2_retry_after = response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _k2_error(error: K2Error) -> Response:
    log.warning("request %s failed: %s", request.full_path, error)
    return problem(500, "k2_error", str(error))


def _bug(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return _http_error(error)
    log.exception("unexpected error serving %s", request.full_path)
    return problem(500, "internal_error", "K2 failed to answer this request; the error is in the API's log")
