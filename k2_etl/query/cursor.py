"""The opaque cursor of a page: the snapshot(s) read, the query's range, and where the page ended.

Pages use keyset pagination in a stable order (event time, sequence number, event id): the next
page is the rows after the last one's position, not an offset, so walking the pages of one query
returns every row once, in order, also while data is being landed. The cursor pins the snapshot
(and the range of the first page), so every page of a walk reads the same data.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from k2_etl.errors import QueryError
from k2_etl.query.planning import EPOCH, micros


class Position(NamedTuple):
    """Where a page ends in the stable order: (time, sequence or 0, event id or other unique key)."""

    time: datetime
    sequence: int
    key: str


class Cursor(NamedTuple):
    snapshot_id: int
    position: Position
    related_snapshot_id: int | None  # the quotes snapshot of a trades-with-quotes walk
    span: tuple[datetime, datetime] | None = None  # the query's [start, end)


FIRST = Position(datetime(1, 1, 2, tzinfo=UTC), -2, "")  # sorts before every row


def encode_cursor(
    snapshot_id: int,
    position: Position,
    related: int | None = None,
    span: tuple[datetime, datetime] | None = None,
) -> str:
    """An opaque cursor: the snapshot(s) read, the query's range, and the position (time,
    sequence, id) after which to go on. The range is the first page's: a later page must not
    recompute a default ("the day before now") and skip the rows between."""
    state: dict[str, Any] = {"s": snapshot_id, "t": micros(position.time), "q": position.sequence, "i": position.key}
    if related is not None:
        state["r"] = related
    if span is not None:
        state["a"], state["b"] = micros(span[0]), micros(span[1])
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Cursor:
    """The cursor's snapshots and position; QueryError when it is not one this service issued."""
    try:
        state = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        snapshot_id, at, sequence, key = state["s"], state["t"], state["q"], state["i"]
        related, lo, hi = state.get("r"), state.get("a"), state.get("b")
        if not all(_int64(v) for v in (snapshot_id, at, sequence)) or not isinstance(key, str):
            raise ValueError
        if not all(v is None or _int64(v) for v in (related, lo, hi)) or (lo is None) != (hi is None):
            raise ValueError
        span = (EPOCH + timedelta(microseconds=lo), EPOCH + timedelta(microseconds=hi)) if lo is not None else None
        return Cursor(snapshot_id, Position(EPOCH + timedelta(microseconds=at), sequence, key), related, span)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise QueryError("cursor", cursor, "not a cursor this service issued") from None


def resume(
    cursor: str | None, snapshot_id: int | None, as_of: datetime | None, span: tuple[datetime, datetime]
) -> tuple[Position, int | None, datetime | None, int | None, tuple[datetime, datetime]]:
    """(position to go on after, snapshot id, as_of, related snapshot id, range): a cursor pins
    the snapshots and the range of its first page."""
    if cursor is None:
        return FIRST, snapshot_id, as_of, None, span
    state = decode_cursor(cursor)
    return state.position, state.snapshot_id, None, state.related_snapshot_id, state.span or span


def after_params(position: Position) -> dict[str, Any]:
    """The position as a statement's parameters (the rows after it)."""
    return {"after_time": position.time, "after_sequence": position.sequence, "after_id": position.key}


def _int64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
