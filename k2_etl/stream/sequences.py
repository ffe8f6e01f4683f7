"""Sequence tracking: gaps, out-of-order arrivals, resets and duplicates in exchange sequence numbers.

Exchanges number each (exchange, symbol, trading day)'s messages 1, 2, 3, ...;
a jump means messages were lost upstream, which is what operators need to
hear about. Each key's state is the highest number seen and the numbers still
missing below it; every record that lands is classified in arrival (Kafka)
order:

* ``in_order``: the next number (counted in metrics only);
* ``gap``: higher than the next; ``gap_size`` numbers are now missing;
* ``out_of_order``: one of the missing numbers, arriving late;
* ``reset``: a 1 when 1 was already seen: numbering starts again, the state with it;
* ``duplicate``: a number already seen, in a record with a different id.

Only records that land are tracked: re-sent records (a load re-run, a
replay) are deduplicated before they get here, so they never show as
duplicates or gaps. All but ``in_order`` become rows of the
``sequence_events`` table, with deterministic ids.

The state is a function of the set of numbers landed since the key's last
reset, so it is rebuilt from the tables: lazily, per trading day, the day's
numbers from the data table and its last reset from the events table. That
is what makes tracking survive restarts and rebalances without persisting
anything else. It is exact without resets; across a reset it is as exact as
event times are ordered: the data tables have no Kafka positions, so a reset
is placed by the event time of the record that caused it (rows of the key at
or after that time count as the new numbering), and a record of the old
numbering arriving after the reset with an earlier event time is counted in
memory as the new numbering's but, after a restart, as the old one's.

Per batch the work is vectorized: keys whose numbers simply continue (almost
all) cost a few numpy operations; only keys with an anomaly are walked in
Python.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.table import Table

from k2_etl.records import SequenceKind
from k2_etl.wire.duckdb_conn import connect

MAX_DAYS = 4  # trading days per table whose state stays in memory

Key = tuple[str, str]  # (exchange, symbol) within a trading day
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_STATE_SQL = """
    WITH numbers AS (
        SELECT DISTINCT r.exchange, r.symbol, r.sequence_number AS seq
        FROM landed r LEFT JOIN resets s ON r.exchange = s.exchange AND r.symbol = s.symbol
        WHERE s.since IS NULL OR r.event_time >= s.since
    ),
    stepped AS (
        SELECT *, lag(seq, 1, 0) OVER (PARTITION BY exchange, symbol ORDER BY seq) AS prev FROM numbers
    )
    SELECT exchange, symbol, max(seq) AS high,
           list([prev + 1, seq - 1] ORDER BY seq) FILTER (WHERE seq > prev + 1) AS missing
    FROM stepped GROUP BY exchange, symbol
"""


@dataclass
class KeyState:
    """Highest number seen and the still-missing numbers below it (sorted, disjoint ``[lo, hi]`` ranges)."""

    high: int = 0
    missing: list[list[int]] = field(default_factory=list)

    def step(self, received: int) -> tuple[SequenceKind, int, int | None]:
        """Classify ``received`` and update the state: (kind, expected number, gap size)."""
        expected = self.high + 1
        if received == expected:
            self.high = received
            return "in_order", expected, None
        if received > expected:
            self.missing.append([expected, received - 1])
            self.high = received
            return "gap", expected, received - expected
        at = bisect.bisect_right(self.missing, [received, float("inf")]) - 1
        if at >= 0 and self.missing[at][0] <= received <= self.missing[at][1]:
            lo, hi = self.missing.pop(at)
            self.missing[at:at] = [r for r in ([lo, received - 1], [received + 1, hi]) if r[0] <= r[1]]
            return "out_of_order", expected, None
        if received == 1:
            self.high, self.missing = 1, []
            return "reset", expected, None
        return "duplicate", expected, None


def event_id(
    record_type: str, exchange: str, symbol: str, day: date, kind: SequenceKind, received: int, where: str
) -> str:
    """Deterministic: the same Kafka record (``where``: topic, partition, offset) in the same state
    gives the same event, however often it is read."""
    text = f"{record_type}|{exchange}|{symbol}|{day.isoformat()}|{kind}|{received}|{where}"
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _days(batch: pa.Table) -> pa.Array:
    """The trading day of each row: its ``trading_date``, else the UTC date of its event time."""
    utc_days = pc.cast(batch.column("event_time"), pa.date32())
    if "trading_date" not in batch.column_names:
        return utc_days.combine_chunks()
    return pc.coalesce(batch.column("trading_date"), utc_days).combine_chunks()


class SequenceTracker:
    """The sequence state of one data table (trades or quotes), by trading day."""

    def __init__(self, table: Table, events: Table, record_type: str) -> None:
        self.table, self.events, self.record_type = table, events, record_type
        self._days: OrderedDict[date, dict[Key, KeyState]] = OrderedDict()

    def clear(self) -> None:
        """Forget all state (it reloads from the tables): after a rebalance or a dropped batch."""
        self._days.clear()

    def observe(
        self,
        batch: pa.Table,
        partitions: np.ndarray,
        offsets: np.ndarray,
        *,
        topic: str,
        landed: Mapping[int, int | None],
        events_from: Mapping[int, int | None],
    ) -> tuple[list[dict[str, Any]], Counter[str]]:
        """Classify the rows of a batch about to land; returns the event rows and counts by kind
        (plus ``missing``: the numbers the batch's gaps skipped).

        ``partitions``/``offsets``: each row's Kafka position (rows of one key share a partition, so
        offset order is arrival order). ``landed``: the partitions' next offsets the data table
        records (it places resets when a day's state is rebuilt). Only events of records at or
        after ``events_from[partition]`` are returned: the events table has the earlier ones.
        """
        counts: Counter[str] = Counter()
        numbers = batch.column("sequence_number").combine_chunks()
        tracked = pc.is_valid(numbers).to_numpy(zero_copy_only=False)
        if not tracked.any():
            return [], counts
        rows = np.flatnonzero(tracked)
        seq = numbers.to_numpy(zero_copy_only=False)[rows].astype(np.int64)
        days = _days(batch).take(pa.array(rows))
        exchange = batch.column("exchange").take(pa.array(rows)).cast(pa.string())
        symbol = batch.column("symbol").take(pa.array(rows)).cast(pa.string())
        label = pc.binary_join_element_wise(exchange, symbol, days.cast(pa.string()), "\x00").combine_chunks()
        encoded = pc.dictionary_encode(label)
        key_of = encoded.indices.to_numpy(zero_copy_only=False)
        keys: list[tuple[str, str, date]] = []  # per dictionary entry: exchange, symbol, trading day
        states: list[KeyState] = []
        days_of_batch: dict[date, dict[Key, KeyState]] = {}  # each day looked up (or loaded) once per batch
        for text in encoded.dictionary.to_pylist():
            ex, sym, day_text = text.split("\x00")
            day = date.fromisoformat(day_text)
            if day not in days_of_batch:
                days_of_batch[day] = self._day(day, landed)
            keys.append((ex, sym, day))
            states.append(days_of_batch[day].setdefault((ex, sym), KeyState()))
        self._trim()
        order = np.lexsort((offsets[rows], key_of))  # by key, then arrival
        k, s = key_of[order], seq[order]
        first = np.r_[True, k[1:] != k[:-1]]
        last = np.r_[k[1:] != k[:-1], True]
        before = np.r_[0, s[:-1]]
        before[first] = [states[i].high for i in k[first]]
        continuing = s == before + 1
        anomalous = set(np.unique(k[~continuing]).tolist())
        for i, high in zip(k[last].tolist(), s[last].tolist(), strict=True):
            if i not in anomalous:
                states[i].high = high  # the key's numbers simply continued
        of_anomalous = np.isin(k, list(anomalous))
        counts["in_order"] = int(np.count_nonzero(~of_anomalous))
        events: list[dict[str, Any]] = []
        if not anomalous:
            return events, counts
        where = order[of_anomalous]  # rows of anomalous keys, by key then arrival
        event_times = batch.column("event_time").take(pa.array(rows[where])).cast(pa.int64()).to_pylist()
        now = datetime.now(UTC)
        for pos, received, event_us in zip(where.tolist(), seq[where].tolist(), event_times, strict=True):
            state = states[key_of[pos]]
            kind, expected, gap = state.step(received)
            counts[kind] += 1
            counts["missing"] += gap or 0
            row = rows[pos]
            partition, offset = int(partitions[row]), int(offsets[row])
            start = events_from.get(partition)
            if kind == "in_order" or (start is not None and offset < start):
                continue
            ex, sym, day = keys[key_of[pos]]
            events.append(
                {
                    "event_id": event_id(
                        self.record_type, ex, sym, day, kind, received, f"{topic}[{partition}]@{offset}"
                    ),
                    "detected_at": now,
                    "exchange": ex,
                    "symbol": sym,
                    "trading_date": day,
                    "kind": kind,
                    "expected_sequence": expected,
                    "received_sequence": received,
                    "gap_size": gap,
                    "event_time": EPOCH + timedelta(microseconds=event_us),
                    "record_type": self.record_type,
                    "kafka_topic": topic,
                    "kafka_partition": partition,
                    "kafka_offset": offset,
                }
            )
        return events, counts

    def _day(self, day: date, landed: Mapping[int, int | None]) -> dict[Key, KeyState]:
        states = self._days.get(day)
        if states is None:
            states = self._days[day] = self._load(day, landed)
        else:
            self._days.move_to_end(day)
        return states

    def _trim(self) -> None:
        """Keep the most recently used days (the state of a batch is held by the batch meanwhile)."""
        while len(self._days) > MAX_DAYS:
            self._days.popitem(last=False)

    def _load(self, day: date, landed: Mapping[int, int | None]) -> dict[Key, KeyState]:
        """A trading day's state, rebuilt from what the tables hold."""
        # A trading day's rows lie between its start at UTC+14 and its end at UTC-12.
        start = (datetime.combine(day, time(), UTC) - timedelta(hours=14)).isoformat()
        end = (datetime.combine(day + timedelta(days=1), time(), UTC) + timedelta(hours=12)).isoformat()
        columns = ("exchange", "symbol", "event_time", "sequence_number")
        with_day = ("trading_date", *columns) if "trading_date" in self.table.schema().column_names else columns
        scanned = self.table.scan(
            row_filter=And(GreaterThanOrEqual("event_time", start), LessThan("event_time", end)),  # type: ignore[call-arg,arg-type]
            selected_fields=with_day,
        ).to_arrow()
        mine = pc.and_(pc.equal(_days(scanned), pa.scalar(day, pa.date32())), pc.is_valid(scanned["sequence_number"]))
        landed_rows = scanned.filter(mine).select(list(columns))
        resets = self.events.scan(
            row_filter=And(
                EqualTo("kind", "reset"),  # type: ignore[call-arg,arg-type]
                And(EqualTo("record_type", self.record_type), EqualTo("trading_date", day.isoformat())),  # type: ignore[call-arg,arg-type]
            ),
            selected_fields=("exchange", "symbol", "event_time", "kafka_partition", "kafka_offset"),
        ).to_arrow()
        # Only resets whose record has landed (the events table may be a batch ahead after a crash).
        placed = [
            r
            for r in resets.to_pylist()
            if r["kafka_offset"] is not None and r["kafka_offset"] < (landed.get(r["kafka_partition"]) or 0)
        ]
        since: dict[Key, datetime] = {}
        for r in placed:
            key = (r["exchange"], r["symbol"])
            since[key] = max(since.get(key, r["event_time"]), r["event_time"])
        resets_table = pa.table(
            {
                "exchange": pa.array([k[0] for k in since], pa.string()),
                "symbol": pa.array([k[1] for k in since], pa.string()),
                "since": pa.array(list(since.values()), pa.timestamp("us", tz="UTC")),
            }
        )
        with connect() as db:
            db.register("landed", landed_rows)
            db.register("resets", resets_table)
            found = db.execute(_STATE_SQL).fetchall()
        return {(ex, sym): KeyState(int(high), [list(r) for r in missing or []]) for ex, sym, high, missing in found}
