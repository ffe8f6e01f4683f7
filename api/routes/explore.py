"""The market-data explorer (``/explore``) and the index page (``/``): static files, no build step.

The page is one HTML file, a script and a stylesheet in ``api/explorer/``, and the charting
library vendored from npm (``api/explorer/vendor/``, see its README). They are not part of the
OpenAPI document: the page is a client of ``/v1`` like any other.

Headers: a Content-Security-Policy that allows only this origin (no inline script or style, no
CDN), ``nosniff``, and caching by what a file is: the vendored library's path carries its
version, so it is ``immutable`` for a year; the page's own files revalidate every time (an
ETag, 304 when unchanged), so a new K2 is seen at once. Compressed with gzip when the browser
accepts it, once per file per process (three files; Flask-Compress would also take the API's
streamed bodies, which must stay uncompressed for their time budgets and byte counts).
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from functools import cache
from pathlib import Path

from flask import Blueprint, Response, abort, request

FILES = Path(__file__).resolve().parents[1] / "explorer"
VENDOR_PREFIX = "vendor/"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
blueprint = Blueprint("explore", __name__)


@cache
def _file(name: str) -> tuple[bytes, bytes, str, str]:
    """(bytes, gzip-compressed bytes, media type, entity tag) of a file of the page, read once."""
    try:
        path = (FILES / name).resolve()
    except ValueError:  # a NUL in the name
        raise FileNotFoundError(name) from None
    # The file's own name only: no "..", no links out, no second name for a file (a "vendor/../"
    # alias of a page file would be cached as immutable).
    if not path.is_relative_to(FILES) or path.relative_to(FILES).as_posix() != name:
        raise FileNotFoundError(name)
    if not path.is_file() or path.suffix not in (".html", ".js", ".css"):
        raise FileNotFoundError(name)
    body = path.read_bytes()
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return body, gzip.compress(body, 9, mtime=0), media, hashlib.sha256(body).hexdigest()[:32]


def _send(name: str) -> Response:
    try:
        body, compressed, media, etag = _file(name)
    except FileNotFoundError:
        abort(404)
    gzipped = "gzip" in request.accept_encodings
    etag = f"{etag}-gzip" if gzipped else etag  # two representations, two strong tags
    if request.if_none_match.contains(etag):
        response = Response(status=304)
    elif gzipped:
        response = Response(compressed, mimetype=media)
        response.headers["Content-Encoding"] = "gzip"
    else:
        response = Response(body, mimetype=media)
    response.headers["Vary"] = "Accept-Encoding"
    response.set_etag(etag)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = (
        "public, max-age=31536000, immutable" if name.startswith(VENDOR_PREFIX) else "no-cache"
    )
    if media == "text/html":
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


@blueprint.get("/")
def index() -> Response:
    """Where to go: the explorer, the API's docs and document, health and metrics."""
    return _send("index.html")


@blueprint.get("/explore")
def explore() -> Response:
    return _send("explore.html")


@blueprint.get("/explore/<path:name>")
def explore_file(name: str) -> Response:
    return _send(name)
