"""Queries over the Iceberg tables: K2 plans a snapshot's files, DuckDB reads them.

Why this split: planning prunes by partition (the day of ``event_time``) and
by the data files' column bounds (``symbol``: files are sorted by it), from
a cache of decoded manifests, so DuckDB opens only files that can hold the
answer, then skips row groups by their own statistics. A snapshot with
delete files (merge-on-read writes by other engines) is read through
DuckDB's iceberg extension instead, which applies them. Plans are cached per
(table, snapshot, range, symbols); a background thread reloads a table's
metadata when the catalog's metadata location moves (the consumer commits
about every second), which is how new snapshots become visible.

Pages use keyset pagination in a stable order (event time, sequence number,
event id) and an opaque cursor that pins the snapshot: walking the pages of
one query returns every row once, in order, also while data is being landed.
Time travel: ``snapshot_id`` or ``as_of`` (the snapshot current at that time).
Every statement lives in :mod:`k2_etl.query.sql`, with bound parameters only.

A catalog or warehouse that cannot be read is an :class:`UnavailableError` naming it (the API's
503), translated here where the engine calls them; while the catalog is away, requests are
answered from cached metadata until it is about 3 s old, then with that error.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.conversions import from_bytes
from pyiceberg.manifest import ManifestContent
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.transforms import DayTransform
from pyiceberg.types import StringType, TimestampType, TimestamptzType

from k2_etl.config import Settings
from k2_etl.errors import K2Error, QueryError, QueryTimeout, UnavailableError
from k2_etl.lake.catalog import metadata_location, open_catalog, reaching
from k2_etl.query import sql
from k2_etl.wire.duckdb_conn import S3_SCHEMES, connect


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


log = logging.getLogger(__name__)
REFRESH_SECONDS = 1.0  # a table's metadata is about this old at most
SYMBOLS_REFRESH_SECONDS = 60.0  # the known symbols are recomputed at least this often...
SYMBOLS_RETRY_SECONDS = 2.0  # ...and on a miss, at most this often (a new symbol is found quickly)
SYMBOL_TABLES = ("trades", "quotes", "reference_data")  # a symbol any of them names is known
MAX_LIMIT = 50_000
MAX_SYMBOLS = 100
PLAN_CACHE = 8192  # planned file lists kept (a few hundred bytes each)
MANIFEST_CACHE = 20_000  # decoded manifests kept (immutable: by path)
_DAY_US = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
FIRST = Position(datetime(1, 1, 2, tzinfo=UTC), -2, "")  # sorts before every row
PAGED_TABLES = ("trades", "quotes")
QUOTE_LOOKBACK = timedelta(days=1)  # how far before a range the prevailing quote is looked for
ORDER_COLUMNS = ("event_time", "sequence_number", "event_id")
SNAPSHOT_COLUMNS = pa.schema(
    [("snapshot_id", pa.int64()), ("parent_snapshot_id", pa.int64()), ("committed_at", pa.timestamp("us", tz="UTC")),
     ("operation", pa.string()), ("added_records", pa.int64()), ("deleted_records", pa.int64()),
     ("total_records", pa.int64()), ("added_data_files", pa.int64()), ("total_data_files", pa.int64()),
     ("tags", pa.string()), ("current", pa.bool_())]
)  # fmt: skip


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


def encode_cursor(
    snapshot_id: int,
    position: Position,
    related: int | None = None,
    span: tuple[datetime, datetime] | None = None,
) -> str:
    """An opaque cursor: the snapshot(s) read, the query's range, and the position (time,
    sequence, id) after which to go on. The range is the first page's: a later page must not
    recompute a default ("the day before now") and skip the rows between."""
    state: dict[str, Any] = {"s": snapshot_id, "t": (position.time - EPOCH) // timedelta(microseconds=1),
                             "q": position.sequence, "i": position.key}  # fmt: skip
    if related is not None:
        state["r"] = related
    if span is not None:
        state["a"], state["b"] = _micros(span[0]), _micros(span[1])
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Cursor:
    """The cursor's snapshots and position; QueryError when it is not one this service issued."""
    try:
        state = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        snapshot_id, micros, sequence, key = state["s"], state["t"], state["q"], state["i"]
        related, lo, hi = state.get("r"), state.get("a"), state.get("b")
        if not all(_int64(v) for v in (snapshot_id, micros, sequence)) or not isinstance(key, str):
            raise ValueError
        if not all(v is None or _int64(v) for v in (related, lo, hi)) or (lo is None) != (hi is None):
            raise ValueError
        span = (EPOCH + timedelta(microseconds=lo), EPOCH + timedelta(microseconds=hi)) if lo is not None else None
        return Cursor(snapshot_id, Position(EPOCH + timedelta(microseconds=micros), sequence, key), related, span)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise QueryError("cursor", cursor, "not a cursor this service issued") from None


@dataclass(frozen=True)
class _IndexedFile:
    """What planning needs of a data file: where, its day partition, its columns' bounds (by field id)."""

    path: str
    day: int | None  # the day partition (days since the epoch) of the column day_source
    day_source: int | None
    lower: dict[int, Any]
    upper: dict[int, Any]

    @classmethod
    def of(cls, data_file: Any, spec: Any, types: dict[int, Any]) -> _IndexedFile:
        def decoded(bounds: dict[int, bytes] | None) -> dict[int, Any]:
            return {i: from_bytes(types[i], b) for i, b in (bounds or {}).items() if _has_bounds(types.get(i))}

        day_source, day = _day_of(data_file, spec)
        return cls(_readable(data_file.file_path), day, day_source, decoded(data_file.lower_bounds),
                   decoded(data_file.upper_bounds))  # fmt: skip


def _has_bounds(kind: Any) -> bool:
    """The column types planning compares (times as epoch microseconds, strings)."""
    return isinstance(kind, StringType | TimestamptzType | TimestampType)


def _may_overlap(lower: Any, upper: Any, lo: int, hi: int) -> bool:
    """Whether a file whose column lies in [lower, upper] (None: unknown) may hold a value in [lo, hi]."""
    return (lower is None or lower <= hi) and (upper is None or upper >= lo)


def _may_hold(lower: str | None, upper: str | None, value: str) -> bool:
    """Bounds of strings may be truncated (a prefix below, a successor above): still conservative."""
    return (lower is None or lower <= value) and (upper is None or value <= upper)


class _Scan(NamedTuple):
    """A snapshot with delete files, as DuckDB's iceberg_scan reads it (:func:`sql.relation`)."""

    metadata: str
    snapshot_id: int


def _reading(paths: list[str], scan: _Scan | None, prefix: str = "") -> tuple[str, dict[str, Any]]:
    """The relation reading ``paths`` (planned data files of a snapshot), with its parameters."""
    if scan is None:
        return sql.relation(False, prefix), {f"{prefix}files": paths}
    return sql.relation(True, prefix), {f"{prefix}metadata": scan.metadata, f"{prefix}snapshot_id": scan.snapshot_id}


@dataclass(frozen=True)
class _Plan:
    """The data files of a snapshot a query may need, and whether it has delete files."""

    files: list[tuple[int | None, str]]  # (day partition or None, path), in day order
    scan: _Scan | None

    def reading(self, prefix: str = "") -> tuple[str, dict[str, Any]]:
        return _reading([path for _, path in self.files], self.scan, prefix)


@dataclass(frozen=True)
class _Chunk:
    """One day partition's files (or all files, for tables not partitioned by day) and its time range."""

    start: datetime
    end: datetime
    files: list[str]
    scan: _Scan | None

    def reading(self, prefix: str = "") -> tuple[str, dict[str, Any]]:
        return _reading(self.files, self.scan, prefix)


class QueryEngine:
    """Thread-safe; one per process (a small pool of DuckDB connections)."""

    def __init__(
        self,
        settings: Settings,
        *,
        connections: int = 4,
        budget_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.budget_seconds = budget_seconds
        self._clock = clock  # of the time budget (tests make a query slow by advancing it)
        self._opened: Catalog | None = None  # the catalog, opened at first use (see _catalog)
        self._lock = threading.Lock()
        self._tables: dict[str, tuple[float, Table]] = {}
        self._plans: OrderedDict[tuple[Any, ...], _Plan] = OrderedDict()
        self._manifests: OrderedDict[str, list[_IndexedFile]] = OrderedDict()  # data manifests, by path
        self._symbols: tuple[float, frozenset[str], pa.Table, tuple[int | None, ...]] | None = None
        self._refresher: threading.Thread | None = None
        self._refresh_problem: str | None = None  # why the last refresh round failed (logged once)
        self._rescan_lock = threading.Lock()
        self._pool: queue.SimpleQueue[duckdb.DuckDBPyConnection] = queue.SimpleQueue()
        for _ in range(connections):
            # with the iceberg extension, for snapshots with delete files
            conn = connect(threads=2, extensions=True, settings=settings)
            self._pool.put(conn)

    # --- tables, snapshots, files ------------------------------------------------------------------
    @property
    def _catalog(self) -> Catalog:
        """Opened at first use, not at start: an API started while the catalog is down starts, and
        answers 503 naming the catalog until it is back (opening a SQL catalog connects to it)."""
        if self._opened is None:
            try:
                catalog = open_catalog(self.settings)
            except UnavailableError as exc:  # its message quotes the driver's (the server's address)
                cause = type(exc.__cause__ or exc).__name__
                raise UnavailableError(f"the Iceberg catalog (K2_CATALOG_URI) cannot be opened: {cause}; "
                                       "queries are answered again once it is back", "catalog") from exc  # fmt: skip
            with self._lock:
                self._opened = self._opened or catalog
        return self._opened

    def table(self, name: str) -> Table:
        """The table as of at most about REFRESH_SECONDS ago.

        A background thread reloads every table in use each REFRESH_SECONDS (and the known
        symbols each SYMBOLS_REFRESH_SECONDS), so requests read cached metadata and never wait
        on the catalog; a request loads a table itself only the first time, or when the
        refresher has fallen behind.
        """
        with self._lock:
            cached = self._tables.get(name)
        if cached is not None and time.monotonic() - cached[0] < 3 * REFRESH_SECONDS:
            return cached[1]
        table = self.reload(name)
        with self._lock:
            if self._refresher is None:
                self._refresher = threading.Thread(
                    target=_refresh_forever, args=(weakref.ref(self),), name="k2-refresh", daemon=True
                )  # a weak reference: an engine no one uses any more is collected, and its thread ends
                self._refresher.start()
        return table

    def reload(self, name: str) -> Table:
        """The table as the catalog has it now (bypassing the cache, and refreshing it)."""
        with reaching(f"{self.settings.namespace}.{name}"):
            table = self._catalog.load_table((self.settings.namespace, name))
        return self._store(name, table)

    def _store(self, name: str, table: Table) -> Table:
        """Cache ``table`` unless another thread stored newer metadata meanwhile (cached
        metadata never goes back in time); returns the newer of the two."""
        with self._lock:
            cached = self._tables.get(name)
            if cached is not None and cached[1].metadata.last_updated_ms > table.metadata.last_updated_ms:
                table = cached[1]
            self._tables[name] = (time.monotonic(), table)
        return table

    def refresh(self, names: Sequence[str] | None = None) -> None:
        """Reload the tables whose metadata moved (default: every table in use), and the known
        symbols when due (the refresher's round)."""
        with self._lock:
            names = list(names if names is not None else self._tables)
        for name in names:
            try:
                with self._lock:
                    cached = self._tables.get(name, (0.0, None))[1]
                with reaching(f"{self.settings.namespace}.{name}"):
                    where = metadata_location(self._catalog, self.settings.namespace, name)
                if cached is not None and where is not None and where == cached.metadata_location:
                    self._store(name, cached)  # unchanged: no need to read and parse the metadata again
                    continue
                self.reload(name)
            except UnavailableError as error:  # the other tables would fail alike: the next round tries again
                if str(error) != self._refresh_problem:
                    log.warning("could not refresh table %s: %s (%r)", name, error, error.__cause__)
                self._refresh_problem = str(error)
                return
            except Exception:
                log.warning("could not refresh table %s (requests go on with the last one)", name, exc_info=True)
        if self._refresh_problem is not None:
            log.info("tables refresh again (after: %s)", self._refresh_problem)
            self._refresh_problem = None
        with self._lock:
            symbols = self._symbols
        if symbols is not None and time.monotonic() - symbols[0] >= SYMBOLS_REFRESH_SECONDS:
            try:
                self._known(refresh=True)
            except Exception:
                log.warning("could not refresh the known symbols", exc_info=True)

    def pinned(
        self, name: str, *, snapshot_id: int | None = None, as_of: datetime | None = None
    ) -> tuple[Table, Snapshot | None]:
        """The table and the snapshot a query reads (None: the table had none then, an empty answer).

        A snapshot newer than this process's cached metadata (a cursor another worker issued)
        reloads the table, and that reloaded table is the one to plan with: the cached one does
        not know the snapshot's manifests or partition specs.
        """
        table = self.table(name)
        if snapshot_id is not None and table.snapshot_by_id(snapshot_id) is None:
            table = self.reload(name)
        return table, self.snapshot(table, snapshot_id=snapshot_id, as_of=as_of)

    def snapshot(
        self, table: Table, *, snapshot_id: int | None = None, as_of: datetime | None = None
    ) -> Snapshot | None:
        """The snapshot of ``table`` a query reads; None when the table had none (an empty answer)."""
        if snapshot_id is not None:
            found = table.snapshot_by_id(snapshot_id)
            if found is None:
                raise QueryError("snapshot_id", snapshot_id, f"no such snapshot of table {table.name()[-1]}")
            return found
        if as_of is not None:
            return table.snapshot_as_of_timestamp(int(as_of.timestamp() * 1000))
        return table.current_snapshot()

    def files(
        self,
        table: Table,
        snapshot: Snapshot,
        start: datetime,
        end: datetime,
        symbols: Sequence[str] | None = None,
        time_column: str = "event_time",
    ) -> _Plan:
        """The data files of ``snapshot`` that may hold rows of ``symbols`` in [start, end) of
        ``time_column``, in day order, and how to read them."""
        key = (table.name(), snapshot.snapshot_id, start, end, tuple(sorted(symbols or ())), time_column)
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
        schema = table.schema()
        time_id = schema.find_field(time_column).field_id
        symbol_id = schema.find_field("symbol").field_id if symbols and "symbol" in schema.column_names else None
        lo, hi = _micros(start), _micros(end)
        first_day, last_day = lo // _DAY_US, (hi - 1) // _DAY_US
        indexed, deletes = self._indexed(table, snapshot)
        files = sorted(
            (
                (f.day, f.path)
                for f in indexed
                if (f.day is None or first_day <= f.day <= last_day)
                and _may_overlap(f.lower.get(time_id), f.upper.get(time_id), lo, hi - 1)
                and (
                    symbol_id is None
                    or any(_may_hold(f.lower.get(symbol_id), f.upper.get(symbol_id), s) for s in symbols or ())
                )
            ),
            key=lambda f: (f[0] is None, f[0] or 0, f[1]),
        )
        planned = _Plan(files, _Scan(_readable(table.metadata_location), snapshot.snapshot_id) if deletes else None)
        with self._lock:
            self._plans[key] = planned
            while len(self._plans) > PLAN_CACHE:
                self._plans.popitem(last=False)
        return planned

    def _indexed(self, table: Table, snapshot: Snapshot) -> tuple[list[_IndexedFile], bool]:
        """Every data file of ``snapshot`` with its day partition and column bounds; and whether
        the snapshot has delete files (then its files are read through iceberg_scan, which applies
        them: :func:`sql.relation`).

        Why not pyiceberg's planner per query: it re-reads the manifests on every scan (about 10
        ms a query here, the largest share of a cached page's time). Manifests are immutable, so
        their decoded entries are kept by path: a new snapshot reads only the manifests it added.
        """
        files: list[_IndexedFile] = []
        deletes = False
        specs = table.specs()
        types = {f.field_id: f.field_type for f in table.schema().fields}
        with reaching():
            manifests = snapshot.manifests(table.io)
        for manifest in manifests:
            if manifest.content != ManifestContent.DATA:
                # Live delete files (None: a writer that did not count them; assume some).
                deletes = deletes or (manifest.added_files_count, manifest.existing_files_count) != (0, 0)
                continue
            with self._lock:
                cached = self._manifests.get(manifest.manifest_path)
                if cached is not None:
                    self._manifests.move_to_end(manifest.manifest_path)
            if cached is None:
                with reaching():
                    entries = manifest.fetch_manifest_entry(table.io, discard_deleted=True)
                cached = [_IndexedFile.of(entry.data_file, specs[entry.data_file.spec_id], types) for entry in entries]
                with self._lock:
                    self._manifests[manifest.manifest_path] = cached
                    while len(self._manifests) > MANIFEST_CACHE:
                        self._manifests.popitem(last=False)
            files.extend(cached)
        return files, deletes

    def chunks(
        self,
        table: Table,
        snapshot: Snapshot | None,
        start: datetime,
        end: datetime,
        symbols: Sequence[str] | None = None,
        time_column: str = "event_time",
    ) -> list[_Chunk]:
        """The range split by day partition, in time order (days without files are absent): a
        query runs a day at a time, so a budget can stop it between days with what it has.
        Neighbouring partitions holding at most a day of the range together are one chunk (a
        market's day crosses UTC midnight: one query, not two)."""
        if snapshot is None:
            return []
        planned = self.files(table, snapshot, start, end, symbols, time_column)
        scan = planned.scan
        if any(day is None for day, _ in planned.files):
            return [_Chunk(start, end, [path for _, path in planned.files], scan)] if planned.files else []
        by_day: dict[int, list[str]] = {}
        for day, path in planned.files:
            by_day.setdefault(day, []).append(path)  # type: ignore[arg-type]
        chunks: list[_Chunk] = []
        for day, paths in sorted(by_day.items()):
            chunk = _Chunk(max(start, EPOCH + day * DAY), min(end, EPOCH + (day + 1) * DAY), paths, scan)
            if chunks and chunk.end - chunks[-1].start <= DAY:  # a day of range in one query, across UTC midnight
                chunk = _Chunk(chunks[-1].start, chunk.end, chunks[-1].files + paths, scan)
                chunks[-1] = chunk
            else:
                chunks.append(chunk)
        return chunks

    # --- trades and quotes -------------------------------------------------------------------------
    def page(
        self,
        table_name: str,
        *,
        symbols: Sequence[str],
        start: datetime,
        end: datetime,
        exchange: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
        fields: Sequence[str] | None = None,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
    ) -> Result:
        """One page of trades or quotes in the stable order (event time, sequence, event id)."""
        if table_name not in PAGED_TABLES:
            raise QueryError("table", table_name, f"pages are of {' or '.join(PAGED_TABLES)}")
        _check_range(symbols, start, end)
        _check_limit(limit)
        table = self.table(table_name)
        columns = [f.name for f in table.schema().fields]  # top level (column_names lists nested ones too)
        wanted = list(dict.fromkeys(fields)) if fields else columns
        unknown = [f for f in wanted if f not in columns]
        if unknown:
            raise QueryError("fields", ",".join(unknown), f"not columns of {table_name} ({', '.join(columns)})")
        after, snapshot_id, as_of, _, (start, end) = _resume(cursor, snapshot_id, as_of, (start, end))
        table, snapshot = self.pinned(table_name, snapshot_id=snapshot_id, as_of=as_of)
        selected = list(dict.fromkeys([*wanted, *ORDER_COLUMNS]))
        columns_text, placeholders = ", ".join(_quoted(c) for c in selected), sql.symbol_placeholders(len(symbols))
        fixed = {**sql.symbol_values(list(symbols)), "exchange": exchange}

        def step(chunk: _Chunk, position: Position, remaining: int) -> tuple[str, dict[str, Any]]:
            relation, source = chunk.reading()
            return sql.PAGE.format(columns=columns_text, relation=relation, symbols=placeholders), {
                **fixed, **source, **_range_params(chunk), **_after_params(position), "limit": remaining}  # fmt: skip

        result = self._keyset(
            self.chunks(table, snapshot, start, end, symbols),
            step,
            after,
            limit,
            _trade_position,
            snapshot,
            empty=lambda: table.schema().as_arrow().empty_table().select(selected),
            span=(start, end),
        )
        return replace(result, rows=result.rows.select(wanted))

    def bars(
        self,
        *,
        symbols: Sequence[str],
        start: datetime,
        end: datetime,
        interval: timedelta,
        exchange: str | None = None,
        limit: int = 10_000,
        cursor: str | None = None,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
    ) -> Result:
        """OHLCV, VWAP and trade count per bar and symbol, in (bar, symbol) order; bars without
        trades are absent. Bars are aligned to UTC midnight, so an interval must divide a day."""
        _check_range(symbols, start, end)
        _check_limit(limit)
        width = interval // timedelta(microseconds=1)
        if not timedelta(seconds=1) <= interval <= DAY or width % 1_000_000 or DAY % interval:
            raise QueryError("interval", _interval_text(interval), "must be whole seconds from 1s to 1d dividing a day")
        after, snapshot_id, as_of, _, (start, end) = _resume(cursor, snapshot_id, as_of, (start, end))
        table, snapshot = self.pinned("trades", snapshot_id=snapshot_id, as_of=as_of)
        placeholders = sql.symbol_placeholders(len(symbols))
        fixed = {**sql.symbol_values(list(symbols)), "exchange": exchange, "width_us": width}

        def step(chunk: _Chunk, position: Position, remaining: int) -> tuple[str, dict[str, Any]]:
            lo = max(chunk.start, _floor(position.time, interval))  # whole bars: from the cursor's bar on
            relation, source = chunk.reading()
            return sql.BARS.format(relation=relation, symbols=placeholders), {
                **fixed, **source, "start": lo, "end": chunk.end, "limit": remaining,
                "after_us": _micros(position.time), "after_id": position.key}  # fmt: skip

        result = self._keyset(
            self.chunks(table, snapshot, start, end, symbols),
            step,
            after,
            limit,
            lambda row: Position(row["bar_start"], 0, row["symbol"]),
            snapshot,
            empty=lambda: pa.table({name: pa.array([], t) for name, t in _BAR_TYPES.items()}),
            shape=_bar_shape,
            span=(start, end),
        )
        return replace(result, rows=_with_vwap(result.rows))

    def trades_with_quotes(
        self,
        *,
        symbols: Sequence[str],
        start: datetime,
        end: datetime,
        exchange: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
        lookback: timedelta = QUOTE_LOOKBACK,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
    ) -> Result:
        """Trades with the quote prevailing at each one's time (an as-of join per symbol and
        exchange), its spread and mid, in the trades' stable order; the quote columns are null
        when no quote came within ``lookback``.

        ``snapshot_id`` is of the trades table; the quotes are read as of that snapshot's time. A
        cursor pins both snapshots, so every page joins the same quotes.
        """
        _check_range(symbols, start, end)
        _check_limit(limit)
        after, snapshot_id, as_of, quote_snapshot_id, (start, end) = _resume(cursor, snapshot_id, as_of, (start, end))
        trades, trade_snapshot = self.pinned("trades", snapshot_id=snapshot_id, as_of=as_of)
        if quote_snapshot_id is not None:
            quotes, quote_snapshot = self.pinned("quotes", snapshot_id=quote_snapshot_id)
        else:
            quotes = self.table("quotes")
            quote_snapshot = self._quotes_beside(quotes, trade_snapshot, snapshot_id is not None or as_of is not None)
        fixed = {**sql.symbol_values(list(symbols)), "exchange": exchange}
        placeholders = sql.symbol_placeholders(len(symbols))

        def step(chunk: _Chunk, position: Position, remaining: int) -> tuple[str, dict[str, Any]]:
            trades_relation, params = chunk.reading()
            params.update(fixed, **_range_params(chunk), **_after_params(position), limit=remaining,
                          quotes_start=chunk.start - lookback)  # fmt: skip
            quotes_relation = sql.NO_QUOTES
            if quote_snapshot is not None:
                plan = self.files(quotes, quote_snapshot, chunk.start - lookback, chunk.end, symbols)
                if plan.files:
                    quotes_relation, source = plan.reading(prefix="quote_")
                    params.update(source)
            statement = sql.TRADES_WITH_QUOTES.format(trades=trades_relation, quotes=quotes_relation,
                                                      symbols=placeholders)  # fmt: skip
            return statement, params

        return self._keyset(
            self.chunks(trades, trade_snapshot, start, end, symbols),
            step,
            after,
            limit,
            _trade_position,
            trade_snapshot,
            empty=TRADES_WITH_QUOTES_COLUMNS.empty_table,
            related=quote_snapshot.snapshot_id if quote_snapshot is not None else None,
            span=(start, end),
        )

    def summary(
        self,
        symbol: str,
        day: date,
        *,
        exchange: str | None = None,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
    ) -> dict[str, Any]:
        """One symbol's trading day: open, high, low, close, volume, VWAP, trade and quote counts.

        The day is the trading date the loader set from the exchange's time zone (an ASX day
        starts the evening before in UTC), so the files of the UTC days around it are read.
        """
        _check_range([symbol], EPOCH, EPOCH + DAY)
        start = datetime.combine(day, datetime.min.time(), UTC) - DAY
        end = start + 3 * DAY  # every zone's trading day lies within the UTC day before .. after
        deadline = self._clock() + self.budget_seconds
        params = {"symbol": symbol, "exchange": exchange, "start": start, "end": end, "date": day}
        trades, trade_snapshot = self.pinned("trades", snapshot_id=snapshot_id, as_of=as_of)
        row: dict[str, Any] = dict.fromkeys(_SUMMARY_FIELDS)
        row["trades"] = 0
        plan = self.files(trades, trade_snapshot, start, end, [symbol]) if trade_snapshot else None
        if plan is not None and plan.files:
            relation, source = plan.reading()
            row.update(self._run(sql.SUMMARY.format(relation=relation), {**params, **source}, deadline).to_pylist()[0])
        quotes = self.table("quotes")
        quote_snapshot = self._quotes_beside(quotes, trade_snapshot, snapshot_id is not None or as_of is not None)
        row["quotes"] = 0
        plan = self.files(quotes, quote_snapshot, start, end, [symbol]) if quote_snapshot else None
        if plan is not None and plan.files:
            relation, source = plan.reading()
            statement = sql.SUMMARY_QUOTES.format(relation=relation)
            row["quotes"] = self._run(statement, {**params, **source}, deadline).column(0)[0].as_py()
        notional = row.pop("notional")
        with localcontext(prec=80):
            row["vwap"] = (notional / row["volume"]).quantize(EIGHT_PLACES) if row["volume"] else None
        snapshot = {"snapshot_id": trade_snapshot.snapshot_id if trade_snapshot else None}
        return {"symbol": symbol, "date": day, "exchange": exchange, **row, **snapshot}

    # --- symbols and the other tables --------------------------------------------------------------
    def symbols(self, *, refresh: bool = False) -> pa.Table:
        """Every symbol with trades (exchanges, count, first and last trade) or reference data
        (name, ISIN, currency): scanned at most every SYMBOLS_REFRESH_SECONDS."""
        return self._known(refresh=refresh)[1]

    def unknown(self, symbols: Sequence[str]) -> list[str]:
        """The symbols no trade, quote or reference row names (the API answers 404 for them)."""
        known = self._known()[0]
        missing = [s for s in symbols if s not in known]
        if missing:  # perhaps landed since the last scan: look at the catalog itself, rescan if it moved
            self.refresh(SYMBOL_TABLES)
            known = self._known(refresh=True)[0]
        return [s for s in symbols if s not in known]

    def reference(self, symbol: str) -> pa.Table:
        table = self.table("reference_data")
        snapshot = table.current_snapshot()
        columns = [f.name for f in table.schema().fields]
        if snapshot is None:
            return table.schema().as_arrow().empty_table()
        plan = self.files(table, snapshot, EPOCH, datetime.max.replace(tzinfo=UTC), [symbol], time_column="ingest_time")
        if not plan.files:
            return table.schema().as_arrow().empty_table()
        relation, source = plan.reading()
        statement = sql.REFERENCE.format(columns=", ".join(_quoted(c) for c in columns), relation=relation)
        return self._run(statement, {**source, "symbol": symbol})

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
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Result:
        """The quarantine: rejected rows and messages, each with what was wrong, by rejection time."""
        return self._log_page("rejects", sql.REJECTS, "rejected_at", "reject_id", start, end, limit, cursor,
                              {"stage": stage, "record_type": record_type})  # fmt: skip

    def snapshots(self, table_name: str, *, limit: int = 100, cursor: str | None = None) -> Result:
        """A table's snapshots, newest first, with what each commit did (for time travel and audits)."""
        _check_limit(limit)
        table = self.table(table_name)
        current = table.current_snapshot()
        tags: dict[int, list[str]] = {}
        for name, ref in table.metadata.refs.items():
            tags.setdefault(ref.snapshot_id, []).append(name)
        ordered = sorted(table.snapshots(), key=lambda s: (s.timestamp_ms, s.snapshot_id), reverse=True)
        if cursor is not None:
            state = decode_cursor(cursor)
            if not state.position.key.lstrip("-").isdigit():
                raise QueryError("cursor", cursor, "not a cursor of a snapshot listing")
            last = (_micros(state.position.time) // 1000, int(state.position.key))
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

    def _quotes_beside(self, quotes: Table, trade_snapshot: Snapshot | None, travelling: bool) -> Snapshot | None:
        """The snapshot of ``quotes`` read with a trades snapshot: current, or as of its time when
        travelling. Of the very table object the caller plans with (the refresher may swap the
        cached one meanwhile, whose metadata would not match the snapshot)."""
        if not travelling:
            return quotes.current_snapshot()
        if trade_snapshot is None:
            return None
        return self.snapshot(quotes, as_of=datetime.fromtimestamp(trade_snapshot.timestamp_ms / 1000, UTC))

    # --- running -----------------------------------------------------------------------------------
    def ping(self) -> int:
        """One trivial statement through the pool (health checks)."""
        return int(self._run("SELECT 1", {}).column(0)[0].as_py())

    def catalog_check(self) -> str:
        """The catalog answers and the trades table loads (health checks); not cached."""
        with reaching(f"{self.settings.namespace}.trades"):
            table = self._catalog.load_table((self.settings.namespace, "trades"))
        snapshot = table.current_snapshot()
        return f"trades at snapshot {snapshot.snapshot_id}" if snapshot else "trades has no snapshot yet"

    def _known(self, *, refresh: bool = False) -> tuple[frozenset[str], pa.Table]:
        """The known symbols and the listing; a rescan runs one at a time (concurrent misses wait
        for it and find it done), only when the tables moved, at most every few seconds."""
        with self._lock:
            cached = self._symbols
        if cached is not None and not refresh:
            return cached[1], cached[2]
        with self._rescan_lock:
            return self._rescan_if_due(refresh)

    def _rescan_if_due(self, refresh: bool) -> tuple[frozenset[str], pa.Table]:
        with self._lock:
            cached = self._symbols
        snapshots = tuple(_snapshot_id(self.table(name)) for name in SYMBOL_TABLES)
        if cached is not None:
            age = time.monotonic() - cached[0]
            if not refresh or cached[3] == snapshots or age < SYMBOLS_RETRY_SECONDS:
                return cached[1], cached[2]  # unchanged tables; a miss rescans at most every few seconds
        traded = _SYMBOL_TYPES.empty_table()
        seen: set[str] = set()
        for name in SYMBOL_TABLES:
            table = self.table(name)
            snapshot = table.current_snapshot()
            if snapshot is None:
                continue
            relation, source = self._whole(table, snapshot)
            if not source:
                continue
            if name == "trades":
                traded = self._run(sql.SYMBOLS_TRADED.format(relation=relation), source)
                seen.update(traded.column("symbol").to_pylist())
            else:
                found = self._run(sql.SYMBOLS_SEEN.format(relation=relation), source)
                seen.update(found.column("symbol").to_pylist())
        listing = self._symbol_listing(traded, seen)
        with self._lock:
            self._symbols = (time.monotonic(), frozenset(seen), listing, snapshots)
        return self._symbols[1], listing

    def _symbol_listing(self, traded: pa.Table, seen: set[str]) -> pa.Table:
        reference: dict[str, dict[str, Any]] = {}
        table = self.table("reference_data")
        snapshot = table.current_snapshot()
        if snapshot is not None:
            relation, source = self._whole(table, snapshot)
            if source:
                for row in self._run(sql.REFERENCE_ALL.format(relation=relation), source).to_pylist():
                    reference[row["symbol"]] = row  # the latest validity wins
        by_symbol = {row["symbol"]: row for row in traded.to_pylist()}
        rows = []
        for symbol in sorted(seen):
            ref = reference.get(symbol, {})
            trade = by_symbol.get(symbol, {})
            rows.append({"symbol": symbol, "name": ref.get("name"), "isin": ref.get("isin"),
                         "currency": ref.get("currency"), "exchanges": trade.get("exchanges") or [],
                         "trades": trade.get("trades", 0), "first_trade": trade.get("first_trade"),
                         "last_trade": trade.get("last_trade")})  # fmt: skip
        return pa.Table.from_pylist(rows, SYMBOL_COLUMNS)

    def _whole(self, table: Table, snapshot: Snapshot) -> tuple[str, dict[str, Any]]:
        """The relation of every row of ``snapshot`` and its parameters (none: no data files)."""
        indexed, deletes = self._indexed(table, snapshot)
        if not indexed:
            return "", {}
        scan = _Scan(_readable(table.metadata_location), snapshot.snapshot_id) if deletes else None
        return _reading([f.path for f in indexed], scan)

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
        _check_times(start, end)
        _check_limit(limit)
        after, snapshot_id, _, _, (start, end) = _resume(cursor, None, None, (start, end))
        table, snapshot = self.pinned(table_name, snapshot_id=snapshot_id)
        columns = ", ".join(_quoted(f.name) for f in table.schema().fields)

        def step(chunk: _Chunk, position: Position, remaining: int) -> tuple[str, dict[str, Any]]:
            relation, source = chunk.reading()
            return statement.format(columns=columns, relation=relation), {
                **filters, **source, **_range_params(chunk), "after_time": position.time,
                "after_id": position.key, "limit": remaining}  # fmt: skip

        return self._keyset(
            self.chunks(table, snapshot, start, end, time_column=time_column),
            step,
            after,
            limit,
            lambda row: Position(row[time_column], 0, row[key_column]),
            snapshot,
            empty=lambda: table.schema().as_arrow().empty_table(),
            span=(start, end),
        )

    def _keyset(
        self,
        chunks: list[_Chunk],
        step: Callable[[_Chunk, Position, int], tuple[str, dict[str, Any]]],
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
        deadline = self._clock() + self.budget_seconds
        parts: list[pa.Table] = []
        remaining, partial = limit, False
        for chunk in chunks:
            if chunk.end <= after.time:
                continue  # wholly before the cursor
            try:
                statement, params = step(chunk, after, remaining)
                rows = self._run(statement, params, deadline)
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
            if self._clock() >= deadline and chunk is not chunks[-1]:
                if not parts:
                    raise QueryTimeout(f"the query found nothing within its budget of {self.budget_seconds:g} s")
                partial = True
                break
        rows = pa.concat_tables(parts, promote_options="permissive") if parts else empty()
        snapshot_id = snapshot.snapshot_id if snapshot is not None else None
        next_cursor = None
        if (remaining == 0 or partial) and snapshot_id is not None:
            last = rows.slice(rows.num_rows - 1).to_pylist()[0]
            next_cursor = encode_cursor(snapshot_id, position_of(last), related, span)
        return Result(rows, next_cursor, snapshot_id, partial)

    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        conn = self._pool.get()
        try:
            yield conn
        finally:
            self._pool.put(conn)

    def _run(self, statement: str, params: dict[str, Any], deadline: float | None = None) -> pa.Table:
        """Run within the time budget: past it, DuckDB is interrupted and QueryTimeout raised."""
        if deadline is None:
            deadline = self._clock() + self.budget_seconds
        left = deadline - self._clock()
        if left <= 0:
            raise QueryTimeout(f"the query ran longer than its budget of {self.budget_seconds:g} s")
        with self._connection() as conn:
            fired = threading.Event()

            def interrupt() -> None:
                fired.set()
                conn.interrupt()

            timer = threading.Timer(left, interrupt)
            timer.start()
            try:
                with reaching():  # a data file that cannot be read: the warehouse is away
                    return conn.execute(statement, params).to_arrow_table()
            except duckdb.InterruptException:
                raise QueryTimeout(f"the query ran longer than its budget of {self.budget_seconds:g} s") from None
            finally:
                timer.cancel()
                if fired.is_set():  # an interrupt that came as the query ended must not hit the next one
                    with contextlib.suppress(duckdb.InterruptException):
                        conn.execute("SELECT 1").fetchall()


def _snapshot_id(table: Table) -> int | None:
    snapshot = table.current_snapshot()
    return snapshot.snapshot_id if snapshot is not None else None


def _refresh_forever(engine: weakref.ref[QueryEngine]) -> None:
    """The refresher's loop; it ends when its engine is gone."""
    while True:
        time.sleep(REFRESH_SECONDS)  # a period, not a wait for anything
        alive = engine()
        if alive is None:
            return
        alive.refresh()
        del alive


_BAR_TYPES = {
    "symbol": pa.string(),
    "bar_start": pa.timestamp("us", tz="UTC"),
    "open": pa.decimal128(18, 8),
    "high": pa.decimal128(18, 8),
    "low": pa.decimal128(18, 8),
    "close": pa.decimal128(18, 8),
    "volume": pa.decimal128(38, 8),
    "notional": pa.decimal128(38, 16),
    "trades": pa.int64(),
}
EIGHT_PLACES = Decimal("0.00000001")
_PRICE = pa.decimal128(18, 8)
TRADES_WITH_QUOTES_COLUMNS = pa.schema(
    [("event_id", pa.string()), ("symbol", pa.string()), ("exchange", pa.string()),
     ("event_time", pa.timestamp("us", tz="UTC")), ("sequence_number", pa.int64()), ("price", _PRICE),
     ("size", _PRICE), ("quote_time", pa.timestamp("us", tz="UTC")), ("bid_price", _PRICE), ("bid_size", _PRICE),
     ("ask_price", _PRICE), ("ask_size", _PRICE), ("spread", pa.decimal128(19, 8)), ("mid", pa.decimal128(21, 9))]
)  # fmt: skip


def _with_vwap(bars: pa.Table) -> pa.Table:
    """VWAP = notional / volume, exact to 8 places (Decimal division, half-even)."""
    with localcontext(prec=80):  # the quotient to 80 digits, so the rounding to 8 places is the only one
        vwap = [
            (n / v).quantize(EIGHT_PLACES) if v else None
            for n, v in zip(bars.column("notional").to_pylist(), bars.column("volume").to_pylist(), strict=True)
        ]
    return bars.drop_columns(["notional"]).append_column("vwap", pa.array(vwap, pa.decimal128(38, 8)))


_SUMMARY_FIELDS = ("trades", "open", "high", "low", "close", "volume", "notional", "first_trade", "last_trade")
#: The columns of each answer that is not a table's own rows (the API's response schemas are made of them).
BAR_COLUMNS = pa.schema([*((n, t) for n, t in _BAR_TYPES.items() if n != "notional"), ("vwap", pa.decimal128(38, 8))])
SUMMARY_COLUMNS = pa.schema(
    [("symbol", pa.string()), ("date", pa.date32()), ("exchange", pa.string()), ("trades", pa.int64()),
     ("open", _PRICE), ("high", _PRICE), ("low", _PRICE), ("close", _PRICE), ("volume", pa.decimal128(38, 8)),
     ("first_trade", pa.timestamp("us", tz="UTC")), ("last_trade", pa.timestamp("us", tz="UTC")),
     ("quotes", pa.int64()), ("vwap", pa.decimal128(38, 8)), ("snapshot_id", pa.int64())]
)  # fmt: skip
_SNAPSHOT_COUNTS = ("added-records", "deleted-records", "total-records", "added-data-files", "total-data-files")
_SYMBOL_TYPES = pa.schema(
    [("symbol", pa.string()), ("exchanges", pa.list_(pa.string())), ("trades", pa.int64()),
     ("first_trade", pa.timestamp("us", tz="UTC")), ("last_trade", pa.timestamp("us", tz="UTC"))]
)  # fmt: skip
SYMBOL_COLUMNS = pa.schema(
    [("symbol", pa.string()), ("name", pa.string()), ("isin", pa.string()), ("currency", pa.string()),
     ("exchanges", pa.list_(pa.string())), ("trades", pa.int64()), ("first_trade", pa.timestamp("us", tz="UTC")),
     ("last_trade", pa.timestamp("us", tz="UTC"))]
)  # fmt: skip


def _bar_shape(rows: pa.Table) -> pa.Table:
    start_col = rows.column("bar_start").cast(pa.timestamp("us", tz="UTC"))  # DuckDB gives naive UTC
    return rows.set_column(rows.schema.get_field_index("bar_start"), "bar_start", start_col)


def _resume(
    cursor: str | None, snapshot_id: int | None, as_of: datetime | None, span: tuple[datetime, datetime]
) -> tuple[Position, int | None, datetime | None, int | None, tuple[datetime, datetime]]:
    """(position to go on after, snapshot id, as_of, related snapshot id, range): a cursor pins
    the snapshots and the range of its first page."""
    if cursor is None:
        return FIRST, snapshot_id, as_of, None, span
    state = decode_cursor(cursor)
    return state.position, state.snapshot_id, None, state.related_snapshot_id, state.span or span


def _int64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _range_params(chunk: _Chunk) -> dict[str, Any]:
    return {"start": chunk.start, "end": chunk.end}


def _after_params(position: Position) -> dict[str, Any]:
    return {"after_time": position.time, "after_sequence": position.sequence, "after_id": position.key}


def _trade_position(row: dict[str, Any]) -> Position:
    sequence = row["sequence_number"]
    return Position(row["event_time"], -1 if sequence is None else sequence, row["event_id"])


def _micros(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def _floor(at: datetime, interval: timedelta) -> datetime:
    """The start of the bar holding ``at`` (bars are aligned to the epoch, hence to UTC midnight)."""
    if at <= EPOCH:
        return at
    width = interval // timedelta(microseconds=1)
    return EPOCH + timedelta(microseconds=_micros(at) // width * width)


def _interval_text(interval: timedelta) -> str:
    return f"{interval.total_seconds():g}s"


def _int(summary: Any, key: str) -> int | None:
    value = summary.additional_properties.get(key) if summary is not None else None
    return int(value) if value is not None else None


def _day_of(data_file: Any, spec: Any) -> tuple[int | None, int | None]:
    """(source field id, day) of the file's day partition (days since the epoch); (None, None) when
    its spec has no day field (unpartitioned, monthly)."""
    for position, field in enumerate(spec.fields):
        if isinstance(field.transform, DayTransform):
            value = data_file.partition[position]
            if isinstance(value, date):
                return field.source_id, (value - EPOCH.date()).days
            return field.source_id, value if isinstance(value, int) else None
    return None, None


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError("limit", limit, f"must be between 1 and {MAX_LIMIT:,}")


def _check_times(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise QueryError("start" if start.tzinfo is None else "end", start, "needs a time zone (or Z)")
    if start >= end:
        raise QueryError("start", start.isoformat(), f"must be before end {end.isoformat()}")


def _check_range(symbols: Sequence[str], start: datetime, end: datetime) -> None:
    if not symbols:
        raise QueryError("symbol", "", "at least one symbol is needed")
    if len(symbols) > MAX_SYMBOLS:
        raise QueryError("symbol", f"{len(symbols)} symbols", f"at most {MAX_SYMBOLS} per query")
    _check_times(start, end)


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'  # names come from the table's schema, quoted anyway


def _readable(location: str) -> str:
    """A data file's location as DuckDB reads it: a local path, or s3:// (s3a:// is the same store)."""
    if location.startswith("file://"):
        return location.removeprefix("file://")
    if "://" not in location:
        return location
    if location.startswith(S3_SCHEMES):
        return "s3://" + location.split("://", 1)[1]
    raise K2Error(f"K2's query engine reads local and S3 warehouses, not {location.split('://')[0]}:// files")
