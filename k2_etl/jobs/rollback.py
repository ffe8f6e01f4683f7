"""Rollbacks (`k2 rollback`): undo a batch load.

A rollback undoes a batch load (:func:`~k2_etl.lake.replace.remove_load`): in every table it
produced into, the rows it landed go, and what anything else landed since stays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyiceberg.table import Table

from k2_etl.config import Settings
from k2_etl.errors import ConfigError, K2Error
from k2_etl.jobs.quality import read_back
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.commits import committed_offsets, recorded_topic_ids
from k2_etl.lake.manifest import ROLLED_BACK, Manifest
from k2_etl.lake.replace import (
    RollbackReport,
    remove_load,
    snapshot_before,
)
from k2_etl.lake.tables import tables_by_topic


def rollback(
    settings: Settings, load_id: str, *, tables: Sequence[str] | None = None, dry_run: bool = False
) -> list[RollbackReport]:
    """Undo batch load ``load_id`` in every table it produced into (``tables``: only these).

    Refused until the consumer has landed all of it (a rollback of half a load would let the
    rest land after it). The load is recorded as ``rolled_back`` in the manifest first, so that
    replays leave its records out and loading the same file again needs ``--force``. Records of
    later loads that the consumer dropped as duplicates of the load's are put back.
    """
    catalog = open_catalog(settings)
    manifest = Manifest(catalog, settings.namespace)
    history = manifest.history(load_id).get(load_id)
    if not history:
        raise ConfigError(f"no load {load_id!r} in the load manifest (`k2 load --json` prints each file's load_id)")
    by_topic = tables_by_topic(settings)
    names = {d.name for d in by_topic.values()}
    unknown = sorted(set(tables or ()) - names)
    if unknown:
        raise ConfigError(f"unknown table(s) {', '.join(unknown)}; choose from {', '.join(sorted(names))}")
    spans: dict[str, dict[int, tuple[int, int]]] = {}
    for entry in history:
        for topic, partitions in entry.offsets.items():
            for partition, (first, last) in partitions.items():
                known = spans.setdefault(topic, {}).get(int(partition), (first, last))
                spans[topic][int(partition)] = (min(known[0], first), max(known[1], last))
    # A load that never completed records no offsets: its rows are found by load id in every table.
    chosen = [(topic, d) for topic, d in sorted(by_topic.items()) if (topic in spans or not spans)
              and (not tables or d.name in tables)]  # fmt: skip
    lives = {topic: life for entry in history for topic, life in entry.topic_ids.items()}
    loaded: dict[str, Table] = {}
    ended: set[str] = set()  # topics created again since the load: its offsets say nothing about the tables now
    for topic, definition in chosen:
        table = loaded[topic] = catalog.load_table((settings.namespace, definition.name))
        now = recorded_topic_ids(table, settings.stream_group).get(topic)
        if lives.get(topic) is not None and now is not None and now != lives[topic]:
            ended.add(topic)
            continue
        landed = committed_offsets(table, settings.stream_group).get(topic, {})
        behind = {p: last for p, (_, last) in spans.get(topic, {}).items() if landed.get(p, 0) <= last}
        if behind:
            raise K2Error(f"load {load_id} has not landed in {definition.name} yet ({topic} partitions "
                          f"{sorted(behind)}); wait for the consumer (k2 status), then roll back")  # fmt: skip
    restore = _later_records(settings, manifest, history, spans)
    if not dry_run:
        manifest.append(dataclasses.replace(history[-1], status=ROLLED_BACK, finished_at=datetime.now(UTC),
                                            message="rolled back by k2 rollback"))  # fmt: skip
    reports = []
    for topic, definition in chosen:
        table = loaded[topic]
        firsts = {p: first for p, (first, _) in spans.get(topic, {}).items()}
        before = snapshot_before(table, settings.stream_group, topic, firsts) if firsts and topic not in ended else None
        rows = _as_rows(restore.get(topic, []), table.schema().as_arrow())
        reports.append(remove_load(table, definition, load_id, restore=rows, before=before, dry_run=dry_run))
    return reports


def _later_records(
    settings: Settings, manifest: Manifest, history: list[Any], spans: dict[str, dict[int, tuple[int, int]]]
) -> dict[str, list[dict[str, Any]]]:
    """The records of completed loads after this one, of the same trading date (ids include the
    event time, so only they can share its ids), by topic: the consumer dropped those whose id the
    load had landed first, and a rollback puts them back."""
    first = history[0]
    later = [e for e in manifest.after(first.started_at) if e.load_id != first.load_id and e.status == "completed"
             and (e.load_date is None or first.load_date is None or e.load_date == first.load_date)
             and any(topic in spans for topic in e.offsets)]  # fmt: skip
    if not later:
        return {}
    wanted = {e.load_id for e in later}
    records = read_back(settings, [{t: o for t, o in e.offsets.items() if t in spans} for e in later])
    return {topic: [r for r in found if r.get("load_id") in wanted] for topic, found in records.items()}


def _as_rows(records: list[dict[str, Any]], target: pa.Schema) -> pa.Table:
    names = set(target.names)
    return pa.Table.from_pylist([{k: v for k, v in r.items() if k in names} for r in records], schema=target)
