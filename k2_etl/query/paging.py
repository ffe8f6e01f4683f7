"""A page of rows: what a request may ask for, and the walk that assembles the page.

Why a day at a time: a query's range is planned into day chunks (:meth:`Planner.chunks`) and
run one chunk after another from the cursor's position, so the time budget can stop it between
days with the rows it has (a partial page whose cursor goes on) instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
from pyiceberg.table.snapshots import Snapshot

from k2_etl.errors import QueryError, QueryTimeout
from k2_etl.query.cursor import Position, encode_cursor
from k2_etl.query.planning import Chunk
from k2_etl.query.runner import Runner

MAX_LIMIT = 50_000
MAX_SYMBOLS = 100


@dataclass(frozen=True)
class Result:
    """Rows of one request, and how to go on.

    Attributes:
        cursor: continues after the last row (None: there is nothing more).
        snapshot_id: the snapshot read (None: the table had none at that time).
        partial: the time budget ran out before ``limit`` rows or the end of the range; ``cursor`` continues.
    """

    rows: pa.Table
    cursor: str | None
    snapshot_id: int | None
    partial: bool = False


#: A page's statement for one chunk, after a position, for at most so many rows: (SQL, parameters).
Step = Callable[[Chunk, Position, int], tuple[str, dict[str, Any]]]


def keyset(
    runner: Runner,
    chunks: list[Chunk],
    step: Step,
    after: Position,
    limit: int,
    position_of: Callable[[dict[str, Any]], Position],
    snapshot: Snapshot | None,
    *,
    empty: Callable[[], pa.Table],  # the columns of an empty answer (built only then: it costs ~0.5 ms)
    shape: Callable[[pa.Table], pa.Table] | None = None,
    related: int | None = None,
    span: tuple[datetime, datetime] | None = None,
) -> Result:
    """Run ``step``'s statement a day at a time from the cursor's position until ``limit`` rows,
    the end of the range, or the time budget. Out of budget with rows: a partial result whose
    cursor goes on after the last row; with none: QueryTimeout."""
    deadline = runner.deadline()
    parts: list[pa.Table] = []
    remaining, partial = limit, False
    for chunk in chunks:
        if chunk.end <= after.time:
            continue  # wholly before the cursor
        try:
            statement, params = step(chunk, after, remaining)
            rows = runner.run(statement, params, deadline)
        except QueryTimeout:
            if not parts:
                raise
            partial = True
            break
        if shape is not None:
            rows = shape(rows)
        if rows.num_rows:
            parts.append(rows)
            remaining -= rows.num_rows
        if remaining == 0:
            break
        if runner.clock() >= deadline and chunk is not chunks[-1]:
            if not parts:
                raise QueryTimeout(f"the query found nothing within its budget of {runner.budget_seconds:g} s")
            partial = True
            break
    rows = pa.concat_tables(parts, promote_options="permissive") if parts else empty()
    snapshot_id = snapshot.snapshot_id if snapshot is not None else None
    next_cursor = None
    if (remaining == 0 or partial) and snapshot_id is not None:
        last = rows.slice(rows.num_rows - 1).to_pylist()[0]
        next_cursor = encode_cursor(snapshot_id, position_of(last), related, span)
    return Result(rows, next_cursor, snapshot_id, partial)


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError("limit", limit, f"must be between 1 and {MAX_LIMIT:,}")


def check_times(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise QueryError("start" if start.tzinfo is None else "end", start, "needs a time zone (or Z)")
    if start >= end:
        raise QueryError("start", start.isoformat(), f"must be before end {end.isoformat()}")


def check_range(symbols: Sequence[str], start: datetime, end: datetime) -> None:
    if not symbols:
        raise QueryError("symbol", "", "at least one symbol is needed")
    if len(symbols) > MAX_SYMBOLS:
        raise QueryError("symbol", f"{len(symbols)} symbols", f"at most {MAX_SYMBOLS} per query")
    check_times(start, end)
