"""The REST API served by `k2 api` (gunicorn, two workers) over data landed by the real pipeline,
checked against the tables as pyiceberg reads them."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import schemathesis
from jsonschema import Draft202012Validator
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.serving import make_server

from api import create_app
from api.routes.ops import CHECK_TIMEOUT_SECONDS
from k2_etl.config import Settings, load_settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.query.engine import QueryEngine
from tests.helpers import env_of, free_port, poll, run_k2
from tests.integration.api_helpers import Api
from tests.integration.query_helpers import SlowClock, a_symbol, first_symbol, land, rows_of, slow_engine, trades_of
from tests.integration.stand_ins import RedisServer

START, END = "2026-11-01T00:00:00Z", "2026-11-04T00:00:00Z"
FORMATS = ("json", "csv", "parquet", "arrow")
#: Every answer as the OpenAPI document declares it: status, media type, headers, JSON body; never a 5xx.
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance]  # fmt: skip
EXAMPLES_PER_OPERATION = 25  # generated requests per operation, the same every run (its time grows with it)


@pytest.fixture(scope="module")
def api(landed: Settings) -> Iterator[Api]:
    server = Api(landed, K2_STREAM_METRICS_PORT=str(free_port()))  # a consumer that is not running: degraded
    yield server
    assert server.stop() == 0


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the API's JSON shows it, by plain Python (decimals as strings, times ISO with Z)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        elif isinstance(value, date):
            value = value.isoformat()
        out[key] = value
    return out


def walk(api: Api, path: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        response = api.get(path, **params, **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == len(body["data"]) and not body["partial"]
        rows.extend(body["data"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return rows, pages
        assert response.headers["X-K2-Next-Cursor"] == cursor and 'rel="next"' in response.headers["Link"]


def test_trades_pages_are_the_tables_rows_once_in_order(api: Api, landed: Settings) -> None:
    symbol = a_symbol(landed)
    rows, pages = walk(api, "/v1/trades", symbol=symbol, start=START, end=END, limit=40)
    assert pages > 2
    assert rows == [as_json(r) for r in trades_of(landed, symbol)]


def test_quotes_and_fields(api: Api, landed: Settings) -> None:
    symbol = a_symbol(landed)
    rows, _ = walk(api, "/v1/quotes", symbol=symbol, start=START, end=END, limit=50_000,
                   fields="event_time,bid_price,ask_price")  # fmt: skip
    quotes = sorted((q for q in rows_of(landed, "quotes") if q["symbol"] == symbol),
                    key=lambda q: (q["event_time"], q["sequence_number"] or -1, q["event_id"]))  # fmt: skip
    assert rows == [as_json({k: q[k] for k in ("event_time", "bid_price", "ask_price")}) for q in quotes]


def test_bars_with_quotes_and_summary_say_what_the_engine_computed(api: Api, landed: Settings) -> None:
    """The engine's results are checked against plain Python in test_query_engine; here, that HTTP
    carries them exactly (every value, in order, as JSON)."""
    engine = QueryEngine(landed)
    symbol = a_symbol(landed)
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC)
    bars, _ = walk(api, "/v1/bars", symbol=symbol, start=START, end=END, interval="5m", limit=13)
    expected = engine.bars(symbols=[symbol], start=start, end=end, interval=timedelta(minutes=5), limit=50_000)
    assert bars == [as_json(r) for r in expected.rows.to_pylist()] and len(bars) > 13
    joined, _ = walk(api, "/v1/trades/with-quotes", symbol=symbol, start=START, end=END, limit=500)
    expected = engine.trades_with_quotes(symbols=[symbol], start=start, end=end, limit=50_000)
    assert joined == [as_json(r) for r in expected.rows.to_pylist()]
    local, _ = walk(api, "/v1/bars", symbol=symbol, start=START, end=END, interval="1h", tz="exchange",
                    origin="10:00", by="exchange", limit=5)  # fmt: skip
    expected = engine.bars(symbols=[symbol], start=start, end=end, interval=timedelta(hours=1), tz="exchange",
                           origin=timedelta(hours=10), by="exchange", limit=50_000)  # fmt: skip
    assert local == [as_json(r) for r in expected.rows.to_pylist()] and {b["exchange"] for b in local} == {"ASX", "CXA"}
    summary = api.get(f"/v1/summary/{symbol}/2026-11-02")
    assert summary.status_code == 200, summary.text
    assert summary.json() == as_json(engine.summary(symbol, date(2026, 11, 2)))
    assert summary.json()["trades"] == len(
        [t for t in trades_of(landed, symbol) if t["trading_date"] == date(2026, 11, 2)]
    )


def test_symbols_reference_sequence_events_rejects_snapshots(api: Api, landed: Settings) -> None:
    listing = api.get("/v1/symbols")
    assert listing.status_code == 200
    symbols = {r["symbol"]: r for r in listing.json()["data"]}
    reference = rows_of(landed, "reference_data")
    assert {r["symbol"] for r in reference} <= set(symbols)
    one = reference[0]
    got = api.get(f"/v1/reference/{one['symbol']}")
    assert got.status_code == 200 and got.json()["data"] == [as_json(one)]
    events, _ = walk(api, "/v1/sequence-events", start="2000-01-01", end="2100-01-01", limit=2)
    assert sorted(e["event_id"] for e in events) == sorted(r["event_id"] for r in rows_of(landed, "sequence_events"))
    gaps, _ = walk(api, "/v1/sequence-events", start="2000-01-01", end="2100-01-01", kind="gap")
    assert gaps and all(e["kind"] == "gap" for e in gaps)
    rejects, _ = walk(api, "/v1/rejects", start="2000-01-01", end="2100-01-01", stage="load")
    assert [(r["field"], r["line_number"]) for r in rejects] == [("price", 2)]
    snapshots, _ = walk(api, "/v1/tables/trades/snapshots", limit=1)
    table = open_catalog(landed).load_table((landed.namespace, "trades"))
    assert [s["snapshot_id"] for s in snapshots] == [
        s.snapshot_id for s in sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True)
    ]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "arrow"])
@pytest.mark.parametrize("how", ["format", "accept"])
def test_csv_parquet_and_arrow_equal_the_json(api: Api, landed: Settings, fmt: str, how: str) -> None:
    symbol = a_symbol(landed)
    fields = "event_id,event_time,price,size,sequence_number,exchange,trading_date"
    query = {"symbol": symbol, "start": START, "end": END, "limit": 100, "fields": fields}
    as_json_body = api.get("/v1/trades", **query).json()
    media = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet",
             "arrow": "application/vnd.apache.arrow.stream"}[fmt]  # fmt: skip
    if how == "format":
        response = api.get("/v1/trades", **query, format=fmt)
    else:
        response = api.get("/v1/trades", **query, headers={"Accept": media})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith(media)
    assert response.headers["X-K2-Next-Cursor"] == as_json_body["next_cursor"] is not None
    assert "Retry-After" not in response.headers  # only a 429 says when to retry
    schema = QueryEngine(landed).table("trades").schema().as_arrow()
    wanted = pa.schema([schema.field(name) for name in fields.split(",")])
    if fmt == "csv":
        options = pa_csv.ConvertOptions(column_types={f.name: f.type for f in wanted})
        table = pa_csv.read_csv(io.BytesIO(response.content), convert_options=options)
    elif fmt == "parquet":
        table = pq.read_table(io.BytesIO(response.content))
    else:
        table = pa.ipc.open_stream(response.content).read_all()
    assert [as_json(r) for r in table.cast(wanted).to_pylist()] == as_json_body["data"]


def test_time_travel_and_pages_stay_on_their_snapshot_while_data_lands(
    api: Api, landed: Settings, tmp_path: Path
) -> None:
    before = open_catalog(landed).load_table((landed.namespace, "trades")).current_snapshot()
    assert before is not None
    data = tmp_path / "more"
    generated = run_k2(env_of(landed), "generate", "--out", str(data), "--symbols", "3", "--days", "1",
                       "--start", "2026-11-03", "--trades-per-day", "300", "--seed", "11")  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    first = first_symbol(data / "2026-11-03")
    query = {"symbol": first, "start": "2026-11-02T12:00:00Z", "end": "2026-11-04", "limit": 25}
    assert api.get("/v1/trades", **query).status_code == 404  # not landed yet: unknown
    land(landed, data)
    page = api.get("/v1/trades", **query).json()
    pinned = page["snapshot_id"]
    seen = list(page["data"])
    more = tmp_path / "more2" / "2026-11-03"  # the same trades numbered anew (new ids): land while we walk
    more.mkdir(parents=True)
    header, *lines = (data / "2026-11-03" / "trades_ASX.csv").read_text().splitlines()
    fields = header.replace('"', "").split(",")
    at = fields.index("sequence_number")
    renumbered = [
        ",".join(str(int(v) + 10**6) if i == at else v for i, v in enumerate(line.split(","))) for line in lines
    ]
    (more / "trades_ASX.csv").write_text("\n".join([header, *renumbered]) + "\n")
    lander = threading.Thread(target=land, args=(landed, more.parent))
    lander.start()
    cursor = page["next_cursor"]
    while cursor:
        response = api.get("/v1/trades", **query, cursor=cursor)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["snapshot_id"] == pinned
        seen.extend(page["data"])
        cursor = page["next_cursor"]
    lander.join()
    at_pin = [r for r in trades_of(landed, first, pinned) if r["event_time"] >= datetime(2026, 11, 2, 12, tzinfo=UTC)]
    shown = (pinned, len(seen), len(at_pin), seen[-1:], at_pin[len(seen) - 1 : len(seen) + 1])
    assert [r["event_id"] for r in seen] == [r["event_id"] for r in at_pin], shown
    more_now = lambda: len(walk(api, "/v1/trades", **{**query, "limit": 50_000})[0]) > len(seen) or None  # noqa: E731
    poll(more_now, timeout=10, what="the second load visible to a new walk (metadata is cached up to 1 s)")
    past = walk(api, "/v1/trades", **query, snapshot_id=before.snapshot_id)[0]
    assert past == []  # the symbol did not exist at that snapshot
    as_of = datetime.fromtimestamp(before.timestamp_ms / 1000 + 0.0005, UTC).isoformat()
    assert walk(api, "/v1/trades", **query, as_of=as_of)[0] == []
    assert walk(api, "/v1/trades", **query, snapshot_id=pinned)[0] == seen


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"start": "2026-11-03", "end": "2026-11-02"}, "start"),
        ({"limit": "0"}, "limit"),
        ({"limit": "50001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
        ({"format": "xml"}, "format"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-02-30"}, "end"),
        ({"as_of": "2026-11-02", "snapshot_id": "1"}, "query"),
        ({"snapshot_id": "123"}, "snapshot_id"),
        ({"symbols": "BHP"}, "symbols"),
        ({"fields": "price,nope"}, "fields"),
        ({"exchange": "A'SX"}, "exchange"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter_and_value(
    api: Api, landed: Settings, params: dict[str, str], parameter: str
) -> None:
    response = api.get("/v1/trades", **{"symbol": a_symbol(landed), "start": START, "end": END, **params})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["parameter"] == parameter and error["message"], error
    if parameter in params:
        given, named = params[parameter], str(error["value"])
        assert named and (named in given or given in named), error  # the value, or its bad part


@pytest.mark.parametrize(
    ("path", "params", "status", "parameter"),
    [
        ("/v1/bars", {"interval": "7m"}, 400, "interval"),
        ("/v1/bars", {"interval": "5 minutes"}, 400, "interval"),
        ("/v1/bars", {}, 400, "interval"),
        ("/v1/bars", {"interval": "1h", "tz": "Mars/Olympus"}, 400, "tz"),
        ("/v1/bars", {"interval": "1h", "origin": "25:00"}, 400, "origin"),
        ("/v1/bars", {"interval": "1h", "by": "venue"}, 400, "by"),
        ("/v1/bars", {"interval": "1d", "tz": "exchange", "exchange": "ZZZZ"}, 400, "tz"),
        ("/v1/bars", {"interval": "1d", "day": "2026-11-02"}, 400, "query"),  # and start, end: not both
        ("/v1/summary/{symbol}/2026-13-01", {}, 400, "date"),
        ("/v1/summary/{symbol}/0001-01-01", {}, 400, "date"),
        ("/v1/summary/{symbol}/9999-12-31", {}, 400, "date"),
        ("/v1/tables/trades/snapshots", {"cursor": "eyJzIjoxLCJ0IjoxLCJxIjoxLCJpIjoieCJ9"}, 400, "cursor"),
        ("/v1/summary/NOPE/2026-11-02", {}, 404, "symbol"),
        ("/v1/reference/NOPE", {}, 404, "symbol"),
        ("/v1/tables/nope/snapshots", {}, 404, "table"),
        ("/v1/sequence-events", {"kind": "bad"}, 400, "kind"),
        ("/v1/rejects", {"stage": "bad"}, 400, "stage"),
    ],
)
def test_other_endpoints_name_what_is_wrong(
    api: Api, landed: Settings, path: str, params: dict[str, str], status: int, parameter: str
) -> None:
    symbol = a_symbol(landed)
    query = {"symbol": symbol, "start": START, "end": END, **params} if path == "/v1/bars" else params
    response = api.get(path.format(symbol=symbol), **query)
    assert response.status_code == status, response.text
    assert response.json()["error"]["parameter"] == parameter


@pytest.mark.parametrize(
    "attempt", ["' OR 1=1 --", "X'); DROP TABLE trades; --", '" OR "1"="1', "BHP;SELECT 1", "%27%20OR%201=1"]
)
def test_sql_injection_in_every_string_parameter_is_refused_or_unknown(
    api: Api, landed: Settings, attempt: str
) -> None:
    symbol = a_symbol(landed)
    base = {"symbol": symbol, "start": START, "end": END}
    for path, params in [
        ("/v1/trades", {**base, "symbol": attempt}),
        ("/v1/trades", {**base, "exchange": attempt}),
        ("/v1/trades", {**base, "fields": attempt}),
        ("/v1/trades", {**base, "cursor": attempt}),
        ("/v1/quotes", {**base, "start": attempt}),
        ("/v1/bars", {**base, "interval": attempt}),
        ("/v1/bars", {**base, "interval": "1h", "tz": attempt}),
        ("/v1/sequence-events", {"kind": attempt}),
        ("/v1/rejects", {"record_type": attempt}),
        (f"/v1/summary/{attempt}/2026-11-02", {}),
        (f"/v1/reference/{attempt}", {}),
    ]:
        response = api.get(path, **params)
        assert response.status_code in (400, 404), (path, params, response.status_code, response.text)
    assert api.get("/v1/trades", **base).json()["count"] > 0  # and the tables are still there


def test_exchanges_say_their_zones_and_rejects_narrow_to_a_symbol(api: Api, landed: Settings) -> None:
    exchanges = {row["exchange"]: row for row in api.get("/v1/exchanges").json()["data"]}
    assert exchanges["ASX"]["time_zone"] == exchanges["CXA"]["time_zone"] == "Australia/Sydney"
    assert exchanges["ASX"]["symbols"] >= 9 and exchanges["XLON"]["time_zone"] == "Europe/London"
    ever = {"start": "2000-01-01", "end": "2100-01-01"}
    (bad,) = api.get("/v1/rejects", symbol="BADP", **ever).json()["data"]  # the sample's one rejected row
    assert bad["field"] == "price" and "BADP" in bad["raw_line"]
    assert api.get("/v1/rejects", symbol="BAD", **ever).json()["count"] == 0  # a field, not a substring


def test_unknown_symbols_are_404_naming_them(api: Api, landed: Settings) -> None:
    response = api.get("/v1/trades", symbol=f"{a_symbol(landed)},NOPE,ALSO_NOPE", start=START, end=END)
    assert response.status_code == 404
    assert response.json()["error"]["value"] == "NOPE,ALSO_NOPE"


def test_health_reports_each_dependency_and_a_missing_consumer_as_degraded(api: Api) -> None:
    response = api.get("/health")
    body = response.json()
    assert response.status_code == 200 and body["status"] == "degraded", body
    assert body["checks"]["catalog"]["status"] == "up" and body["checks"]["query_engine"]["status"] == "up"
    consumer = body["checks"]["consumer"]
    assert consumer["status"] == "down" and consumer["detail"] == "ConnectError", consumer  # nobody on its port
    assert 0 < consumer["latency_ms"] < CHECK_TIMEOUT_SECONDS * 1000, consumer  # refused at once, not timed out


def test_metrics_count_every_request_across_workers(api: Api, landed: Settings) -> None:
    def served() -> float:
        text = api.get("/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('k2_api_requests_total{endpoint="/v1/symbols",method="GET",status="200"}')
        )

    before = served()
    for _ in range(20):  # a new connection each: the kernel spreads them over the workers
        assert httpx.get(f"{api.url}/v1/symbols", timeout=30).status_code == 200
    assert served() == before + 20
    pids = {p.name.rsplit("_", 1)[-1] for p in (api.home / "run" / "api-metrics").glob("*.db")}
    assert len(pids) >= 2, pids  # both workers wrote metrics, and /metrics summed them


def test_openapi_document_validates_and_docs_are_served(api: Api) -> None:
    from openapi_spec_validator import validate

    document = api.get("/openapi.json").json()
    validate(document)
    assert {"/v1/trades", "/v1/quotes", "/v1/bars", "/v1/trades/with-quotes", "/v1/summary/{symbol}/{date}",
            "/v1/symbols", "/v1/reference/{symbol}", "/v1/sequence-events", "/v1/rejects",
            "/v1/tables/{table}/snapshots", "/health", "/metrics"} <= set(document["paths"])  # fmt: skip
    docs = httpx.get(f"{api.url}/docs/swagger", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_oversized_requests_are_refused(api: Api, landed: Settings) -> None:
    body = httpx.request("GET", f"{api.url}/v1/symbols", content=b"x" * (128 * 1024), timeout=30)
    assert body.status_code == 413
    line = api.get("/v1/trades", symbol=",".join([a_symbol(landed)] * 2000))  # gunicorn refuses these itself
    assert_problem(line, 414, "8,190 bytes")
    assert_problem(api.get("/v1/symbols", headers={"X-Big": "x" * 9000}), 431, "8,190 bytes")
    assert_problem(api.get("/v1/symbols", headers={f"X-{n}": "x" for n in range(60)}), 431, "50 headers")


def test_a_request_gunicorn_cannot_read_is_a_json_400(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as conn:
        conn.sendall(b"NOT AN HTTP REQUEST LINE\r\n\r\n")
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Content-Type: application/json" in head, received
    error = json.loads(body)["error"]
    assert error["status"] == 400 and error["error"] == "bad_request" and "request line" in error["message"], error


def assert_problem(response: httpx.Response, status: int, says: str) -> None:
    """A refusal as the API's problem JSON: that status, and a message that says ``says``."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"] == "application/json", (response.headers, response.text[:300])
    error = response.json()["error"]
    assert error["status"] == status and says in error["message"], error


def test_rate_limit_answers_429_with_retry_after(landed: Settings) -> None:
    server = Api(landed, K2_API_RATE_LIMIT="3/minute", K2_API_WORKERS="1")
    try:
        statuses = [server.get("/v1/symbols").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = server.get("/v1/symbols")
        assert limited.json()["error"]["status"] == 429 and 1 <= int(limited.headers["Retry-After"]) <= 61
        assert server.get("/health").status_code == 200  # operations are not limited
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("networks", "peer", "own_limit"),
    [([], "10.9.9.9", False), (["10.9.9.0/24"], "10.9.9.9", True), (["10.9.9.0/24"], "10.8.8.8", False)],
    ids=["no-proxy", "from-the-proxy", "around-the-proxy"],
)
def test_only_a_trusted_proxy_gives_each_client_its_own_limit(
    landed: Settings, networks: list[str], peer: str, own_limit: bool
) -> None:
    """K2_API_TRUSTED_PROXIES (behind the compose stack's balancer): a request from a listed network
    is counted by the address in X-Forwarded-For. Anyone else can write that header, so then the
    connection's peer is counted, whatever the header says."""
    settings = landed.model_copy(update={"api_rate_limit": "2/day", "api_trusted_proxies": networks})  # no window ends
    client = create_app(settings).test_client()

    def status(forwarded_for: str) -> int:
        answer = client.get("/v1/symbols", headers={"X-Forwarded-For": forwarded_for},
                            environ_base={"REMOTE_ADDR": peer})  # fmt: skip
        return answer.status_code

    assert [status("192.0.2.1"), status("192.0.2.1"), status("192.0.2.1")] == [200, 200, 429]
    assert status("192.0.2.2") == (200 if own_limit else 429)  # another client, or the same peer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def test_two_api_instances_share_one_rate_limit_through_redis(landed: Settings, redis_server: RedisServer) -> None:
    """Two `k2 api` (2 workers each) behind one address, as behind a load balancer: one count in
    Redis, so the 7th request is refused whichever worker gets it. With Redis gone each worker
    counts on its own: requests are answered, never failed because the store is down."""
    servers = [Api(landed, K2_API_RATE_LIMIT="6/minute", K2_API_RATE_LIMIT_STORAGE_URI=redis_server.url)
               for _ in range(2)]  # fmt: skip
    try:
        statuses = [servers[i % 2].get("/v1/symbols").status_code for i in range(8)]
        assert statuses == [200] * 6 + [429] * 2  # per-worker counting would have let all 8 through
        redis_server.stop()
        after = [servers[i % 2].get("/v1/symbols").status_code for i in range(4)]
        assert after == [200] * 4, after  # fresh per-worker counts (logged), not 500
    finally:
        for server in servers:
            assert server.stop() == 0
    logs = "".join((server.home / f"api-{server.port}.log").read_text() for server in servers)
    assert "falling back to in-memory storage" in logs


def test_api_keys_when_configured(landed: Settings) -> None:
    server = Api(landed, K2_API_KEYS='["k2-test-key"]', K2_API_WORKERS="1")
    try:
        assert server.get("/v1/symbols").status_code == 401
        assert server.get("/v1/symbols", headers={"X-API-Key": "wrong"}).status_code == 401
        assert server.get("/v1/symbols", headers={"X-API-Key": "k2-test-key"}).status_code == 200
        assert server.get("/health").status_code == 200 and server.get("/openapi.json").status_code == 200
    finally:
        assert server.stop() == 0


@pytest.fixture
def in_process(landed: Settings) -> Iterator[Any]:
    """The app in a real WSGI server (werkzeug's) in this process, so a test can shape its engine."""
    servers = []

    def serve(engine: QueryEngine, settings: Settings | None = None) -> str:
        server = make_server("127.0.0.1", 0, create_app(settings or landed, engine=engine), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()


def test_over_budget_a_request_gets_what_there_is_then_504_when_nothing(in_process: Any, landed: Settings) -> None:
    symbol = a_symbol(landed)
    url = in_process(slow_engine(landed))
    partial = httpx.get(f"{url}/v1/trades", params={"symbol": symbol, "start": START, "end": END, "limit": 50_000})
    body = partial.json()
    assert partial.status_code == 200 and body["partial"] is True and body["next_cursor"] and body["count"] > 0
    assert partial.headers["X-K2-Partial"] == "true"
    fast = in_process(QueryEngine(landed))
    rest = httpx.get(f"{fast}/v1/trades", params={"symbol": symbol, "start": START, "end": END, "limit": 50_000,
                                                  "cursor": body["next_cursor"]})  # fmt: skip
    ids = [r["event_id"] for r in body["data"]] + [r["event_id"] for r in rest.json()["data"]]
    assert ids == [r["event_id"] for r in trades_of(landed, symbol)]
    nothing = in_process(QueryEngine(landed, clock=SlowClock(), budget_seconds=0))
    timed_out = httpx.get(f"{nothing}/v1/trades", params={"symbol": symbol, "start": START, "end": END})
    assert timed_out.status_code == 504 and timed_out.json()["error"]["error"] == "query_timeout"


def test_a_worker_with_every_turn_taken_refuses_at_once_with_503_and_retry_after(
    in_process: Any, landed: Settings
) -> None:
    """K2_API_THREADS=1, K2_API_QUEUE=0: while one request queries, the next is refused at once
    (503 overloaded, Retry-After), /health still answers, and the freed turn serves the one after."""
    settings = landed.model_copy(update={"api_threads": 1, "api_queue": 0})
    engine = QueryEngine(settings)
    querying, release = threading.Event(), threading.Event()
    run = engine.runner.run

    def held(statement: str, *args: Any, **kwargs: Any) -> Any:
        if statement != "SELECT 1":  # the health check's ping goes by
            querying.set()
            release.wait(60)
        return run(statement, *args, **kwargs)

    engine.runner.run = held  # type: ignore[method-assign]
    url = in_process(engine, settings)
    params = {"symbol": a_symbol(landed), "start": START, "end": END, "limit": 5}
    first: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: first.append(httpx.get(f"{url}/v1/trades", params=params, timeout=60)))
    holder.start()
    try:
        assert querying.wait(30), "the first request never reached the engine"
        refused = httpx.get(f"{url}/v1/trades", params=params, timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["error"] == "overloaded"
        assert "answering 1 requests and holding 0 more" in refused.json()["error"]["message"]
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # not behind the queries
    finally:
        release.set()
        holder.join(timeout=60)
    assert first[0].status_code == 200 and first[0].json()["count"] == 5
    # The turn comes back once the server has closed the first answer (just after the client has it).
    deadline = time.monotonic() + 30
    while (status := httpx.get(f"{url}/v1/trades", params=params, timeout=30).status_code) == 503:
        assert time.monotonic() < deadline, "the turn never came back"
        time.sleep(0.05)
    assert status == 200
    exposition = httpx.get(f"{url}/metrics", timeout=30).text
    assert 'k2_api_overloaded_total{endpoint="/v1/trades"}' in exposition
    for stage in ("queue", "query", "encode"):
        assert f'k2_api_stage_duration_seconds_count{{endpoint="/v1/trades",stage="{stage}"}}' in exposition, stage


def test_unhealthy_without_a_catalog(in_process: Any, landed: Settings, tmp_path: Path) -> None:
    empty = load_settings(home=tmp_path / "nothing-here", kafka_bootstrap=landed.kafka_bootstrap,
                          schema_registry_url=landed.schema_registry_url, stream_metrics_port=0)  # fmt: skip
    url = in_process(QueryEngine(empty))
    response = httpx.get(f"{url}/health")
    assert response.status_code == 503 and response.json()["status"] == "unhealthy"
    assert response.json()["checks"]["catalog"]["status"] == "down"


@pytest.fixture(scope="module")
def published(api: Api) -> Any:
    """The API's OpenAPI document as schemathesis reads it, by operation path."""
    operations = {}
    for result in schemathesis.openapi.from_url(f"{api.url}/openapi.json").get_all_operations():
        assert isinstance(result, Ok), result.err()  # the document declares the operation validly
        operations[result.ok().path] = result.ok()
    return operations


def good_requests(landed: Settings) -> dict[str, dict[str, Any]]:
    """A request to each operation that finds rows (generated requests mostly name unknown symbols)."""
    window = {"symbol": a_symbol(landed), "start": START, "end": END}
    ever = {"start": "2000-01-01", "end": "2100-01-01"}
    return {
        "/v1/trades": {"query": {**window, "limit": 30}},
        "/v1/quotes": {"query": {**window, "limit": 30}},
        "/v1/trades/with-quotes": {"query": {**window, "limit": 30}},
        "/v1/bars": {"query": {**window, "interval": "1h"}},
        "/v1/summary/{symbol}/{date}": {"path_parameters": {"symbol": a_symbol(landed), "date": "2026-11-02"}},
        "/v1/symbols": {},
        "/v1/exchanges": {},
        "/v1/reference/{symbol}": {"path_parameters": {"symbol": rows_of(landed, "reference_data")[0]["symbol"]}},
        "/v1/sequence-events": {"query": ever},
        "/v1/rejects": {"query": ever},
        "/v1/tables/{table}/snapshots": {"path_parameters": {"table": "trades"}, "query": {"limit": 2}},
        "/health": {},
        "/metrics": {},
    }


def test_every_answer_conforms_to_the_published_document(published: dict[str, Any], landed: Settings) -> None:
    """Each operation's rows in every format, then requests generated from the document (a bounded number
    per operation): every status, media type, header and JSON body is what the document declares, and
    user input never gets a 5xx. Not checked: that every request the document allows is answered 200
    (schemathesis' positive_data_acceptance): a cursor is opaque, an interval must divide a day, as_of
    excludes snapshot_id, which a schema cannot say; the server names the parameter in a 400."""
    requests = good_requests(landed)
    assert set(published) == set(requests), "every operation is published and exercised here"
    for path, operation in published.items():
        declared = operation.definition.raw["responses"]["200"]["content"]
        assert "application/json" in declared or path == "/metrics", (path, declared)
        assert all("schema" in media for media in declared.values()), (path, declared)
        has_format = any(parameter.name == "format" for parameter in operation.iter_parameters())
        for fmt in FORMATS if has_format else (None,):
            request = requests[path]
            case = operation.Case(path_parameters=request.get("path_parameters"),
                                  query={**request.get("query", {}), **({"format": fmt} if fmt else {})})  # fmt: skip
            response = case.call_and_validate(checks=CONFORMANCE)
            assert response.status_code == 200, (path, fmt, response.text)
            if fmt == "json" and "count" in response.json():
                assert response.json()["count"] > 0, (path, "an answer with rows: their schema is checked")

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck))  # fmt: skip
        def conforms(case: Any) -> None:
            case.call_and_validate(checks=CONFORMANCE)

        conforms()


def test_the_document_refuses_what_the_api_refuses(api: Api, published: dict[str, Any], landed: Settings) -> None:
    """Each optional query parameter sent empty (`end=`): a 400 naming it exactly when its declared schema
    refuses an empty value (a client validating against the document is never surprised)."""
    for path, request in good_requests(landed).items():
        operation = published[path]
        url = path.format(**request.get("path_parameters", {}))
        for parameter in operation.iter_parameters():
            if parameter.location != "query" or parameter.name in request.get("query", {}):
                continue
            schema = parameter.definition["schema"]
            arrays = [schema, *schema.get("anyOf", [])]
            empty: Any = [""] if any(s.get("type") == "array" for s in arrays) else ""  # symbol=: one empty item
            allowed = Draft202012Validator(schema).is_valid(empty)
            response = api.get(url, **request.get("query", {}), **{parameter.name: ""})
            refused = response.status_code == 400 and response.json()["error"]["parameter"] == parameter.name
            assert refused != allowed, (path, parameter.name, schema, response.status_code, response.text)
            assert response.status_code in (200, 400), (path, parameter.name, response.text)


def test_other_methods_are_405_naming_the_allowed_ones(api: Api) -> None:
    for method, path in [("POST", "/v1/trades"), ("DELETE", "/v1/symbols"), ("PUT", "/health")]:
        response = httpx.request(method, f"{api.url}{path}", timeout=30)
        assert response.status_code == 405, (method, path, response.text)
        assert {"GET", "HEAD", "OPTIONS"} <= {m.strip() for m in response.headers["Allow"].split(",")}, response.headers
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["error"]["status"] == 405


def test_k2_query_answers_like_the_api(api: Api, landed: Settings, tmp_path: Path) -> None:
    symbol = a_symbol(landed)
    env = env_of(landed)
    window = ["--start", START, "--end", END]
    trades = run_k2(env, "query", "trades", symbol, *window, "--limit", "50", "--json")
    assert trades.returncode == 0, trades.stderr
    assert json.loads(trades.stdout) == api.get("/v1/trades", symbol=symbol, start=START, end=END, limit=50).json()
    out = tmp_path / "all.parquet"
    written = run_k2(env, "query", "trades", symbol, *window, "--out", str(out))
    assert written.returncode == 0, written.stderr
    assert [as_json(r) for r in pq.read_table(out).to_pylist()] == [as_json(r) for r in trades_of(landed, symbol)]
    csv_out = tmp_path / "bars.csv"
    assert run_k2(env, "query", "bars", symbol, *window, "--interval", "15m", "--out", str(csv_out)).returncode == 0
    bars = api.get("/v1/bars", symbol=symbol, start=START, end=END, interval="15m").json()["data"]
    assert pa_csv.read_csv(csv_out).num_rows == len(bars) > 0
    summary = run_k2(env, "query", "summary", symbol, "2026-11-02", "--json")
    assert json.loads(summary.stdout) == api.get(f"/v1/summary/{symbol}/2026-11-02").json()
    table = run_k2(env, "query", "quotes", symbol, *window, "--limit", "5")
    assert table.returncode == 0 and "bid_price" in table.stdout and "more with --cursor" in table.stdout
    bad = run_k2(env, "query", "bars", symbol, "--interval", "7m")
    assert bad.returncode == 2 and "interval" in bad.stderr and "Traceback" not in bad.stderr
    unknown = run_k2(env, "query", "summary", "NOPE", "2026-11-02")
    assert unknown.returncode == 2 and "NOPE" in unknown.stderr
