"""Schema compatibility as Confluent defines its modes, decided by the ``avro`` package.

The reader/writer rules themselves come from ``avro.compatibility`` (Apache
Avro's port of the Java checker); this module only maps Confluent's modes onto
which pairs to check, and turns the checker's findings into messages that name
the field. Both the local registry and ``k2 schemas`` use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import Schema

MODES = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)


T = TypeVar("T")


def versions_to_check(mode: str, versions: Sequence[T]) -> list[T]:
    """The earlier versions (oldest first) a new one is checked against under ``mode``."""
    mode = mode.upper()
    if mode not in MODES:
        raise ValueError(f"unknown compatibility mode {mode!r}")
    if mode == "NONE" or not versions:
        return []
    return list(versions) if mode.endswith("_TRANSITIVE") else [versions[-1]]


def _describe(reader: Schema, writer: Schema, direction: str) -> list[str]:
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = ", ".join(sorted({i.value for i in result.incompatibilities})) or "incompatible"
    where = ", ".join(sorted(result.locations))
    what = ", ".join(sorted(str(m) for m in result.messages))
    return [f"{direction}: {kinds} at {where} ({what})"]


def incompatibilities(mode: str, new: Schema, existing: Sequence[Schema]) -> list[str]:
    """Why ``new`` may not follow ``existing`` (oldest first) under ``mode``; empty if it may.

    BACKWARD: the new schema can read data written with the previous one.
    FORWARD: the previous schema can read data written with the new one.
    FULL: both. ``*_TRANSITIVE``: against every earlier version, not just the latest.
    """
    mode = mode.upper()
    problems: list[str] = []
    for old in versions_to_check(mode, existing):
        if mode.startswith(("BACKWARD", "FULL")):
            problems += _describe(new, old, "new schema cannot read data written with an earlier one")
        if mode.startswith(("FORWARD", "FULL")):
            problems += _describe(old, new, "an earlier schema cannot read data written with the new one")
    return problems
