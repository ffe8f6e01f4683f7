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
import pyarrow.compute as pc
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, GreaterThanOrEqual, LessThan
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation

MAX_SCOPES = 4  # days per table kept in memory (a day of 2M trades: 32 MB)
WHOLE_TABLE = np.iinfo(np.int32).min  # the scope of tables (and rows) not deduplicated per day
EPOCH = date(1970, 1, 1)

_HEX = np.full(256, 255, dtype=np.uint8)  # hex digit -> value; 255: not a hex digit
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def keys(ids: Sequence[str]) -> np.ndarray:
    """16-byte keys: the bytes of MD5 hex ids (K2's ids always are), else the MD5 of the id's text.

    One width for every key, so an id is found whatever else its batch holds.
    """
    return keys_of(pa.array(list(ids), pa.string()))


def keys_of(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """:func:`keys` of an Arrow string column, vectorized for the usual case (all 32 hex digits)."""
    column = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    n = len(column)
    if n == 0:
        return np.empty(0, dtype="S16")
    column = column.cast(pa.large_binary())
    if column.null_count == 0:
        offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset : column.offset + n + 1]
        if np.all(np.diff(offsets) == 32):
            data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
            nibbles = _HEX[data].reshape(n, 32)
            if not (nibbles == 255).any():
                packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
                return np.ascontiguousarray(packed).view("S16").ravel()
    return np.array([_key(i) for i in column.cast(pa.string()).to_pylist()], dtype="S16")


def _key(id_: str) -> bytes:
    if len(id_) == 32:
        try:
            return bytes.fromhex(id_)
        except ValueError:
            pass
    return hashlib.md5(id_.encode(), usedforsecurity=False).digest()


class IdIndex:
    """The ids one table holds, by scope (a day number since 1970, or :data:`WHOLE_TABLE`)."""

    def __init__(self, table: Table, id_column: str, day_column: str | None) -> None:
        self.table, self.id_column, self.day_column = table, id_column, day_column
        self._scopes: OrderedDict[int, np.ndarray] = OrderedDict()
        self._synced: int | None = None  # the table's snapshot at the last sync

    def clear(self) -> None:
        self._scopes.clear()

    def sync(self) -> None:
        """Forget the ids held if the table may have lost rows since the last sync (call it after
        refreshing the table): any snapshot but an append may remove ids (a rollback, a replay,
        another engine's delete; compaction too, though it only drops repeats), and a record sent
        again after that must land again. Appends, this consumer's included, keep the ids."""
        current = self.table.current_snapshot()
        known, self._synced = self._synced, current.snapshot_id if current else None
        if not self._scopes or known is None:
            return
        snapshot = current
        while snapshot is not None and snapshot.snapshot_id != known:
            if snapshot.summary is None or snapshot.summary.operation != Operation.APPEND:
                self.clear()
                return
            snapshot = self.table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
        if snapshot is None:  # the last snapshot seen left the lineage (expired, or rolled back): start over
            self.clear()

    def fresh(self, batch: pa.Table) -> np.ndarray:
        """Which rows have an id neither the table nor an earlier row of ``batch`` has (a boolean mask)."""
        keep = np.zeros(batch.num_rows, dtype=bool)
        if batch.num_rows == 0:
            return keep
        row_keys = keys_of(batch.column(self.id_column))
        scopes = self._scopes_of(batch)
        for scope in _in_order_of_appearance(scopes):
            where = np.flatnonzero(scopes == scope)
            _, first = np.unique(row_keys[where], return_index=True)  # the first row of each id in the batch
            candidates = where[np.sort(first)]
            wanted = row_keys[candidates]
            held = self._held(int(scope))
            at = np.minimum(np.searchsorted(held, wanted), max(len(held) - 1, 0))
            known = (held[at] == wanted) if len(held) else np.zeros(len(wanted), dtype=bool)
            keep[candidates[~known]] = True
        return keep

    def add(self, batch: pa.Table) -> None:
        """Record ids just appended (the scopes already loaded; others load them from the table)."""
        if batch.num_rows == 0:
            return
        row_keys = keys_of(batch.column(self.id_column))
        scopes = self._scopes_of(batch)
        for scope in np.unique(scopes).tolist():
            if scope in self._scopes:
                added = row_keys[scopes == scope]
                self._scopes[scope] = np.sort(np.concatenate([self._scopes[scope], added]))

    def _scopes_of(self, batch: pa.Table) -> np.ndarray:
        if self.day_column is None:
            return np.full(batch.num_rows, WHOLE_TABLE, dtype=np.int32)
        days = pc.cast(batch.column(self.day_column), pa.date32()).cast(pa.int32())  # UTC days: the partitions
        return pc.fill_null(days, WHOLE_TABLE).to_numpy()

    def _held(self, scope: int) -> np.ndarray:
        if scope in self._scopes:
            self._scopes.move_to_end(scope)
            return self._scopes[scope]
        row_filter: BooleanExpression = AlwaysTrue()
        if scope != WHOLE_TABLE and self.day_column is not None:
            day = EPOCH + timedelta(days=scope)
            start = datetime.combine(day, time()).isoformat() + "+00:00"
            end = datetime.combine(day + timedelta(days=1), time()).isoformat() + "+00:00"
            # pyiceberg's signature is (term, literal); its pydantic models confuse mypy
            after = GreaterThanOrEqual(self.day_column, start)  # type: ignore[call-arg,arg-type]
            before = LessThan(self.day_column, end)  # type: ignore[call-arg,arg-type]
            row_filter = And(after, before)
        ids = self.table.scan(row_filter=row_filter, selected_fields=(self.id_column,)).to_arrow()
        held = np.sort(keys_of(ids.column(self.id_column)))
        self._scopes[scope] = held
        while len(self._scopes) > MAX_SCOPES:
            self._scopes.popitem(last=False)
        return held


def _in_order_of_appearance(values: np.ndarray) -> np.ndarray:
    unique, first = np.unique(values, return_index=True)
    return unique[np.argsort(first)]
