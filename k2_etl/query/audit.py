"""What happened to the data: sequence anomalies, the quarantine of rejected rows, and a table's
snapshots (its commits, for time travel and audits).

The two log tables page like trades (a day at a time, keyset by their time and id); the snapshot
listing pages newest first over the table's metadata, with no data files read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from k2_etl.errors import QueryError
from k2_etl.query import sql
from k2_etl.query.cursor import Position, decode_cursor, encode_cursor, resume
from k2_etl.query.paging import Result, check_limit, check_times, keyset
from k2_etl.query.planning import EPOCH, Chunk, Planner, micros
from k2_etl.query.runner import Runner
from k2_etl.query.tables import TableCache

SNAPSHOT_COLUMNS = pa.schema(
    [("snapshot_id", pa.int64()), ("parent_snapshot_id", pa.int64()), ("committed_at", pa.timestamp("us", tz="UTC")),
     ("operation", pa.string()), ("added_records", pa.int64()), ("deleted_records", pa.int64()),
     ("total_records", pa.int64()), ("added_data_files", pa.int64()), ("total_data_files", pa.int64()),
     ("tags", pa.string()), ("current", pa.bool_())]
)  # fmt: skip
_SNAPSHOT_COUNTS = ("added-records", "deleted-records", "total-records", "added-data-files", "total-data-files")


class AuditQueries:
    """Thread-safe (its parts are)."""

    def __init__(self, tables: TableCache, planner: Planner, runner: Runner) -> None:
        self.tables = tables
        self.planner = planner
        self.runner = runner

    def sequence_events(
        self,
        *,
        start: datetime,
        end: datetime,
        symbols: Sequence[str] | None = None,
        exchange: str | None = None,
        kind: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Result:
        """Sequence anomalies (gaps, out of order, resets, duplicates) by their record's event time."""
        return self._log_page("sequence_events", sql.SEQUENCE_EVENTS, "event_time", "event_id", start, end, limit,
                              cursor, {"symbols": list(symbols) if symbols else None, "exchange": exchange,
                                       "kind": kind})  # fmt: skip

    def rejects(
        self,
        *,
        start: datetime,
        end: datetime,
        stage: str | None = None,
        record_type: str | None = None,
        symbol: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Result:
        """The quarantine: rejected rows and messages, each with what was wrong, by rejection time;
        ``symbol``: the rows whose raw line has it as a field."""
        return self._log_page("rejects", sql.REJECTS, "rejected_at", "reject_id", start, end, limit, cursor,
                              {"stage": stage, "record_type": record_type, "symbol": symbol})  # fmt: skip

    def snapshots(self, table_name: str, *, limit: int = 100, cursor: str | None = None) -> Result:
        """A table's snapshots, newest first, with what each commit did (for time travel and audits)."""
        check_limit(limit)
        table = self.tables.table(table_name)
        current = table.current_snapshot()
        tags: dict[int, list[str]] = {}
        for name, ref in table.metadata.refs.items():
            tags.setdefault(ref.snapshot_id, []).append(name)
        ordered = sorted(table.snapshots(), key=lambda s: (s.timestamp_ms, s.snapshot_id), reverse=True)
        if cursor is not None:
            state = decode_cursor(cursor)
            if not state.position.key.lstrip("-").isdigit():
                raise QueryError("cursor", cursor, "not a cursor of a snapshot listing")
            last = (micros(state.position.time) // 1000, int(state.position.key))
            ordered = [s for s in ordered if (s.timestamp_ms, s.snapshot_id) < last]
        page = ordered[:limit]
        rows = [
            {
                "snapshot_id": s.snapshot_id,
                "parent_snapshot_id": s.parent_snapshot_id,
                "committed_at": datetime.fromtimestamp(s.timestamp_ms / 1000, UTC),
                "operation": s.summary.operation.value if s.summary else None,
                **{f"{k.replace('-', '_')}": _int(s.summary, k) for k in _SNAPSHOT_COUNTS},
                "tags": ",".join(sorted(tags.get(s.snapshot_id, []))) or None,
                "current": current is not None and s.snapshot_id == current.snapshot_id,
            }
            for s in page
        ]
        next_cursor = None
        current_id = current.snapshot_id if current is not None else None
        if len(ordered) > limit:
            shown = page[-1]
            at = EPOCH + timedelta(milliseconds=shown.timestamp_ms)
            next_cursor = encode_cursor(current_id or 0, Position(at, 0, str(shown.snapshot_id)))
        return Result(pa.Table.from_pylist(rows, SNAPSHOT_COLUMNS), next_cursor, current_id)

    def _log_page(
        self,
        table_name: str,
        statement: str,
        time_column: str,
        key_column: str,
        start: datetime,
        end: datetime,
        limit: int,
        cursor: str | None,
        filters: dict[str, Any],
    ) -> Result:
        check_times(start, end)
        check_limit(limit)
        after, snapshot_id, _, _, (start, end) = resume(cursor, None, None, (start, end))
        table, snapshot = self.tables.pinned(table_name, snapshot_id=snapshot_id)
        columns = sql.column_list(f.name for f in table.schema().fields)

        def step(chunk: Chunk, position: Position, remaining: int) -> tuple[str, dict[str, Any]]:
            relation, source = chunk.reading()
            return statement.format(columns=columns, relation=relation), {
                **filters, **source, **chunk.range_params(), "after_time": position.time,
                "after_id": position.key, "limit": remaining}  # fmt: skip

        return keyset(
            self.runner,
            self.planner.chunks(table, snapshot, start, end, time_column=time_column),
            step,
            after,
            limit,
            lambda row: Position(row[time_column], 0, row[key_column]),
            snapshot,
            empty=lambda: table.schema().as_arrow().empty_table(),
            span=(start, end),
        )


def _int(summary: Any, key: str) -> int | None:
    value = summary.additional_properties.get(key) if summary is not None else None
    return int(value) if value is not None else None
