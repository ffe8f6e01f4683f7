"""The tables a process queries, as fresh as about a second, and the snapshot a query reads.

Why a cache and a refresher: requests read cached table metadata and never wait on the catalog.
A background thread reloads a table's metadata when the catalog's metadata location moves (the
consumer commits about every second), which is how new snapshots become visible. Time travel:
``snapshot_id`` or ``as_of`` (the snapshot current at that time).

A catalog that cannot be read is an :class:`UnavailableError` naming it (the API's 503); while
it is away, requests are answered from cached metadata until it is about 3 s old, then with
that error.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime

from pyiceberg.catalog import Catalog
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2_etl.config import Settings
from k2_etl.errors import QueryError, UnavailableError
from k2_etl.lake.catalog import metadata_location, open_catalog, reaching

log = logging.getLogger(__name__)
REFRESH_SECONDS = 1.0  # a table's metadata is about this old at most


class TableCache:
    """Thread-safe; one per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._opened: Catalog | None = None  # the catalog, opened at first use (see _catalog)
        self._lock = threading.Lock()
        self._tables: dict[str, tuple[float, Table]] = {}
        self._refresher: threading.Thread | None = None
        self._refresh_problem: str | None = None  # why the last refresh round failed (logged once)
        self._followers: list[weakref.WeakMethod[Callable[[], None]]] = []

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

    def follow(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` after each refresh round that reached the catalog: what is derived from the
        tables (the known symbols) refreshes with them. Held weakly (a bound method), so the
        cache keeps no one alive."""
        self._followers.append(weakref.WeakMethod(hook))

    def table(self, name: str) -> Table:
        """The table as of at most about REFRESH_SECONDS ago.

        A background thread reloads every table in use each REFRESH_SECONDS (and runs what
        follows the tables), so requests read cached metadata and never wait on the catalog; a
        request loads a table itself only the first time, or when the refresher has fallen behind.
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
                )  # a weak reference: a cache no one uses any more is collected, and its thread ends
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
        """Reload the tables whose metadata moved (default: every table in use), then run what
        follows them (the refresher's round)."""
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
        for follower in self._followers:
            hook = follower()
            if hook is not None:
                hook()

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

    def catalog_check(self) -> str:
        """The catalog answers and the trades table loads (health checks); not cached."""
        with reaching(f"{self.settings.namespace}.trades"):
            table = self._catalog.load_table((self.settings.namespace, "trades"))
        snapshot = table.current_snapshot()
        return f"trades at snapshot {snapshot.snapshot_id}" if snapshot else "trades has no snapshot yet"


def _refresh_forever(tables: weakref.ref[TableCache]) -> None:
    """The refresher's loop; it ends when its cache is gone."""
    while True:
        time.sleep(REFRESH_SECONDS)  # a period, not a wait for anything
        alive = tables()
        if alive is None:
            return
        alive.refresh()
        del alive
