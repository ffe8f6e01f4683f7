"""The API's error body and the one error it adds to K2's tree."""

from __future__ import annotations

from typing import Any

from flask import Response

from api.render import json_body
from k2_etl.errors import K2Error


class UnknownSymbol(K2Error):
    """No trade, quote or reference row names these symbols (404)."""

    def __init__(self, symbols: list[str]) -> None:
        super().__init__(f"unknown symbol(s): {', '.join(symbols)}")
        self.symbols = symbols


def problem(status: int, error: str, message: str, parameter: str | None = None, value: Any = None) -> Response:
    """``{"error": {status, error, message, parameter?, value?}}`` with that status."""
    return Response(problem_body(status, error, message, parameter, value), status=status, mimetype="application/json")


def problem_body(status: int, error: str, message: str, parameter: str | None = None, value: Any = None) -> bytes:
    """The error body (:class:`api.responses.Problem`), also of the errors gunicorn answers itself."""
    body: dict[str, Any] = {"status": status, "error": error, "message": message}
    if parameter is not None:
        body |= {"parameter": parameter, "value": None if value is None else str(value)}
    return json_body({"error": body})
