"""Confluent's compatibility modes mapped onto the avro package's reader/writer checker."""

from __future__ import annotations

import json

import avro.schema
import pytest

from k2_etl.schemas.compatibility import MODES, incompatibilities


def rec(*fields: dict[str, object]) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps({"type": "record", "name": "T", "fields": list(fields)}))


A = {"name": "a", "type": "int"}
B = {"name": "b", "type": "string"}
B_DEFAULT = {"name": "b", "type": "string", "default": ""}


def test_no_history_is_always_compatible() -> None:
    assert all(incompatibilities(mode, rec(A), []) == [] for mode in MODES)


def test_none_accepts_anything() -> None:
    assert incompatibilities("NONE", rec(B), [rec(A)]) == []


def test_backward_names_the_field_without_default() -> None:
    [problem] = incompatibilities("BACKWARD", rec(A, B), [rec(A)])
    assert "reader_field_missing_default_value" in problem
    assert "b" in problem and "/fields/1" in problem


def test_forward_and_full() -> None:
    assert incompatibilities("FORWARD", rec(A, B), [rec(A)]) == []
    assert incompatibilities("FORWARD", rec(A), [rec(A, B)]) != []
    assert incompatibilities("FULL", rec(A, B_DEFAULT), [rec(A)]) == []
    assert len(incompatibilities("FULL", rec(A, B), [rec(A)])) == 1


def test_transitive_checks_every_earlier_version() -> None:
    history = [rec(A), rec(A, B_DEFAULT)]
    candidate = rec(A, B)  # reads v2 data, not v1 data
    assert incompatibilities("BACKWARD", candidate, history) == []
    assert len(incompatibilities("BACKWARD_TRANSITIVE", candidate, history)) == 1
    forward_history = [rec(A, B), rec(A, B_DEFAULT)]
    assert incompatibilities("FORWARD", rec(A), forward_history) == []
    assert len(incompatibilities("FORWARD_TRANSITIVE", rec(A), forward_history)) == 1
    assert len(incompatibilities("FULL_TRANSITIVE", rec(A), forward_history)) == 1


def test_type_change_is_reported() -> None:
    [problem] = incompatibilities("BACKWARD", rec({"name": "a", "type": "string"}), [rec(A)])
    assert "type_mismatch" in problem


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="SIDEWAYS"):
        incompatibilities("SIDEWAYS", rec(A), [rec(A)])
