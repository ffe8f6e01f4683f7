"""Open the Iceberg catalog that the settings describe.

The catalog type follows from ``K2_CATALOG_URI``: a SQLAlchemy URL gives a SQL
catalog (SQLite locally, Postgres in production), an http(s) URL a REST
catalog. S3 credentials, when set, are passed as FileIO properties, so the
same code serves a local warehouse, MinIO and AWS S3.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
from pyiceberg.exceptions import (
    NoSuchNamespaceError,
    NoSuchTableError,
    RESTError,
    ServerError,
    ServiceUnavailableError,
)
from requests import RequestException
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from k2_etl.config import REST_CATALOG_SCHEMES, Settings, redact_url
from k2_etl.errors import UnavailableError

#: What a catalog that cannot be reached raises: a SQL driver's connection errors, network and
#: storage errors (a REST catalog, the warehouse), a REST catalog's 5xx answers. Worth retrying.
CATALOG_FAILURES: tuple[type[Exception], ...] = (
    OperationalError, InterfaceError, OSError, ServerError, ServiceUnavailableError,
)  # fmt: skip


def catalog_failure(catalog: Catalog, exc: BaseException) -> str:
    """One line naming the catalog and what failed (drivers' messages span lines: the first is kept)."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    return f"the Iceberg catalog at K2_CATALOG_URI={redact_url(catalog.properties.get('uri'))} failed " \
           f"({type(exc).__name__}: {first})"  # fmt: skip


def catalog_properties(settings: Settings) -> dict[str, str]:
    uri = settings.catalog_uri or ""
    props: dict[str, str] = {"uri": uri, "warehouse": settings.warehouse or ""}
    if urlsplit(uri).scheme in REST_CATALOG_SCHEMES:
        props["type"] = "rest"
    else:
        props["type"] = "sql"
        url = make_url(uri)
        if url.get_backend_name() == "sqlite" and url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    if (settings.warehouse or "").startswith("file://"):
        Path(urlsplit(settings.warehouse or "").path).mkdir(parents=True, exist_ok=True)
    optional = {
        "s3.endpoint": settings.s3_endpoint,
        "s3.access-key-id": settings.s3_access_key_id,
        "s3.secret-access-key": settings.s3_secret_access_key.get_secret_value()
        if settings.s3_secret_access_key
        else None,
        "s3.region": settings.s3_region,
    }
    props.update({k: v for k, v in optional.items() if v})
    return props


def local_catalog_missing(settings: Settings) -> str | None:
    """The SQLite file a SQLite catalog URI names, when that file does not exist (so nothing is created)."""
    uri = settings.catalog_uri or ""
    if urlsplit(uri).scheme != "sqlite":
        return None
    database = make_url(uri).database
    return database if database and database != ":memory:" and not Path(database).exists() else None


def open_catalog(settings: Settings) -> Catalog:
    """The catalog, or :class:`UnavailableError` naming ``K2_CATALOG_URI`` when it cannot be opened."""
    try:
        return load_catalog(settings.catalog_name, **catalog_properties(settings))
    except Exception as exc:  # pyiceberg and SQLAlchemy raise many unrelated types here
        raise UnavailableError(
            f"cannot open the Iceberg catalog at K2_CATALOG_URI={redact_url(settings.catalog_uri)}: {exc}", "catalog"
        ) from exc


def table_names(catalog: Catalog, namespace: str) -> list[str]:
    """Tables in ``namespace`` (empty when the namespace does not exist yet)."""
    try:
        return sorted(ident[-1] for ident in catalog.list_tables(namespace))
    except (NoSuchNamespaceError, NoSuchTableError):
        return []


def metadata_location(catalog: Catalog, namespace: str, table: str) -> str | None:
    """Where the table's current metadata file is, asked cheaply (one indexed row of a SQL
    catalog) so readers can tell whether it changed without loading and parsing the metadata.
    None when the catalog has no cheaper way than loading the table (REST): reload then."""
    if not isinstance(catalog, SqlCatalog):
        return None
    with Session(catalog.engine) as session:
        location = session.scalar(
            select(IcebergTables.metadata_location).where(
                IcebergTables.catalog_name == catalog.name,
                IcebergTables.table_namespace == namespace,
                IcebergTables.table_name == table,
            )
        )
    return str(location) if location is not None else None


#: What a SQL or REST catalog raises when it does not answer.
CATALOG_ERRORS = (SQLAlchemyError, RESTError, RequestException)


@contextmanager
def reaching(table: str | None = None) -> Iterator[None]:
    """Failures of the catalog and the warehouse as :class:`UnavailableError` naming which, so the
    API answers 503, commands exit 3 and sensors wait. The message names the error's class, not
    its text: a driver's message carries the SQL statement and the server's address (the error
    stays the ``__cause__``, for the log). A table the catalog lacks is the platform not set up yet."""
    try:
        yield
    except (NoSuchTableError, NoSuchNamespaceError) as exc:
        raise UnavailableError(f"the Iceberg catalog has no table {table or ''}: run `k2 init`", "catalog") from exc
    except CATALOG_ERRORS as exc:  # before OSError: requests' errors are OSErrors
        raise UnavailableError(f"the Iceberg catalog (K2_CATALOG_URI) cannot be read: {type(exc).__name__}; "
                               "answers come back once it is back", "catalog") from exc  # fmt: skip
    except (OSError, duckdb.IOException) as exc:  # local files, S3 (pyarrow's and DuckDB's httpfs errors)
        raise UnavailableError(f"the warehouse (K2_WAREHOUSE) cannot be read: {type(exc).__name__}; "
                               "answers come back once it is back", "warehouse") from exc  # fmt: skip
