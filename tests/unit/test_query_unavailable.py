"""Catalog and warehouse failures as UnavailableError naming the dependency and the error's class,
never the driver's message (it carries the SQL statement and the server's address)."""

from __future__ import annotations

import duckdb
import pytest
import sqlalchemy.exc
from pyiceberg.exceptions import NoSuchTableError, ServiceUnavailableError
from requests import ConnectionError as RequestsConnectionError

from k2_etl.errors import UnavailableError
from k2_etl.lake.catalog import reaching

DRIVER = ('(psycopg2.OperationalError) connection to server at "10.0.0.5", port 5432 failed '
          "[SQL: SELECT iceberg_tables.metadata_location FROM iceberg_tables]")  # fmt: skip


@pytest.mark.parametrize(
    ("raised", "dependency", "kind"),
    [
        (sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(DRIVER)), "catalog", "OperationalError"),
        (ServiceUnavailableError(DRIVER), "catalog", "ServiceUnavailableError"),  # a REST catalog's 503
        (RequestsConnectionError(DRIVER), "catalog", "ConnectionError"),  # a REST catalog unreachable (an OSError)
        (FileNotFoundError(2, DRIVER), "warehouse", "FileNotFoundError"),
        (duckdb.IOException(DRIVER), "warehouse", "IOException"),
    ],
)
def test_failures_name_the_dependency_and_the_class_only(raised: Exception, dependency: str, kind: str) -> None:
    with pytest.raises(UnavailableError) as caught, reaching("k2.trades"):
        raise raised
    message = str(caught.value)
    assert caught.value.dependency == dependency and kind in message and caught.value.__cause__ is raised
    assert "SELECT" not in message and "10.0.0.5" not in message and "5432" not in message, message


def test_a_missing_table_is_the_platform_not_set_up() -> None:
    with pytest.raises(UnavailableError, match=r"no table k2\.trades: run `k2 init`"), reaching("k2.trades"):
        raise NoSuchTableError("Table does not exist: k2.trades")


def test_other_errors_stay_what_they_are() -> None:
    with pytest.raises(ZeroDivisionError), reaching("k2.trades"):  # a bug is a 500, not an outage
        raise ZeroDivisionError
