"""Flask app of the local schema registry: Confluent's REST API, routes only.

Each route parses its query string and delegates to
:class:`~k2_etl.registry.service.RegistryService`. Errors leave as Confluent
does: ``{"error_code": ..., "message": ...}`` with the matching HTTP status.
Also serves ``/healthz`` and ``/metrics`` like every K2 process.

Basic auth, as Confluent's registry offers it (``authentication.method=BASIC``),
when built with credentials (``K2_SCHEMA_REGISTRY_BASIC_AUTH``, which K2's
clients send): every request but a read (GET, HEAD) needs them, and credentials
that are sent must be right, on reads too; otherwise 401 with
``WWW-Authenticate: Basic`` and error code 40101. Reads stay open, unlike
Confluent's (which asks every request to authenticate): the local registry
listens on a loopback address, what it serves are K2's published contracts
(the .avsc files in this repository), and open reads keep curl, a browser and
a Prometheus scrape of /metrics working; the fault to close is a stranger
deleting a subject or changing compatibility.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from functools import partial
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from k2_etl.observability import REGISTRY_REQUEST_SECONDS, REGISTRY_REQUESTS
from k2_etl.registry.service import RegistryError, RegistryService
from k2_etl.registry.store import Store

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_REQUEST_BYTES = 4 * 1024 * 1024

log = logging.getLogger(__name__)
bp = Blueprint("registry", __name__)


def _service() -> RegistryService:
    service: RegistryService = current_app.extensions["k2_registry"]
    return service


def _reply(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype=CONTENT_TYPE)


def _flag(name: str) -> bool:
    # confluent-kafka formats Python bools into the query string ("True").
    return request.args.get(name, "false").lower() == "true"


def _body() -> Any:
    return request.get_json(force=True, silent=True)


@bp.get("/")
def root() -> Response:
    return _reply({})


@bp.get("/healthz")
def healthz() -> Response:
    _service().store.ping()
    return _reply({"status": "ok"})


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/schemas/types")
def schema_types() -> Response:
    return _reply(["AVRO"])


@bp.get("/schemas/ids/<int:schema_id>")
def schema_by_id(schema_id: int) -> Response:
    return _reply(_service().schema_by_id(schema_id))


@bp.get("/schemas/ids/<int:schema_id>/schema")
def raw_schema_by_id(schema_id: int) -> Response:
    return _reply(json.loads(_service().schema_by_id(schema_id)["schema"]))


@bp.get("/schemas/ids/<int:schema_id>/subjects")
def subjects_of_schema(schema_id: int) -> Response:
    return _reply(_service().subjects_of_schema(schema_id, deleted=_flag("deleted")))


@bp.get("/schemas/ids/<int:schema_id>/versions")
def versions_of_schema(schema_id: int) -> Response:
    return _reply(_service().versions_of_schema(schema_id, deleted=_flag("deleted")))


@bp.get("/subjects")
def subjects() -> Response:
    return _reply(
        _service().subjects(
            deleted=_flag("deleted"), deleted_only=_flag("deleted_only"), prefix=request.args.get("subjectPrefix", "")
        )
    )


@bp.post("/subjects/<subject>")
def lookup(subject: str) -> Response:
    return _reply(_service().lookup(subject, _body(), deleted=_flag("deleted")))


@bp.delete("/subjects/<subject>")
def delete_subject(subject: str) -> Response:
    return _reply(_service().delete_subject(subject, permanent=_flag("permanent")))


@bp.get("/subjects/<subject>/versions")
def list_versions(subject: str) -> Response:
    return _reply(_service().list_versions(subject, deleted=_flag("deleted")))


@bp.post("/subjects/<subject>/versions")
def register(subject: str) -> Response:
    return _reply(_service().register(subject, _body()))


@bp.get("/subjects/<subject>/versions/<version>")
def get_version(subject: str, version: str) -> Response:
    return _reply(_service().get_version(subject, version, deleted=_flag("deleted")))


@bp.get("/subjects/<subject>/versions/<version>/schema")
def get_version_schema(subject: str, version: str) -> Response:
    found = _service().get_version(subject, version, deleted=_flag("deleted"))
    return _reply(json.loads(found["schema"]))


@bp.get("/subjects/<subject>/versions/<version>/referencedby")
def referenced_by(subject: str, version: str) -> Response:
    _service().get_version(subject, version, deleted=False)
    return _reply([])  # references are not supported, so nothing refers to anything


@bp.delete("/subjects/<subject>/versions/<version>")
def delete_version(subject: str, version: str) -> Response:
    return _reply(_service().delete_version(subject, version, permanent=_flag("permanent")))


@bp.post("/compatibility/subjects/<subject>/versions/<version>")
def compatibility_with_version(subject: str, version: str) -> Response:
    return _reply(_service().check_compatibility(subject, version, _body(), verbose=_flag("verbose")))


@bp.post("/compatibility/subjects/<subject>/versions")
def compatibility_with_all(subject: str) -> Response:
    return _reply(_service().check_compatibility(subject, None, _body(), verbose=_flag("verbose")))


@bp.get("/config")
def get_global_config() -> Response:
    return _reply(_service().get_config(None, default_to_global=True))


@bp.put("/config")
def set_global_config() -> Response:
    return _reply(_service().set_config(None, _body()))


@bp.delete("/config")
def delete_global_config() -> Response:
    return _reply(_service().delete_config(None))


@bp.get("/config/<subject>")
def get_subject_config(subject: str) -> Response:
    return _reply(_service().get_config(subject, default_to_global=_flag("defaultToGlobal")))


@bp.put("/config/<subject>")
def set_subject_config(subject: str) -> Response:
    return _reply(_service().set_config(subject, _body()))


@bp.delete("/config/<subject>")
def delete_subject_config(subject: str) -> Response:
    return _reply(_service().delete_config(subject))


@bp.get("/mode")
@bp.get("/mode/<subject>")
def mode(subject: str | None = None) -> Response:
    return _reply({"mode": "READWRITE"})  # the local registry has no import or read-only modes


#: Methods that only read: open to anyone when the registry has credentials (see the module docstring).
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNAUTHORIZED = 40101


def _authenticate(credentials: tuple[str, str]) -> Response | None:
    """None when the request may proceed; else the 401 answer."""
    if "Authorization" not in request.headers:
        if request.method in READ_METHODS:
            return None
        return _unauthorized("every request but a read (GET) needs basic-auth credentials")
    given = request.authorization
    if given is None or given.type != "basic":
        return _unauthorized("malformed credentials, or not basic auth")
    user, password = credentials
    # Both parts compared, each in constant time: the answer's timing tells nothing about either.
    user_ok = hmac.compare_digest((given.username or "").encode(), user.encode())
    password_ok = hmac.compare_digest((given.password or "").encode(), password.encode())
    if not (user_ok & password_ok):
        return _unauthorized("wrong basic-auth credentials")
    return None


def _unauthorized(why: str) -> Response:
    response = _reply({"error_code": UNAUTHORIZED, "message": f"Unauthorized: {why}"}, 401)
    response.headers["WWW-Authenticate"] = 'Basic realm="k2-registry", charset="UTF-8"'
    return response


def _start_timer() -> None:
    g.k2_started = time.perf_counter()


def _record(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule else "unmatched"
    REGISTRY_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
    REGISTRY_REQUEST_SECONDS.labels(request.method, route).observe(time.perf_counter() - g.get("k2_started", 0.0))
    return response


def _registry_error(exc: RegistryError) -> Response:
    return _reply({"error_code": exc.code, "message": exc.message}, exc.status)


def _http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    return _reply({"error_code": code, "message": exc.description or exc.name}, code)


def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error serving %s %s", request.method, request.path)
    return _reply({"error_code": 50001, "message": f"Error in the backend data store: {type(exc).__name__}"}, 500)


def create_app(db_url: str, credentials: tuple[str, str] | None = None) -> Flask:
    """Build the registry app on the storage at ``db_url`` (any SQLAlchemy URL); with
    ``credentials`` (user, password), changes need them (basic auth)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.extensions["k2_registry"] = RegistryService(Store(db_url))
    app.register_blueprint(bp)
    app.before_request(_start_timer)
    if credentials is not None:
        app.before_request(partial(_authenticate, credentials))
    app.after_request(_record)
    app.register_error_handler(RegistryError, _registry_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    return app
