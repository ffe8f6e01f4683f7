"""Statements run on a small pool of DuckDB connections, each within a time budget.

Why a budget: a request must answer in bounded time; past it DuckDB is interrupted and
:class:`QueryTimeout` raised (paging turns that into a partial page when it has rows). A data
file that cannot be read is an :class:`UnavailableError` naming the warehouse (the API's 503).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa

from k2_etl.config import Settings
from k2_etl.errors import QueryTimeout
from k2_etl.lake.catalog import reaching
from k2_etl.wire.duckdb_conn import connect


class Runner:
    """Thread-safe; one per process (a small pool of DuckDB connections)."""

    def __init__(self, settings: Settings, connections: int, budget_seconds: float, clock: Callable[[], float]) -> None:
        self.budget_seconds = budget_seconds
        self.clock = clock  # of the time budget (tests make a query slow by advancing it)
        self._pool: queue.SimpleQueue[duckdb.DuckDBPyConnection] = queue.SimpleQueue()
        for _ in range(connections):
            # with the iceberg extension, for snapshots with delete files
            conn = connect(threads=2, extensions=True, settings=settings)
            self._pool.put(conn)

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
