"""Durable storage of the local schema registry (any SQLAlchemy URL; SQLite by default).

Three tables: ``schemas`` (one row per distinct schema, so the same schema has
the same id under every subject), ``subject_versions`` (the versions of each
subject, soft-deletable) and ``configs`` (compatibility per subject, and the
global one under :data:`GLOBAL`). Confluent semantics live in
:mod:`k2_etl.registry.service`; this module only reads and writes rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError

GLOBAL = "__GLOBAL__"

metadata = sa.MetaData()

schemas_table = sa.Table(
    "schemas",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("schema_type", sa.String(16), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
    sa.Column("schema", sa.Text, nullable=False),
)

versions_table = sa.Table(
    "subject_versions",
    metadata,
    sa.Column("subject", sa.String(255), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("schema_id", sa.Integer, sa.ForeignKey("schemas.id"), nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
)

# One row, updated first thing in every write transaction: on Postgres that
# row lock, on SQLite the write lock it takes, serialise writers across
# processes, so a compatibility check and the version it inserts can't interleave.
lock_table = sa.Table(
    "registry_lock",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("writes", sa.BigInteger, nullable=False),
)

configs_table = sa.Table(
    "configs",
    metadata,
    sa.Column("subject", sa.String(255), primary_key=True),
    sa.Column("compatibility", sa.String(32), nullable=False),
)


@dataclass(frozen=True)
class SubjectVersion:
    subject: str
    version: int
    schema_id: int
    schema_type: str
    schema: str
    deleted: bool


def fingerprint(schema_type: str, canonical: str) -> str:
    return hashlib.sha256(f"{schema_type}\n{canonical}".encode()).hexdigest()


class Store:
    """Row-level access. Writes go through :meth:`write` (one transaction, one writer per process)."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        connect_args: dict[str, object] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # Wait for another process's write rather than failing at once.
            connect_args = {"timeout": 30, "check_same_thread": False}
        self.engine: Engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        metadata.create_all(self.engine)
        with contextlib.suppress(IntegrityError), self.engine.begin() as conn:  # another process may win
            if conn.execute(sa.select(lock_table.c.id)).first() is None:
                conn.execute(lock_table.insert().values(id=1, writes=0))
        # Threads of this process queue here rather than on the database lock.
        self._write_lock = threading.Lock()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that no other writer (thread or process) runs beside."""
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(lock_table.update().where(lock_table.c.id == 1).values(writes=lock_table.c.writes + 1))
            yield conn

    def ping(self) -> None:
        """Raise if the database cannot be reached (for /healthz)."""
        with self.read() as conn:
            conn.execute(sa.select(1))

    # --- schemas ---------------------------------------------------------------
    @staticmethod
    def schema_id_for(conn: Connection, schema_type: str, canonical: str) -> int | None:
        row = conn.execute(
            sa.select(schemas_table.c.id).where(schemas_table.c.fingerprint == fingerprint(schema_type, canonical))
        ).first()
        return None if row is None else int(row.id)

    @staticmethod
    def insert_schema(conn: Connection, schema_type: str, canonical: str) -> int:
        result = conn.execute(
            schemas_table.insert().values(
                schema_type=schema_type, fingerprint=fingerprint(schema_type, canonical), schema=canonical
            )
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    @staticmethod
    def schema_by_id(conn: Connection, schema_id: int) -> tuple[str, str] | None:
        row = conn.execute(
            sa.select(schemas_table.c.schema_type, schemas_table.c.schema).where(schemas_table.c.id == schema_id)
        ).first()
        return None if row is None else (row.schema_type, row.schema)

    # --- subject versions --------------------------------------------------------
    @staticmethod
    def versions(conn: Connection, subject: str | None = None, *, include_deleted: bool) -> list[SubjectVersion]:
        """Versions of ``subject`` (or of every subject), oldest first."""
        query = sa.select(
            versions_table.c.subject,
            versions_table.c.version,
            versions_table.c.schema_id,
            versions_table.c.deleted,
            schemas_table.c.schema_type,
            schemas_table.c.schema,
        ).join(schemas_table, schemas_table.c.id == versions_table.c.schema_id)
        if subject is not None:
            query = query.where(versions_table.c.subject == subject)
        if not include_deleted:
            query = query.where(versions_table.c.deleted.is_(False))
        query = query.order_by(versions_table.c.subject, versions_table.c.version)
        return [
            SubjectVersion(r.subject, r.version, r.schema_id, r.schema_type, r.schema, bool(r.deleted))
            for r in conn.execute(query)
        ]

    @staticmethod
    def versions_of_schema(conn: Connection, schema_id: int, *, include_deleted: bool) -> list[tuple[str, int]]:
        query = sa.select(versions_table.c.subject, versions_table.c.version).where(
            versions_table.c.schema_id == schema_id
        )
        if not include_deleted:
            query = query.where(versions_table.c.deleted.is_(False))
        return [
            (r.subject, r.version)
            for r in conn.execute(query.order_by(versions_table.c.subject, versions_table.c.version))
        ]

    @staticmethod
    def next_version(conn: Connection, subject: str) -> int:
        # Counts soft-deleted versions too, as Confluent does: numbers are never reused.
        current = conn.execute(
            sa.select(sa.func.max(versions_table.c.version)).where(versions_table.c.subject == subject)
        ).scalar()
        return int(current or 0) + 1

    @staticmethod
    def insert_version(conn: Connection, subject: str, version: int, schema_id: int) -> None:
        conn.execute(
            versions_table.insert().values(subject=subject, version=version, schema_id=schema_id, deleted=False)
        )

    @staticmethod
    def soft_delete(conn: Connection, subject: str, versions: list[int]) -> None:
        conn.execute(
            versions_table.update()
            .where(versions_table.c.subject == subject, versions_table.c.version.in_(versions))
            .values(deleted=True)
        )

    @staticmethod
    def hard_delete(conn: Connection, subject: str, versions: list[int]) -> None:
        conn.execute(
            versions_table.delete().where(versions_table.c.subject == subject, versions_table.c.version.in_(versions))
        )

    # --- compatibility config -------------------------------------------------------
    @staticmethod
    def get_config(conn: Connection, subject: str) -> str | None:
        row = conn.execute(sa.select(configs_table.c.compatibility).where(configs_table.c.subject == subject)).first()
        return None if row is None else str(row.compatibility)

    @staticmethod
    def set_config(conn: Connection, subject: str, compatibility: str) -> None:
        updated = conn.execute(
            configs_table.update().where(configs_table.c.subject == subject).values(compatibility=compatibility)
        )
        if updated.rowcount == 0:
            conn.execute(configs_table.insert().values(subject=subject, compatibility=compatibility))

    @staticmethod
    def delete_config(conn: Connection, subject: str) -> None:
        conn.execute(configs_table.delete().where(configs_table.c.subject == subject))
