"""The API while a dependency is away: `k2 api` (real gunicorn) over a catalog in the machine's Postgres
reached through a TCP proxy the test cuts, and over a warehouse whose files the test moves away.

Every /v1 answer that needs the dependency is a 503 with Retry-After and the JSON problem naming it
(never a 500), /health says `unhealthy` naming the dependency and the error's class but no SQL and no
address or credentials, and the answers come back by themselves when the dependency does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import sqlalchemy as sa

from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.tables import ensure_tables
from tests.faults import TcpProxy
from tests.helpers import a_trade, poll
from tests.integration.api_helpers import Api
from tests.integration.conftest import needs_postgres

DAY = {"symbol": "BHP", "start": "2026-11-25", "end": "2026-11-26"}  # a_trade()'s symbol and day
NEEDING_THE_CATALOG = [
    ("/v1/trades", DAY),
    ("/v1/quotes", DAY),
    ("/v1/trades/with-quotes", DAY),
    ("/v1/bars", {**DAY, "interval": "1h"}),
    ("/v1/summary/BHP/2026-11-25", {}),
    ("/v1/reference/BHP", {}),
    ("/v1/sequence-events", {}),
    ("/v1/rejects", {}),
    ("/v1/tables/trades/snapshots", {}),
]


def with_a_trade(settings: Settings) -> Settings:
    """Every table created in the settings' catalog, and a trade and its symbol's reference data
    appended (pyiceberg, as the consumer does)."""
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    reference = {"event_id": "r1", "symbol": "BHP", "exchange": "ASX", "name": "BHP Group", "isin": "AU000000BHP4",
                 "currency": "AUD", "source": "test", "ingest_time": a_trade()["ingest_time"]}  # fmt: skip
    for name, row in (("trades", a_trade()), ("reference_data", reference)):
        table = catalog.load_table((settings.namespace, name))
        table.append(pa.Table.from_pylist([row], schema=table.schema().as_arrow()))
    return settings


@pytest.fixture
def proxied_catalog(postgres_database: str, tmp_path: Path) -> Iterator[tuple[Settings, TcpProxy]]:
    """Settings whose catalog is a new Postgres database reached through a proxy, holding one trade."""
    proxy, through = TcpProxy.for_url(postgres_database)
    try:
        yield with_a_trade(load_settings(home=tmp_path / "home", catalog_uri=through, stream_metrics_port=0)), proxy
    finally:
        proxy.close()


def unavailable(api: Api, path: str, params: dict[str, str]) -> httpx.Response | None:
    """The answer once it is 503; None while the worker still answers from its cached metadata (200).
    Anything else fails the test at once."""
    response = api.get(path, **params)
    if response.status_code == 200:
        return None
    assert response.status_code == 503, (path, response.status_code, response.text)
    return response


def answered(api: Api, path: str, params: dict[str, str]) -> bool:
    return api.get(path, **params).status_code == 200


@needs_postgres
def test_catalog_outage_is_503_with_retry_after_and_health_names_the_catalog(
    proxied_catalog: tuple[Settings, TcpProxy], postgres_database: str
) -> None:
    settings, proxy = proxied_catalog
    secrets = [str(proxy.port), str(sa.make_url(postgres_database).port), "127.0.0.1", "SELECT", "@"]
    password = sa.make_url(postgres_database).password
    secrets += [password] if password else []
    api = Api(settings)
    try:
        for path, params in NEEDING_THE_CATALOG:
            assert answered(api, path, params), path
        assert api.get("/v1/trades", **DAY).json()["count"] == 1
        assert api.get("/health").json()["status"] == "healthy"

        proxy.cut()
        first = api.get("/health")  # a pooled connection reset: the driver's error quotes the SQL statement
        assert first.status_code == 503 and not [s for s in secrets if s in first.text], first.text
        for path, params in NEEDING_THE_CATALOG:  # each worker answers from its cache for up to ~3 s
            response = poll(functools.partial(unavailable, api, path, params), timeout=30, what=f"503 from {path}")
            assert 1 <= int(response.headers["Retry-After"]) <= 60, (path, response.headers)
            assert response.headers["Content-Type"] == "application/json"
            error = response.json()["error"]
            assert error["status"] == 503 and error["error"] == "catalog_unavailable", (path, error)
            assert "catalog" in error["message"] and "OperationalError" in error["message"], error
            assert not [s for s in secrets if s in response.text], (path, response.text)
        health = api.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy", health.text
        check = health.json()["checks"]["catalog"]
        assert check["status"] == "down" and "catalog" in check["detail"] and "OperationalError" in check["detail"]
        assert not [s for s in secrets if s in health.text], health.text

        proxy.restore()
        for path, params in NEEDING_THE_CATALOG:
            poll(functools.partial(answered, api, path, params), timeout=30, what=f"200 again from {path}")
        assert poll(lambda: api.get("/health").json()["status"] == "healthy", timeout=30, what="healthy again")
        assert api.get("/v1/trades", **DAY).json()["count"] == 1
    finally:
        proxy.restore()  # gunicorn stops cleanly with its catalog reachable
        assert api.stop() == 0


@needs_postgres
def test_an_api_started_during_a_catalog_outage_starts_and_answers_once_it_is_back(
    proxied_catalog: tuple[Settings, TcpProxy],
) -> None:
    """`k2 up` after a reboot may start the API before the catalog: it must start, say 503, and recover
    (it used to open the catalog at start, and its workers failed to boot)."""
    settings, proxy = proxied_catalog
    proxy.cut()
    api = Api(settings)
    try:
        health = api.get("/health")
        assert health.status_code == 503 and "catalog" in health.json()["checks"]["catalog"]["detail"], health.text
        response = api.get("/v1/trades", **DAY)
        assert response.status_code == 503 and response.json()["error"]["error"] == "catalog_unavailable"
        assert "Retry-After" in response.headers
        proxy.restore()
        poll(lambda: answered(api, "/v1/trades", DAY), timeout=30, what="200 once the catalog is back")
        assert api.get("/v1/trades", **DAY).json()["count"] == 1
    finally:
        proxy.restore()
        assert api.stop() == 0


def test_warehouse_outage_is_503_naming_the_warehouse(tmp_path: Path) -> None:
    """The warehouse's files moved away (a storage outage) while the catalog answers."""
    settings = with_a_trade(load_settings(home=tmp_path / "home", stream_metrics_port=0))
    warehouse = tmp_path / "home" / "warehouse"
    api = Api(settings, K2_API_WORKERS="1")
    try:
        assert api.get("/v1/trades", **DAY).json()["count"] == 1
        warehouse.rename(tmp_path / "away")
        response = poll(lambda: unavailable(api, "/v1/trades", DAY), timeout=30, what="503 from /v1/trades")
        assert 1 <= int(response.headers["Retry-After"]) <= 60, response.headers
        error = response.json()["error"]
        assert error["error"] == "warehouse_unavailable" and "warehouse" in error["message"], error
        assert str(tmp_path) not in response.text, response.text
        health = api.get("/health")
        assert health.status_code == 503 and "warehouse" in health.json()["checks"]["catalog"]["detail"], health.text

        (tmp_path / "away").rename(warehouse)
        poll(lambda: answered(api, "/v1/trades", DAY), timeout=30, what="200 again from /v1/trades")
        assert api.get("/v1/trades", **DAY).json()["count"] == 1
    finally:
        if not warehouse.exists():
            (tmp_path / "away").rename(warehouse)
        assert api.stop() == 0
