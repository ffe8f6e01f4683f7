"""`k2 schemas register|check` against the local registry, and what an incompatible change reports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from k2_etl.config import Settings, load_settings
from k2_etl.errors import SchemaError, UnavailableError
from k2_etl.schemas import QUOTE, TOPIC_RECORD_TYPES, TRADE, RecordType
from k2_etl.schemas.registration import check_schemas, register_schemas
from tests.helpers import env_of, free_port, k2_env, run_k2


@dataclass(frozen=True)
class _ChangedTrade(RecordType):
    """trade.avsc with a new required field (no default): breaks BACKWARD compatibility."""

    @property
    def schema_str(self) -> str:
        schema = json.loads(TRADE.schema_str)
        schema["fields"].append({"name": "settlement_venue", "type": "string"})
        return json.dumps(schema)


def test_check_then_register_is_idempotent(own_settings: Settings) -> None:
    env = env_of(own_settings)
    check = run_k2(env, "schemas", "check", "--json")
    assert check.returncode == 0, check.stderr
    assert {s["state"] for s in json.loads(check.stdout)["schemas"]} == {"new"}

    first = run_k2(env, "schemas", "register", "--json")
    assert first.returncode == 0, first.stderr
    registered = json.loads(first.stdout)["schemas"]
    assert {s["subject"] for s in registered} == {r.subject(own_settings) for r in TOPIC_RECORD_TYPES}
    assert all(s["changed"] and s["version"] == 1 for s in registered)

    second = run_k2(env, "schemas", "register")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already registered") == len(TOPIC_RECORD_TYPES)

    with SchemaRegistryClient({"url": own_settings.schema_registry_url}) as client:
        for s in registered:
            latest = client.get_latest_version(s["subject"])
            assert (latest.schema_id, latest.version) == (s["schema_id"], 1)


def test_incompatible_change_names_the_field_and_registers_nothing(own_settings: Settings) -> None:
    register_schemas(own_settings, [TRADE])
    changed = _ChangedTrade("trade", "trades")
    with pytest.raises(SchemaError) as info:
        register_schemas(own_settings, [QUOTE, changed])
    message = str(info.value)
    assert "settlement_venue" in message and own_settings.topic_prefix + "trades-value" in message
    assert "nothing was registered" in message
    [quote, trade] = check_schemas(own_settings, [QUOTE, changed])
    assert quote.state == "new"  # all or nothing: the compatible one was not registered either
    assert trade.state == "incompatible"


def test_registry_unreachable(tmp_path: Path) -> None:
    env = k2_env(tmp_path, schema_registry_url=f"http://127.0.0.1:{free_port()}")
    result = run_k2(env, "schemas", "check")
    assert result.returncode == 3
    [line] = result.stderr.strip().splitlines()
    assert "K2_SCHEMA_REGISTRY_URL" in line and "unreachable" in line
    with pytest.raises(UnavailableError):
        check_schemas(load_settings(home=tmp_path, schema_registry_url=env["K2_SCHEMA_REGISTRY_URL"]))
