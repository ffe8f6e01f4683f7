"""The schema registry as K2's processes reach it: the client, its errors in one line, and the
lookup of a schema's id (what every producer frames its messages with).

Any Confluent-compatible registry, through confluent-kafka's own client.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.common._httpx_compat import httpx as _client_http
from confluent_kafka.schema_registry.error import SchemaRegistryError

from k2_etl.config import Settings
from k2_etl.errors import SchemaError, UnavailableError

# The client raises the transport errors of whichever HTTP library it picked (httpx2 or httpx):
# these, exactly, say the registry did not answer.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (_client_http.HTTPError,)


class Registered(Protocol):
    """A record type whose schema is registered under a subject (k2_etl.schemas.RecordType)."""

    @property
    def name(self) -> str: ...

    @property
    def schema_str(self) -> str: ...

    def subject(self, settings: Settings) -> str: ...


def registry_client(settings: Settings) -> SchemaRegistryClient:
    # Few, quick retries: the CLI should say "unreachable" in seconds, not minutes.
    conf: dict[str, object] = {"url": settings.schema_registry_url, "max.retries": 2, "retries.wait.ms": 200}
    if settings.registry_auth is not None:
        conf["basic.auth.user.info"] = ":".join(settings.registry_auth)
    return SchemaRegistryClient(conf)


def unreachable(settings: Settings, exc: Exception) -> UnavailableError:
    return UnavailableError(
        f"schema registry at K2_SCHEMA_REGISTRY_URL={settings.schema_registry_url} is unreachable "
        f"({type(exc).__name__}); is it running? (k2 up / k2 status)",
        "registry",
    )


def refused(settings: Settings, message: str) -> str:
    """One line for a registry that answered 401: K2's credentials are missing or wrong."""
    given = "is wrong" if settings.registry_auth else "is not set"
    return (
        f"the schema registry at K2_SCHEMA_REGISTRY_URL={settings.schema_registry_url} refuses K2's credentials "
        f"({message}): K2_SCHEMA_REGISTRY_BASIC_AUTH {given}"
    )


def registry_error(settings: Settings, exc: SchemaRegistryError, doing: str = "") -> SchemaError:
    """A registry's error answer as one line (``doing``: what failed, e.g. "registering failed: ")."""
    if exc.http_status_code == 401:
        return SchemaError(doing + refused(settings, exc.error_message))
    return SchemaError(f"{doing}schema registry error {exc.error_code}: {exc.error_message}")


def schema_ids(settings: Settings, records: Iterable[Registered]) -> dict[str, int]:
    """The registry's id of each record type's schema, by record type name.

    :class:`SchemaError` naming the subject when one is not registered (or the registry refuses
    K2's credentials), :class:`UnavailableError` when the registry cannot be reached.
    """
    ids: dict[str, int] = {}
    try:
        with registry_client(settings) as client:
            for record in records:
                subject = record.subject(settings)
                try:
                    ids[record.name] = client.lookup_schema(subject, Schema(record.schema_str, "AVRO")).schema_id
                except SchemaRegistryError as exc:
                    if exc.http_status_code == 404:
                        raise SchemaError(
                            f"the {record.name} schema is not registered under {subject}; run `k2 schemas register`"
                        ) from None
                    raise
    except SchemaRegistryError as exc:
        raise registry_error(settings, exc) from None
    except SchemaError:
        raise
    except Exception as exc:  # the client's transport errors (httpx or httpx2)
        raise unreachable(settings, exc) from None
    return ids
