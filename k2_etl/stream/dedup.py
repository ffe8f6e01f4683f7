"""Deduplication by record id: what keeps re-sent records out of what queries see.

Records arrive more than once by design: `k2 load --force`, a crashed load run
again, the dead letters' at-least-once delivery. Each record carries a
deterministic id (``event_id``; ``reject_id`` for rejects), and a table's
append only takes ids the table does not hold yet.

The ids a table holds are loaded lazily, per scope, from the table itself
(only the id column, only the scope's partitions): per UTC day of
``event_time`` for trades and quotes (their partitions), the whole table for
the small ones. Each scope is a sorted array of 16-byte keys (the ids are
MD5 hex: their bytes; any other id: its MD5), so membership is a binary search and a day of 2M trades costs
32 MB; at most :data:`MAX_SCOPES` scopes per table stay in memory.

Why this is exact across processes: records with the same id have the same
key (the symbol), hence the same Kafka partition, hence the same consumer;
a consumer drops its index whenever its partitions change, and reloads it
from the table, which then includes what the previous owner landed.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta

import numpy as np
import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, GreaterThanOrEqual, LessThan
from pyiceberg.table import Table

MAX_SCOPES = 4  # days per table kept in memory (a day of 2M trades: 32 MB)
WHOLE_TABLE = date.min  # the scope of tables that are not deduplicated per day


def keys(ids: Sequence[str]) -> np.ndarray:
    """16-byte keys: the bytes of MD5 hex ids (K2's ids always are), else the MD5 of the id's text.

    One width for every key, so an id is found whatever else its batch holds.
    """
    if ids and all(len(i) == 32 for i in ids):
        try:
            return np.frombuffer(bytes.fromhex("".join(ids)), dtype="S16").copy()
        except ValueError:
            pass
    return np.array([_key(i) for i in ids], dtype="S16") if ids else np.empty(0, dtype="S16")


def _key(id_: str) -> bytes:
    if len(id_) == 32:
        try:
            return bytes.fromhex(id_)
        except ValueError:
            pass
    return hashlib.md5(id_.encode(), usedforsecurity=False).digest()


class IdIndex:
    """The ids one table holds, by scope."""

    def __init__(self, table: Table, id_column: str, day_column: str | None) -> None:
        self.table, self.id_column, self.day_column = table, id_column, day_column
        self._scopes: OrderedDict[date, np.ndarray] = OrderedDict()

    def clear(self) -> None:
        self._scopes.clear()

    def fresh(self, batch: pa.Table) -> np.ndarray:
        """Which rows have an id neither the table nor an earlier row of ``batch`` has (a boolean mask)."""
        if batch.num_rows == 0:
            return np.zeros(0, dtype=bool)
        row_keys = keys(batch.column(self.id_column).to_pylist())
        scopes = self._scopes_of(batch)
        keep = np.zeros(batch.num_rows, dtype=bool)
        for scope in dict.fromkeys(scopes):  # each scope once, in order of appearance
            where = np.flatnonzero(np.fromiter((s == scope for s in scopes), dtype=bool, count=len(scopes)))
            _, first = np.unique(row_keys[where], return_index=True)  # the first row of each id in the batch
            candidates = where[np.sort(first)]
            wanted = row_keys[candidates]
            held = self._held(scope)
            at = np.minimum(np.searchsorted(held, wanted), max(len(held) - 1, 0))
            known = (held[at] == wanted) if len(held) else np.zeros(len(wanted), dtype=bool)
            keep[candidates[~known]] = True
        return keep

    def add(self, batch: pa.Table) -> None:
        """Record ids just appended (the scopes already loaded; others load them from the table)."""
        ids = batch.column(self.id_column).to_pylist()
        by_scope: dict[date, list[str]] = {}
        for scope, id_ in zip(self._scopes_of(batch), ids, strict=True):
            by_scope.setdefault(scope, []).append(id_)
        for scope, scoped in by_scope.items():
            if scope in self._scopes:
                self._scopes[scope] = np.sort(np.concatenate([self._scopes[scope], keys(scoped)]))

    def _scopes_of(self, batch: pa.Table) -> list[date]:
        if self.day_column is None:
            return [WHOLE_TABLE] * batch.num_rows
        days = batch.column(self.day_column).cast(pa.date32()).to_pylist()  # UTC days: the partitions
        return [d if d is not None else WHOLE_TABLE for d in days]

    def _held(self, scope: date) -> np.ndarray:
        if scope in self._scopes:
            self._scopes.move_to_end(scope)
            return self._scopes[scope]
        row_filter: BooleanExpression = AlwaysTrue()
        if scope != WHOLE_TABLE and self.day_column is not None:
            start = datetime.combine(scope, time()).isoformat() + "+00:00"
            end = datetime.combine(scope + timedelta(days=1), time()).isoformat() + "+00:00"
            # pyiceberg's signature is (term, literal); its pydantic models confuse mypy
            after = GreaterThanOrEqual(self.day_column, start)  # type: ignore[call-arg,arg-type]
            before = LessThan(self.day_column, end)  # type: ignore[call-arg,arg-type]
            row_filter = And(after, before)
        ids = self.table.scan(row_filter=row_filter, selected_fields=(self.id_column,)).to_arrow()
        held = np.sort(keys(ids.column(self.id_column).to_pylist()))
        self._scopes[scope] = held
        while len(self._scopes) > MAX_SCOPES:
            self._scopes.popitem(last=False)
        return held
