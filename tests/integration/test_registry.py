"""The local schema registry, driven through confluent-kafka's own client over HTTP (gunicorn)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import psutil
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from k2_etl.bootstrap import init_platform
from k2_etl.config import Settings, load_settings
from k2_etl.schemas import TOPIC_RECORD_TYPES, TRADE
from k2_etl.schemas.registration import register_schemas
from k2_etl.wire.registry import registry_client
from tests.helpers import REPO, env_of, free_port, poll, processes_of, run_k2
from tests.integration.conftest import RegistryProcess, running_registry
from tests.integration.ingest_helpers import load


def record(*fields: dict[str, object], name: str = "T") -> Schema:
    return Schema(json.dumps({"type": "record", "name": name, "fields": list(fields)}), "AVRO")


A = {"name": "a", "type": "int"}
B_REQUIRED = {"name": "b", "type": "string"}
B_OPTIONAL = {"name": "b", "type": ["null", "string"], "default": None}
B_DEFAULTED = {"name": "b", "type": "string", "default": ""}


@pytest.fixture
def client(platform_settings: Settings) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient({"url": platform_settings.schema_registry_url}) as sr:
        yield sr


@pytest.fixture
def fresh(platform_settings: Settings) -> Iterator[SchemaRegistryClient]:
    """A second client with an empty cache, so reads really go to the server."""
    with SchemaRegistryClient({"url": platform_settings.schema_registry_url}) as sr:
        yield sr


@pytest.fixture
def subject() -> str:
    return f"test-{uuid.uuid4().hex[:10]}-value"


def error_of(call: object) -> SchemaRegistryError:
    with pytest.raises(SchemaRegistryError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_register_fetch_by_id_and_latest(
    client: SchemaRegistryClient, fresh: SchemaRegistryClient, subject: str
) -> None:
    schema_id = client.register_schema(subject, record(A))
    fetched = fresh.get_schema(schema_id)
    assert json.loads(fetched.schema_str) == json.loads(record(A).schema_str)
    latest = client.get_latest_version(subject)
    assert (latest.schema_id, latest.version, latest.subject) == (schema_id, 1, subject)
    assert client.register_schema(subject, record(A)) == schema_id  # idempotent
    assert client.get_versions(subject) == [1]


def test_same_schema_same_id_across_subjects(client: SchemaRegistryClient, subject: str) -> None:
    unique = record(A, name=f"R{uuid.uuid4().hex[:8]}")
    first = client.register_schema(subject, unique)
    second = client.register_schema(subject + "-other", unique)
    assert first == second
    # whitespace does not make a schema different
    spaced = Schema(json.dumps(json.loads(unique.schema_str), indent=4), "AVRO")
    assert client.lookup_schema(subject, spaced).schema_id == first


def test_compatible_evolution_accepted_incompatible_rejected(client: SchemaRegistryClient, subject: str) -> None:
    v1 = client.register_schema(subject, record(A))
    v2 = client.register_schema(subject, record(A, B_OPTIONAL))
    assert v2 != v1
    assert client.get_latest_version(subject).version == 2
    err = error_of(lambda: client.register_schema(subject, record(A, B_OPTIONAL, {"name": "c", "type": "long"})))
    assert (err.http_status_code, err.error_code) == (409, 409)
    assert "reader_field_missing_default_value at /fields/2 (c)" in err.error_message
    assert client.get_versions(subject) == [1, 2]


def test_unknown_subject_and_version(client: SchemaRegistryClient, subject: str) -> None:
    err = error_of(lambda: client.get_latest_version(subject))
    assert (err.http_status_code, err.error_code) == (404, 40401)
    client.register_schema(subject, record(A))
    err = error_of(lambda: client.get_version(subject, 7))
    assert (err.http_status_code, err.error_code) == (404, 40402)
    err = error_of(lambda: client.get_schema(987654))
    assert (err.http_status_code, err.error_code) == (404, 40403)


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "record", "name": "T"}',
        '{"type": "nosuchtype"}',
        "not json at all",
        '{"type": "record", "name": "T", "fields": [{"name": "a"}]}',
    ],
)
def test_malformed_schema_is_422_42201(client: SchemaRegistryClient, subject: str, text: str) -> None:
    err = error_of(lambda: client.register_schema(subject, Schema(text, "AVRO")))
    assert (err.http_status_code, err.error_code) == (422, 42201)
    assert err.error_message.startswith("Invalid schema")


# (mode, v1, v2, v2 accepted?) — adding a required field breaks BACKWARD, removing one breaks FORWARD.
MODE_CASES = [
    ("NONE", record(A), record(B_REQUIRED), True),
    ("BACKWARD", record(A), record(A, B_REQUIRED), False),
    ("BACKWARD", record(A, B_REQUIRED), record(A), True),
    ("FORWARD", record(A), record(A, B_REQUIRED), True),
    ("FORWARD", record(A, B_REQUIRED), record(A), False),
    ("FULL", record(A), record(A, B_OPTIONAL), True),
    ("FULL", record(A), record(A, B_REQUIRED), False),
    ("FULL", record(A, B_REQUIRED), record(A), False),
    ("BACKWARD_TRANSITIVE", record(A), record(A, B_OPTIONAL), True),
    ("FORWARD_TRANSITIVE", record(A, B_REQUIRED), record(A), False),
    ("FULL_TRANSITIVE", record(A), record(A, B_OPTIONAL), True),
]


@pytest.mark.parametrize(("mode", "v1", "v2", "accepted"), MODE_CASES)
def test_each_compatibility_mode(
    client: SchemaRegistryClient, subject: str, mode: str, v1: Schema, v2: Schema, accepted: bool
) -> None:
    client.set_compatibility(subject, mode)
    assert client.get_compatibility(subject) == mode
    client.register_schema(subject, v1)
    assert client.test_compatibility(subject, v2) is accepted
    if accepted:
        client.register_schema(subject, v2)
        assert client.get_latest_version(subject).version == 2
    else:
        assert error_of(lambda: client.register_schema(subject, v2)).http_status_code == 409


@pytest.mark.parametrize(("mode", "accepted"), [("BACKWARD", True), ("BACKWARD_TRANSITIVE", False)])
def test_transitive_checks_every_version(client: SchemaRegistryClient, subject: str, mode: str, accepted: bool) -> None:
    client.set_compatibility(subject, "NONE")
    client.register_schema(subject, record(A))
    client.register_schema(subject, record(A, B_DEFAULTED))
    client.set_compatibility(subject, mode)
    # reads v2 data (b present) but not v1 data (b missing, no default)
    v3 = record(A, B_REQUIRED)
    assert client.test_compatibility_all_versions(subject, v3) is accepted


def test_verbose_compatibility_names_the_field(
    platform_settings: Settings, client: SchemaRegistryClient, subject: str
) -> None:
    client.register_schema(subject, record(A))
    response = httpx.post(
        f"{platform_settings.schema_registry_url}/compatibility/subjects/{subject}/versions/latest?verbose=true",
        json={"schema": record(A, {"name": "venue", "type": "string"}).schema_str},
    )
    body = response.json()
    assert response.status_code == 200
    assert body["is_compatible"] is False
    assert "venue" in " ".join(body["messages"])


def test_subject_and_global_config(registry_process: RegistryProcess) -> None:
    client = registry_process.client()
    assert client.get_compatibility() == "BACKWARD"
    client.set_compatibility(level="FULL")
    assert client.get_compatibility() == "FULL"
    client.register_schema("s-value", record(A))
    err = error_of(lambda: client.get_compatibility("s-value"))
    assert err.error_code == 40408  # no subject-level config, as Confluent answers
    client.set_compatibility("s-value", "NONE")
    assert client.get_compatibility("s-value") == "NONE"
    assert client.delete_config("s-value").compatibility_level == "NONE"  # returns the old level
    assert error_of(lambda: client.get_compatibility("s-value")).error_code == 40408
    err = error_of(lambda: client.set_compatibility("s-value", "SIDEWAYS"))
    assert (err.http_status_code, err.error_code) == (422, 42203)


def test_soft_and_hard_delete(client: SchemaRegistryClient, fresh: SchemaRegistryClient, subject: str) -> None:
    client.register_schema(subject, record(A))
    client.register_schema(subject, record(A, B_OPTIONAL))
    err = error_of(lambda: client.delete_subject(subject, permanent=True))
    assert err.error_code == 40405  # must soft-delete first
    assert client.delete_version(subject, 2) == 2
    assert client.get_versions(subject) == [1]
    assert client.delete_subject(subject) == [1]
    assert subject not in client.get_subjects()
    assert subject in client.get_subjects(deleted=True)
    assert error_of(lambda: client.get_latest_version(subject)).error_code == 40401
    assert error_of(lambda: client.delete_subject(subject)).error_code == 40404
    # re-registering revives the subject with a new version number, same id
    old_id = client.lookup_schema(subject, record(A), deleted=True).schema_id
    # `fresh`, because confluent-kafka's client answers a known (subject, schema) from its cache
    assert fresh.register_schema(subject, record(A)) == old_id
    assert fresh.get_latest_version(subject).version == 3
    client.delete_subject(subject)
    assert client.delete_subject(subject, permanent=True) == [1, 2, 3]
    assert subject not in client.get_subjects(deleted=True)


def test_deleting_versions_follows_confluent(client: SchemaRegistryClient, subject: str) -> None:
    client.set_compatibility(subject, "NONE")
    client.register_schema(subject, record(A))
    client.register_schema(subject, record(B_REQUIRED))
    assert client.delete_version(subject, 2) == 2
    err = error_of(lambda: client.delete_version(subject, 2))  # already soft-deleted
    assert (err.http_status_code, err.error_code) == (404, 40406)
    assert error_of(lambda: client.delete_version(subject, "latest", permanent=True)).error_code == 40407
    assert client.get_compatibility(subject) == "NONE"
    assert client.delete_version(subject, 1) == 1  # the last live version: its config goes with it
    assert error_of(lambda: client.get_compatibility(subject)).error_code == 40408
    assert client.delete_version(subject, 2, permanent=True) == 2


def test_subject_soft_delete_drops_its_config(
    client: SchemaRegistryClient, fresh: SchemaRegistryClient, subject: str
) -> None:
    client.set_compatibility(subject, "NONE")
    client.register_schema(subject, record(A))
    client.delete_subject(subject)
    # re-registering is checked under the global level (BACKWARD), not the deleted subject's NONE
    fresh.register_schema(subject, record(A))
    assert error_of(lambda: fresh.register_schema(subject, record(A, B_REQUIRED))).http_status_code == 409


@pytest.mark.parametrize(
    ("path", "code"),
    [("versions/%C2%B2", 42202), ("versions/0", 42202), ("versions/99999999999", 42202), ("versions/x", 42202)],
)
def test_invalid_version_ids(
    platform_settings: Settings, client: SchemaRegistryClient, subject: str, path: str, code: int
) -> None:
    client.register_schema(subject, record(A))
    response = httpx.get(f"{platform_settings.schema_registry_url}/subjects/{subject}/{path}")
    assert (response.status_code, response.json()["error_code"]) == (422, code)


def test_invalid_default_is_rejected(client: SchemaRegistryClient, subject: str) -> None:
    bad = record({"name": "a", "type": "int", "default": "x"})
    err = error_of(lambda: client.register_schema(subject, bad))
    assert (err.http_status_code, err.error_code) == (422, 42201)
    assert "Default value" in err.error_message


def test_restart_keeps_schemas_and_ids(registry_process: RegistryProcess) -> None:
    client = registry_process.client()
    ids = {s: client.register_schema(s, record(A, name=n)) for s, n in [("x-value", "X"), ("y-value", "Y")]}
    client.set_compatibility("x-value", "FULL")
    registry_process.stop()
    registry_process.start()
    fresh = registry_process.client()
    assert sorted(fresh.get_subjects()) == ["x-value", "y-value"]
    for subject, schema_id in ids.items():
        assert fresh.get_latest_version(subject).schema_id == schema_id
        assert json.loads(fresh.get_schema(schema_id).schema_str)["fields"] == [A]
    assert fresh.get_compatibility("x-value") == "FULL"
    # the id sequence continues after a restart
    assert fresh.register_schema("z-value", record(A, name="Z")) == max(ids.values()) + 1


def test_avro_serializer_and_deserializer(
    client: SchemaRegistryClient, fresh: SchemaRegistryClient, subject: str
) -> None:
    topic = subject.removesuffix("-value")
    schema = json.dumps(
        {
            "type": "record",
            "name": "Px",
            "fields": [
                {"name": "symbol", "type": "string"},
                {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 8}},
            ],
        }
    )
    serializer = AvroSerializer(client, schema)  # auto-registers
    value = {"symbol": "BHP", "price": Decimal("45.12345678")}
    ctx = SerializationContext(topic, MessageField.VALUE)
    payload = serializer(value, ctx)
    assert payload is not None and payload[0] == 0  # Confluent wire format: magic byte, then the id
    registered_id = client.get_latest_version(subject).schema_id
    assert int.from_bytes(payload[1:5], "big") == registered_id
    assert AvroDeserializer(fresh)(payload, ctx) == value
    # a producer that must not register uses the latest registered version
    strict = AvroSerializer(client, schema, conf={"auto.register.schemas": False, "use.latest.version": True})
    assert strict(value, ctx) == payload


def test_metrics_and_health(platform_settings: Settings) -> None:
    base = platform_settings.schema_registry_url
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    httpx.get(f"{base}/subjects")
    metrics = httpx.get(f"{base}/metrics").text
    assert 'k2_registry_requests_total{method="GET",route="/subjects",status="200"}' in metrics
    assert "k2_registry_request_duration_seconds_bucket" in metrics


def test_unknown_route_is_json_error(platform_settings: Settings) -> None:
    response = httpx.get(f"{platform_settings.schema_registry_url}/nope")
    assert response.status_code == 404
    assert response.json()["error_code"] == 404


# --- basic auth (K2_SCHEMA_REGISTRY_BASIC_AUTH) ------------------------------------------------

USER, PASSWORD = "k2", "s3cret:with a colon"  # basic auth splits at the first colon: the password keeps it


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A registry of its own that requires credentials for changes."""
    with running_registry(tmp_path / "guarded", schema_registry_basic_auth=f"{USER}:{PASSWORD}") as process:
        yield process


def contents(url: str) -> dict[str, object]:
    """Everything a change could alter, read without credentials (reads are open)."""
    subjects = httpx.get(f"{url}/subjects", params={"deleted": "true"}).json()
    return {
        "subjects": httpx.get(f"{url}/subjects").json(),
        "with_deleted": subjects,
        "versions": {s: httpx.get(f"{url}/subjects/{s}/versions", params={"deleted": "true"}).json() for s in subjects},
        "config": httpx.get(f"{url}/config").json(),
        "subject_config": httpx.get(f"{url}/config/live-value").json(),
    }


CHANGES = [
    ("DELETE", "/subjects/live-value", None),
    ("DELETE", "/subjects/dead-value?permanent=true", None),
    ("DELETE", "/subjects/live-value/versions/1", None),
    ("PUT", "/config", {"compatibility": "NONE"}),
    ("PUT", "/config/live-value", {"compatibility": "FULL"}),
    ("DELETE", "/config", None),
    ("DELETE", "/config/live-value", None),
    ("POST", "/subjects/live-value/versions", {"schema": record(A, B_OPTIONAL).schema_str}),
]
BAD_CREDENTIALS = {
    "none": {},
    "wrong password": {"auth": (USER, "guess")},
    "wrong user": {"auth": ("admin", PASSWORD)},
    "password without its colon part": {"auth": (USER, PASSWORD.split(":")[0])},
    "not basic": {"headers": {"Authorization": "Bearer s3cret"}},
    "malformed": {"headers": {"Authorization": "Basic %%%"}},
}


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert response.headers["Content-Type"] == "application/vnd.schemaregistry.v1+json"
    body = response.json()
    assert body["error_code"] == 40101 and body["message"].startswith("Unauthorized: ")


def test_changes_need_the_credentials_and_nothing_changes_without(guarded: RegistryProcess) -> None:
    client = guarded.client()  # with the credentials
    client.register_schema("live-value", record(A))
    client.set_compatibility("live-value", "BACKWARD_TRANSITIVE")
    client.register_schema("dead-value", record(A))
    client.delete_subject("dead-value")  # soft-deleted: the next step would be a permanent delete
    before = contents(guarded.url)

    for how, credentials in BAD_CREDENTIALS.items():
        for method, path, body in CHANGES:
            response = httpx.request(method, guarded.url + path, json=body, **credentials)  # type: ignore[arg-type]
            try:
                assert_unauthorized(response)
            except AssertionError as exc:
                raise AssertionError(f"{method} {path} with credentials {how}: {exc}") from None
    assert contents(guarded.url) == before

    right = (USER, PASSWORD)
    assert httpx.put(f"{guarded.url}/config", json={"compatibility": "NONE"}, auth=right).status_code == 200
    assert httpx.delete(f"{guarded.url}/subjects/live-value", auth=right).json() == [1]
    assert httpx.delete(f"{guarded.url}/subjects/dead-value?permanent=true", auth=right).json() == [1]
    after = contents(guarded.url)
    assert (after["subjects"], after["with_deleted"], after["config"]) == (
        [],
        ["live-value"],
        {"compatibilityLevel": "NONE"},
    )


def test_reads_are_open_but_wrong_credentials_never_pass(guarded: RegistryProcess) -> None:
    schema_id = guarded.client().register_schema("live-value", record(A))
    for path in ("/subjects", f"/schemas/ids/{schema_id}", "/subjects/live-value/versions/latest", "/config"):
        assert httpx.get(guarded.url + path).status_code == 200, path
        assert httpx.get(guarded.url + path, auth=(USER, PASSWORD)).status_code == 200, path
        for credentials in BAD_CREDENTIALS.values():
            if credentials:
                assert_unauthorized(httpx.get(guarded.url + path, **credentials))  # type: ignore[arg-type]
    # a consumer's deserializer (reads only, no credentials) still decodes
    with SchemaRegistryClient({"url": guarded.url}) as anonymous:
        assert json.loads(anonymous.get_schema(schema_id).schema_str) == json.loads(record(A).schema_str)
        err = error_of(lambda: anonymous.register_schema("other-value", record(A)))
        assert (err.http_status_code, err.error_code) == (401, 40101)
    metrics = httpx.get(f"{guarded.url}/metrics").text
    assert 'k2_registry_requests_total{method="POST",route="/subjects/<subject>/versions",status="401"}' in metrics


def registry_row(settings: Settings) -> dict[str, object]:
    """The registry's line of `k2 status --json`, as a user runs it with ``settings``."""
    report = json.loads(run_k2(env_of(settings), "status", "--json").stdout)
    [row] = [c for c in report["components"] if c["name"] == "registry"]
    return row


def test_k2_clients_send_the_credentials(guarded: RegistryProcess, own_settings: Settings) -> None:
    """`k2 schemas register`, `k2 load` and `k2 status` against a registry that requires credentials."""
    settings = load_settings(
        **{**own_settings.model_dump(), "schema_registry_url": guarded.url,
           "schema_registry_basic_auth": f"{USER}:{PASSWORD}"}
    )  # fmt: skip
    without = load_settings(**{**settings.model_dump(), "schema_registry_basic_auth": None})
    refused = run_k2(env_of(without), "schemas", "register")
    [line] = refused.stderr.splitlines()
    assert refused.returncode == 1 and "K2_SCHEMA_REGISTRY_BASIC_AUTH is not set" in line, line
    assert "subjects missing" in str(registry_row(settings)["detail"])  # answers, but holds nothing of K2's

    registered = run_k2(env_of(settings), "schemas", "register", "--json")
    assert registered.returncode == 0, registered.stderr
    assert {s["subject"] for s in json.loads(registered.stdout)["schemas"]} == {
        r.subject(settings) for r in TOPIC_RECORD_TYPES
    }
    init_platform(settings)
    report = load(settings, str(REPO / "data" / "sample" / "k2" / "reference_data.csv"), "--format", "k2")
    assert report["ok"] and report["totals"]["rows_produced"] == 10

    row = registry_row(settings)
    assert row["healthy"] is True, row
    wrong = registry_row(load_settings(**{**settings.model_dump(), "schema_registry_basic_auth": f"{USER}:guess"}))
    assert wrong["healthy"] is False
    assert str(wrong["detail"]).endswith("wrong basic-auth credentials): K2_SCHEMA_REGISTRY_BASIC_AUTH is wrong")


@pytest.mark.parametrize("permanent", [False, True])
def test_status_names_a_subject_the_registry_lacks(
    guarded: RegistryProcess, own_settings: Settings, permanent: bool
) -> None:
    settings = load_settings(
        **{**own_settings.model_dump(), "schema_registry_url": guarded.url,
           "schema_registry_basic_auth": f"{USER}:{PASSWORD}"}
    )  # fmt: skip
    register_schemas(settings)
    assert registry_row(settings)["healthy"] is True
    trades = TRADE.subject(settings)
    with registry_client(settings) as client:
        client.delete_subject(trades)
        if permanent:
            client.delete_subject(trades, permanent=True)
    row = registry_row(settings)
    assert row["healthy"] is False
    assert row["detail"] == f"subjects missing: {trades}; run `k2 schemas register`"
    register_schemas(settings)
    assert registry_row(settings)["healthy"] is True


def test_gunicorn_servers_bind_no_shared_control_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A registry and an API served by gunicorn at once: neither binds gunicorn's per-user control
    socket (~/.gunicorn/gunicorn.ctl, where the last master to start would take over the first's)."""
    user_home = tmp_path / "user"
    user_home.mkdir()
    monkeypatch.setenv("HOME", str(user_home))  # the servers' ~ (they inherit this environment)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)  # else gunicorn puts the socket there
    registry_process = RegistryProcess(tmp_path / "registry-home")
    registry_process.start()
    request.addfinalizer(registry_process.stop)

    api_settings = load_settings(home=tmp_path / "api-home", api_port=free_port(), stream_metrics_port=0)
    api_settings.home.mkdir()
    with (api_settings.home / "api.log").open("wb") as log:
        api = subprocess.Popen([str(Path(sys.executable).with_name("k2")), "api"], env=env_of(api_settings),
                               stdout=log, stderr=log)  # fmt: skip

    def stop_api() -> None:
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)

    request.addfinalizer(stop_api)
    api_url = f"http://127.0.0.1:{api_settings.api_port}"
    poll(lambda: httpx.get(f"{api_url}/health", timeout=5).status_code in (200, 503), what="k2 api answering")

    assert httpx.get(f"{registry_process.url}/subjects").status_code == 200  # both serve
    assert httpx.get(f"{api_url}/health", timeout=5).status_code in (200, 503)
    assert not (user_home / ".gunicorn").exists()
    servers = [psutil.Process(api.pid), *(p for p in processes_of(registry_process.settings.home))]
    for proc in servers:
        sockets = [c.laddr for c in proc.net_connections(kind="unix")]
        assert not any(str(path).endswith("gunicorn.ctl") for path in sockets), (proc.name(), sockets)
