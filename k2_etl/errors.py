"""The one exception tree K2 raises on purpose.

Every error a user can cause or fix is a :class:`K2Error` whose message is a
single line saying what was wrong and what to do. The edges (CLI, HTTP) turn
these into exit codes and statuses; anything else escaping is a bug.
"""

from __future__ import annotations


class K2Error(Exception):
    """Root of every deliberate K2 error. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(K2Error):
    """A setting (environment variable or config file entry) is malformed."""

    exit_code = 2


class UnavailableError(K2Error):
    """A service K2 depends on (broker, schema registry, catalog, warehouse) cannot be reached.

    ``dependency`` names it when the raiser knows (the API's 503 says which: ``catalog_unavailable``).
    """

    exit_code = 3

    def __init__(self, message: str, dependency: str | None = None) -> None:
        super().__init__(message)
        self.dependency = dependency


class ComponentError(K2Error):
    """A component of the local platform could not be started, checked or stopped."""


class SchemaError(K2Error):
    """A schema is invalid or incompatible with what is already registered."""


class QueryError(K2Error):
    """A query's parameters are invalid (the API answers 400, naming the parameter and value)."""

    exit_code = 2

    def __init__(self, parameter: str, value: object, why: str) -> None:
        super().__init__(f"{parameter}={value!r}: {why}")
        self.parameter, self.value, self.why = parameter, value, why


class QueryTimeout(K2Error):
    """A query ran out of its time budget."""
