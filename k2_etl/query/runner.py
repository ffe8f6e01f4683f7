"""Statements run on a small pool of DuckDB connections, each within a time budget.

Why a budget: a request must answer in bounded time; past it DuckDB is interrupted and
:class:`QueryTimeout` raised (paging turns that into a partial page when it has rows). A data
file that cannot be read is an :class:`UnavailableError` naming the warehouse (the API's 503).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from k2_etl.config import Settings, cores
from k2_etl.errors import QueryTimeout
from k2_etl.lake.catalog import reaching
from k2_etl.wire.duckdb_conn import connect


@dataclass
class Spent:
    """A request's time in DuckDB (statements run, Arrow results in hand), for the API's
    per-stage histograms."""

    running: float = 0.0


#: The current request's :class:`Spent`, when its caller set one (the API does, per request).
SPENT: ContextVar[Spent | None] = ContextVar("k2_query_spent", default=None)


class Runner:
    """Thread-safe; one per process (one DuckDB database, a pool of its cursors)."""

    def __init__(self, settings: Settings, connections: int, budget_seconds: float, clock: Callable[[], float]) -> None:
        self.budget_seconds = budget_seconds
        self.clock = clock  # of the time budget (tests make a query slow by advancing it)
        self._pool: queue.SimpleQueue[duckdb.DuckDBPyConnection] = queue.SimpleQueue()
        # One DuckDB database, a cursor per concurrent statement: the cursors share its threads
        # (one per core), its buffer pool and its caches. A database per connection (K2 before)
        # ran 8 concurrent queries on 16 DuckDB threads of 2 cores, each warming its own caches:
        # with 8 clients, 25-31 ms of CPU a trades page against 35-39 ms (bench/api_bench.py).
        # The iceberg extension is loaded, for snapshots with delete files.
        self._database = connect(threads=cores(), extensions=True, settings=settings)
        for _ in range(connections):
            self._pool.put(self._database.cursor())

    def deadline(self) -> float:
        """When a request starting now runs out of its budget (on :attr:`clock`)."""
        return self.clock() + self.budget_seconds

    def run(self, statement: str, params: dict[str, Any], deadline: float | None = None) -> pa.Table:
        """Run within the time budget: past it, DuckDB is interrupted and QueryTimeout raised."""
        if deadline is None:
            deadline = self.deadline()
        left = deadline - self.clock()
        if left <= 0:
            raise QueryTimeout(f"the query ran longer than its budget of {self.budget_seconds:g} s")
        with self._connection() as conn:
            started = time.perf_counter()
            watch = WATCHDOG.watch(conn, left)
            try:
                with reaching():  # a data file that cannot be read: the warehouse is away
                    return conn.execute(statement, params).to_arrow_table()
            except duckdb.InterruptException:
                raise QueryTimeout(f"the query ran longer than its budget of {self.budget_seconds:g} s") from None
            finally:
                spent = SPENT.get()
                if spent is not None:
                    spent.running += time.perf_counter() - started
                if WATCHDOG.release(watch):  # an interrupt that came as the query ended must not hit the next
                    with contextlib.suppress(duckdb.InterruptException):
                        conn.execute("SELECT 1").fetchall()

    def ping(self) -> int:
        """One trivial statement through the pool (health checks)."""
        return int(self.run("SELECT 1", {}).column(0)[0].as_py())

    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        conn = self._pool.get()
        try:
            yield conn
        finally:
            self._pool.put(conn)


REPEAT_SECONDS = 0.05


class Watchdog:
    """One thread (per process) interrupting the statements that outlive their budget.

    Why not a ``threading.Timer`` per statement: each starts a thread, about 0.3 ms of GIL-held
    work on every query (1.7% of a trades page's time in the API's profile), for an interrupt that
    almost never fires.
    """

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: dict[int, tuple[float, duckdb.DuckDBPyConnection]] = {}  # watch -> (monotonic, connection)
        self._fired: set[int] = set()
        self._next = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, conn: duckdb.DuckDBPyConnection, seconds: float) -> int:
        """Interrupt ``conn`` in ``seconds`` unless released before."""
        with self._wake:
            watch = next(self._next)
            self._due[watch] = (time.monotonic() + seconds, conn)
            if self._thread is None or not self._thread.is_alive():  # not yet, or not in this forked child
                self._thread = threading.Thread(target=self._run, name="k2-query-watchdog", daemon=True)
                self._thread.start()
            self._wake.notify()
            return watch

    def release(self, watch: int) -> bool:
        """Stop watching; whether the interrupt fired."""
        with self._wake:
            self._due.pop(watch, None)
            if watch in self._fired:
                self._fired.discard(watch)
                return True
            return False

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for watch, (due, conn) in list(self._due.items()):
                    if due <= now:  # again every REPEAT_SECONDS until released: an interrupt that came
                        self._due[watch] = (now + REPEAT_SECONDS, conn)  # before DuckDB began is lost
                        self._fired.add(watch)
                        conn.interrupt()
                soonest = min((due for due, _ in self._due.values()), default=None)
                self._wake.wait(None if soonest is None else soonest - now)


WATCHDOG = Watchdog()
