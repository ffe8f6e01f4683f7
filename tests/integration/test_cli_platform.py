"""`k2 up`, `k2 status`, `k2 down` run as a user runs them: subprocesses on a temp K2_HOME."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from k2_etl.config import load_settings
from k2_etl.local.components import broker, port_holder
from k2_etl.local.supervisor import start, status, stop
from tests.helpers import free_port, local_platform_env, poll, processes_of, run_k2


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = local_platform_env(tmp_path / "home", airflow_enabled="false")  # (test_airflow_up.py runs Airflow)
    yield env
    run_k2(env, "down")  # whatever a test left running


def running(pid: object) -> bool:
    """Alive and not a zombie (an exited process its new parent has not reaped yet)."""
    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE  # type: ignore[call-overload]
    except psutil.NoSuchProcess:
        return False


def status_json(env: dict[str, str]) -> dict[str, object]:
    result = run_k2(env, "status", "--json")
    return json.loads(result.stdout)


def components(report: dict[str, object]) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in report["components"]}  # type: ignore[union-attr,index]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_up_status_down_lifecycle(env: dict[str, str]) -> None:
    first = run_k2(env, "up")
    assert first.returncode == 0, first.stderr + first.stdout
    assert "broker: started" in first.stdout and "registry: started" in first.stdout
    assert "consumer: started" in first.stdout and "api: started" in first.stdout
    assert first.stdout.index("init:") < first.stdout.index("consumer: started")  # it needs the tables
    assert env["K2_KAFKA_BOOTSTRAP"] in first.stdout  # where it listens

    report = status_json(env)
    assert report["healthy"] is True
    parts = components(report)
    started = ("broker", "registry", "pushgateway", "consumer", "api", "monitor", "prometheus")
    assert set(parts) == {*started, "catalog", "landed"}
    assert {parts[n]["state"] for n in started} == {"running"}
    assert "group k2-stream: landed 0" in str(parts["consumer"]["detail"])
    assert str(parts["api"]["detail"]).startswith("healthy")  # catalog, query engine and consumer all up
    assert "firing: none" in str(parts["prometheus"]["detail"])  # K2's rules loaded, a healthy platform
    pids = {name: parts[name]["pid"] for name in started}
    assert all(running(pid) for pid in pids.values())

    again = run_k2(env, "up")  # harmless when up
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert {n: components(status_json(env))[n]["pid"] for n in pids} == pids

    down = run_k2(env, "down")
    assert down.returncode == 0
    assert "registry: stopped" in down.stdout and "broker: stopped" in down.stdout
    assert "consumer: stopped" in down.stdout and "api: stopped" in down.stdout
    assert "prometheus: stopped" in down.stdout and "monitor: stopped" in down.stdout
    assert not any(running(pid) for pid in pids.values())
    assert not list((Path(env["K2_HOME"]) / "run").glob("*.pid"))

    stopped = run_k2(env, "status", "--json")
    assert stopped.returncode == 1
    assert json.loads(stopped.stdout)["healthy"] is False

    twice = run_k2(env, "down")  # already down: fine
    assert twice.returncode == 0
    assert "broker: not running" in twice.stdout


def test_port_already_taken(env: dict[str, str]) -> None:
    port = int(env["K2_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = run_k2(env, "up")
    assert_one_line_error(result, "broker", f"127.0.0.1:{port}", "already in use", "K2_KAFKA_BOOTSTRAP")
    assert not (Path(env["K2_HOME"]) / "run" / "broker.pid").exists()


def test_component_dying_at_start(env: dict[str, str]) -> None:
    env["K2_REGISTRY_DB_URL"] = f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/none"  # nothing listens
    result = run_k2(env, "up")
    assert_one_line_error(result, "registry", "exited with code", "registry.log")
    assert not (Path(env["K2_HOME"]) / "run" / "registry.pid").exists()


def test_stale_pid_file(env: dict[str, str]) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = Path(env["K2_HOME"]) / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "broker.pid").write_text(json.dumps({"pid": dead.pid, "create_time": 1.0}))

    status = run_k2(env, "status", "--json")
    broker = components(json.loads(status.stdout))["broker"]
    assert broker["state"] == "stale"
    assert "stale pid file" in str(broker["detail"])

    up = run_k2(env, "up")
    assert up.returncode == 0, up.stderr
    assert "broker: removed stale pid file" in up.stdout
    assert components(status_json(env))["broker"]["state"] == "running"


def test_pid_file_naming_a_live_foreign_process(env: dict[str, str]) -> None:
    """A pid file whose pid now belongs to someone else must never make k2 signal that process."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        run_dir = Path(env["K2_HOME"]) / "run"
        run_dir.mkdir(parents=True)
        pid_file = run_dir / "broker.pid"
        pid_file.write_text(json.dumps({"pid": bystander.pid, "create_time": 1.0, "exe": "/no/tansu"}))
        assert components(status_json(env))["broker"]["state"] == "stale"
        down = run_k2(env, "down")
        assert "removed stale pid file" in down.stdout
        assert bystander.poll() is None  # still alive: not ours, not touched
        assert not pid_file.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_concurrent_up_starts_one_of_each(env: dict[str, str]) -> None:
    k2 = Path(sys.executable).with_name("k2")
    runs = [
        subprocess.Popen([str(k2), "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    joined = "".join(out for out, _ in outputs)
    assert joined.count("broker: started") == 1 and joined.count("broker: already running") == 1
    parts = components(status_json(env))
    broker_pid = parts["broker"]["pid"]
    assert parts["broker"]["state"] == "running" and running(broker_pid)
    assert run_k2(env, "down").returncode == 0
    assert not running(broker_pid)


@pytest.mark.parametrize(
    ("setting", "value", "needles"),
    [
        ("K2_API_PORT", "eighty", ("K2_API_PORT", "'eighty'", "integer")),
        ("K2_API_PORT", "70000", ("K2_API_PORT", "70000", "65535")),
        ("K2_CATALOG_URI", "oracle://db/cat", ("K2_CATALOG_URI", "oracle://db/cat", "unknown scheme")),
        ("K2_KAFKA_BOOTSTRAP", "localhost", ("K2_KAFKA_BOOTSTRAP", "host:port")),
        ("K2_SCHEMA_REGISTRY_URL", "registry:8081", ("K2_SCHEMA_REGISTRY_URL", "http")),
        ("K2_SCHEMA_REGISTRY_BASIC_AUTH", "nouser", ("K2_SCHEMA_REGISTRY_BASIC_AUTH", "user:password")),
        ("K2_REGISTRY_DB_URL", "garbage", ("K2_REGISTRY_DB_URL", "SQLAlchemy URL")),
        ("K2_START_TIMEOUT_SECONDS", "inf", ("K2_START_TIMEOUT_SECONDS",)),
        ("K2_KAFKA_CONFIG", '{"a": {"b": 1}}', ("K2_KAFKA_CONFIG", "plain values")),
    ],
)
def test_malformed_setting_is_one_line(env: dict[str, str], setting: str, value: str, needles: tuple[str, ...]) -> None:
    env[setting] = value
    result = run_k2(env, "status")
    assert_one_line_error(result, *needles)
    assert result.returncode == 2


def test_home_that_is_a_file(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    env["K2_HOME"] = str(tmp_path / "afile")
    for command in ("status", "up", "down"):
        assert_one_line_error(run_k2(env, command), "K2_HOME")


def test_unknown_kafka_property_is_a_setting_error(env: dict[str, str]) -> None:
    env["K2_KAFKA_CONFIG"] = '{"no.such.property": "1"}'
    result = run_k2(env, "init")
    assert_one_line_error(result, "K2_KAFKA_CONFIG", "no.such.property")
    assert result.returncode == 2


def test_config_masks_secrets(env: dict[str, str], tmp_path: Path) -> None:
    env["K2_S3_SECRET_ACCESS_KEY"] = "hunter2"
    env["K2_CATALOG_URI"] = "postgresql+psycopg2://k2:s3cret@db:5432/k2"
    (tmp_path / "k2.toml").write_text('namespace = "from_file"\napi_port = 9000\n')
    env["K2_API_PORT"] = "9100"  # environment beats the file
    result = run_k2(env, "config", "--json", cwd=tmp_path)
    values = json.loads(result.stdout)
    assert values["K2_NAMESPACE"] == "from_file"
    assert values["K2_API_PORT"] == 9100
    assert "hunter2" not in result.stdout and "s3cret" not in result.stdout
    assert values["K2_CATALOG_URI"] == "postgresql+psycopg2://k2:***@db:5432/k2"


def test_status_on_a_fresh_home_creates_nothing(env: dict[str, str]) -> None:
    result = run_k2(env, "status", "--json")
    assert result.returncode == 1
    catalog = components(json.loads(result.stdout))["catalog"]
    assert catalog["healthy"] is False and "run `k2 init`" in str(catalog["detail"])
    assert not Path(env["K2_HOME"]).exists()


def test_up_passes_list_and_secret_settings_to_its_components(env: dict[str, str]) -> None:
    """Settings of every kind reach the processes `k2 up` starts: a list of secrets (K2_API_KEYS) and
    a secret (K2_SCHEMA_REGISTRY_BASIC_AUTH, which the local registry then requires for changes)."""
    env["K2_API_KEYS"] = '["k1", "k,2"]'
    env["K2_SCHEMA_REGISTRY_BASIC_AUTH"] = "k2:s3 cret"
    up = run_k2(env, "up")
    assert up.returncode == 0, up.stderr + up.stdout
    trades = "k2.trades-value"
    assert "schemas: registered" in up.stdout and trades in up.stdout
    report = status_json(env)
    assert report["healthy"] is True, report

    api = f"http://127.0.0.1:{env['K2_API_PORT']}"
    assert httpx.get(f"{api}/v1/symbols").status_code == 401
    assert httpx.get(f"{api}/v1/symbols", headers={"X-API-Key": "k,2"}).status_code == 200

    registry = env["K2_SCHEMA_REGISTRY_URL"]
    for permanent in ("false", "true"):
        refused = httpx.delete(f"{registry}/subjects/{trades}", params={"permanent": permanent})
        assert refused.status_code == 401 and refused.json()["error_code"] == 40101
    assert httpx.put(f"{registry}/config", json={"compatibility": "NONE"}).status_code == 401
    assert httpx.delete(f"{registry}/subjects/{trades}", auth=("k2", "wrong")).status_code == 401
    assert components(status_json(env))["registry"]["healthy"] is True  # nothing was deleted

    assert httpx.delete(f"{registry}/subjects/{trades}", auth=("k2", "s3 cret")).status_code == 200
    after = run_k2(env, "status", "--json")
    assert after.returncode == 1
    registry_row = components(json.loads(after.stdout))["registry"]
    assert registry_row["healthy"] is False
    assert registry_row["detail"] == f"subjects missing: {trades}; run `k2 schemas register`"
    again = run_k2(env, "up")  # registers it again
    assert again.returncode == 0, again.stderr + again.stdout
    assert f"schemas: registered {trades}" in again.stdout


@pytest.mark.parametrize("broker_before", [False, True], ids=["fresh", "broker-running-before"])
def test_failed_up_stops_what_it_started(env: dict[str, str], broker_before: bool) -> None:
    """The API cannot start (its port is taken): `k2 up` fails with one line and stops the broker,
    registry and consumer it started; a component that ran before it stays."""
    home = Path(env["K2_HOME"]).resolve()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if name.startswith("K2_"):
                patch.setenv(name, value)
        settings = load_settings()
    before = broker(settings)
    expected: set[int | None] = set()  # what may be left: the broker that ran before, if one did
    if broker_before:
        assert start(settings, before, print)
        expected = {status(settings, before).pid}
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", settings.api_port))
            squatter.listen()
            result = run_k2(env, "up")
        assert_one_line_error(result, "api", f"127.0.0.1:{settings.api_port}", "already in use", "K2_API_PORT")
        assert "consumer: started" in result.stdout  # the last component before the API did start

        # (polled: a SIGKILLed worker may take a moment to die after `k2 up` returned)
        poll(lambda: {p.pid for p in processes_of(home)} == expected, timeout=10, what=f"only {expected} left")
        if broker_before:
            assert port_holder(*settings.kafka_address) is not None
            assert "broker: already running" in result.stdout and "broker: stopped" not in result.stdout
            assert sorted(p.name for p in (home / "run").glob("*.pid")) == ["broker.pid"]
        else:
            assert port_holder(*settings.kafka_address) is None
            assert "broker: stopped" in result.stdout
            assert not list((home / "run").glob("*.pid"))
        for name, port in [("registry", settings.registry_address[1]), ("consumer", settings.stream_metrics_port)]:
            assert f"{name}: stopped" in result.stdout
            assert port_holder("127.0.0.1", port) is None, name
    finally:
        if broker_before:
            stop(settings, before, print)
