"""The Iceberg tables K2 keeps, derived from the Avro schemas.

Columns come from each record type's ``.avsc`` (the only place they are
declared); this module adds what Avro cannot say: partitioning and sort order.

Layout choices (the queries users run are "one instrument over a time range"
and "all instruments for a day"):

* trades, quotes: partitioned by ``day(event_time)`` and written sorted by
  ``(symbol, event_time)``. A day is the natural unit of loads, replays and
  maintenance, and a time-range query reads only its days. Within a day the
  sort keeps each symbol's rows together, so Parquet min/max statistics on
  ``symbol`` let a one-instrument query skip most files and row groups. We do
  not add ``bucket(symbol)``: the streaming consumer commits about once a
  second, and a bucket spec would multiply every commit into one small file
  per bucket.
* reference_data: small and read whole; unpartitioned, sorted by symbol.
* rejects, sequence_events, load_manifest: few rows read by time; ``month``
  partitions keep files from being tiny.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import count
from typing import Any, Literal

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import ResolveError
from pyiceberg.exceptions import ValidationError as IcebergValidationError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema, promote
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import DayTransform, IdentityTransform, MonthTransform, Transform
from pyiceberg.types import DecimalType, IcebergType
from pyiceberg.utils.schema_conversion import AvroSchemaConversion

from k2_etl.config import Settings
from k2_etl.errors import SchemaError
from k2_etl.schemas import LOAD_MANIFEST, QUOTE, REFERENCE_DATA, REJECT, SEQUENCE_EVENT, TRADE, RecordType

TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    # Row groups of 50k rows in large (compacted) files: files are sorted by symbol, so a
    # one-symbol query skips most row groups by their statistics (pyiceberg's default is 1M).
    "write.parquet.row-group-limit": "50000",
    # Maintenance (compaction, replay) replaces files while the consumer appends. Serializable
    # isolation would fail every such commit the stream appended beside; snapshot isolation
    # still refuses one whose rewritten files were removed or got delete files meanwhile.
    "write.update.isolation-level": "snapshot",
    "write.delete.isolation-level": "snapshot",
}


@dataclass(frozen=True)
class TableDef:
    """One Iceberg table: its record type plus layout.

    Attributes:
        partition: ``(column, transform, partition field name)`` triples.
        sort: columns of the sort order, ascending, nulls first.
        id_column: the deterministic record id rows are deduplicated by (None: not deduplicated).
    """

    name: str
    record: RecordType
    partition: tuple[tuple[str, Transform[Any, Any], str], ...]
    sort: tuple[str, ...]
    id_column: str | None = "event_id"

    @property
    def day_column(self) -> str | None:
        """The column partitioned by day (the scope of deduplication and maintenance), if any."""
        return next((column for column, transform, _ in self.partition if isinstance(transform, DayTransform)), None)

    def schema(self) -> Schema:
        return iceberg_schema(self.record)

    def partition_spec(self, schema: Schema) -> PartitionSpec:
        return PartitionSpec(
            *(
                PartitionField(source_id=schema.find_field(col).field_id, field_id=1000 + i, transform=t, name=name)
                for i, (col, t, name) in enumerate(self.partition)
            )
        )

    def sort_order(self, schema: Schema) -> SortOrder:
        return SortOrder(
            *(SortField(source_id=schema.find_field(col).field_id, transform=IdentityTransform()) for col in self.sort)
        )


TABLES: tuple[TableDef, ...] = (
    TableDef("trades", TRADE, (("event_time", DayTransform(), "event_day"),), ("symbol", "event_time")),
    TableDef("quotes", QUOTE, (("event_time", DayTransform(), "event_day"),), ("symbol", "event_time")),
    TableDef("reference_data", REFERENCE_DATA, (), ("symbol",)),
    TableDef(
        "rejects",
        REJECT,
        (("rejected_at", MonthTransform(), "rejected_month"),),
        ("source", "line_number"),
        "reject_id",
    ),
    TableDef(
        "sequence_events",
        SEQUENCE_EVENT,
        (("trading_date", MonthTransform(), "trading_month"),),
        ("exchange", "symbol", "trading_date"),
    ),
    TableDef("load_manifest", LOAD_MANIFEST, (("started_at", MonthTransform(), "started_month"),), ("load_id",), None),
)
TABLES_BY_NAME = {t.name: t for t in TABLES}
TABLES_BY_RECORD = {t.record.name: t for t in TABLES}  # each record type has one table


def tables_by_topic(settings: Settings) -> dict[str, TableDef]:
    """The table each Kafka topic of ``settings`` lands in."""
    return {t.record.topic_name(settings): t for t in TABLES if t.record.topic is not None}


def _annotate_for_iceberg(avro_type: Any, ids: count[int]) -> Any:
    """Add the annotations pyiceberg's Avro converter expects of Iceberg-written Avro.

    Kafka Avro has no field ids, and its ``timestamp-micros`` is by the Avro
    spec an instant (UTC), which Iceberg spells ``adjust-to-utc``. Rather than
    re-implement the type mapping, we annotate a copy and let
    :class:`AvroSchemaConversion` do the conversion.
    """
    if isinstance(avro_type, list):
        return [_annotate_for_iceberg(t, ids) for t in avro_type]
    if not isinstance(avro_type, dict):
        return avro_type
    node = dict(avro_type)
    kind = node.get("type")
    if kind == "record":
        node["fields"] = [
            {**f, "field-id": next(ids), "type": _annotate_for_iceberg(f["type"], ids)} for f in node["fields"]
        ]
    elif kind == "array":
        node["element-id"] = next(ids)
        node["items"] = _annotate_for_iceberg(node["items"], ids)
    elif kind == "map":
        node["key-id"], node["value-id"] = next(ids), next(ids)
        node["values"] = _annotate_for_iceberg(node["values"], ids)
    elif node.get("logicalType") == "timestamp-micros":
        node["adjust-to-utc"] = True
    elif isinstance(kind, dict | list):
        node["type"] = _annotate_for_iceberg(kind, ids)
    return node


def iceberg_schema(record: RecordType) -> Schema:
    """The Iceberg schema of ``record``'s table, converted from its Avro schema."""
    return iceberg_schema_of(record.schema)


def iceberg_schema_of(avro_schema: dict[str, Any]) -> Schema:
    """An Avro record schema (a registered writer schema, say) as an Iceberg schema."""
    annotated = _annotate_for_iceberg(copy.deepcopy(avro_schema), count(1))
    return AvroSchemaConversion().avro_to_iceberg(annotated)


def readable_as(written: IcebergType, column: IcebergType) -> bool:
    """Whether values written as ``written`` can be stored in a column of type ``column``.

    Equal types, or a promotion Iceberg allows (int to long, float to double, a decimal to one
    of the same scale and a higher precision). Decimals are checked here: pyiceberg's own check
    compares the scale with itself (0.12), and a different scale would misplace the point.
    """
    if written == column:
        return True
    if not written.is_primitive or not column.is_primitive:  # lists, maps, structs: the same shape
        return str(written) == str(column)  # (their element and field ids differ between schemas)
    if isinstance(written, DecimalType) and isinstance(column, DecimalType):
        return written.scale == column.scale and written.precision <= column.precision
    try:
        promote(written, column)
    except ResolveError:
        return False
    return True


def evolve_to_read(table: Table, writer: Schema) -> str | None:
    """Make ``table`` able to hold records written with ``writer``; None, or why it cannot.

    The table reads what the writer wrote: every required column must be required in the
    writer too; a shared column keeps its type when the writer's is the same or narrower, and
    widens when the writer's is wider (:func:`readable_as` either way round); columns only the
    writer has are added as optional (older rows read back null), with pyiceberg's
    ``union_by_name``.
    """
    current = table.schema()
    for column in current.fields:
        theirs = writer.find_field(column.name, case_sensitive=True) if column.name in writer.column_names else None
        if column.required and (theirs is None or not theirs.required):
            return f"the table requires column {column.name}, which the writer schema " + (
                "lacks" if theirs is None else "makes optional"
            )
    fields = []
    for theirs in writer.fields:
        if theirs.name not in current.column_names:
            fields.append(theirs.model_copy(update={"required": False}))
            continue
        mine = current.find_field(theirs.name, case_sensitive=True)
        if readable_as(theirs.field_type, mine.field_type):
            fields.append(mine)
        elif readable_as(mine.field_type, theirs.field_type):
            fields.append(theirs.model_copy(update={"required": mine.required}))  # the table's column widens
        else:
            return f"column {mine.name}: the table's {mine.field_type} cannot hold the writer's {theirs.field_type}"
    update = table.update_schema()
    try:
        update.union_by_name(Schema(*fields))
        evolved = update._apply()  # pyiceberg's own checks, without committing (a private but stable method)
    except (IcebergValidationError, ValueError) as exc:
        return str(exc)
    if _columns(evolved) != _columns(current):
        update.commit()
    return None


def _columns(schema: Schema) -> dict[str, tuple[str, bool]]:
    return {f.name: (str(f.field_type), f.required) for f in schema.fields}


TableAction = Literal["created", "evolved", "unchanged"]


@dataclass(frozen=True)
class TableStatus:
    name: str
    action: TableAction
    location: str


def ensure_table(catalog: Catalog, namespace: str, table: TableDef) -> TableStatus:
    """Create ``table`` if missing; add columns its schema gained since. Never drops anything."""
    identifier = (namespace, table.name)
    desired = table.schema()
    if not catalog.table_exists(identifier):
        created = catalog.create_table_if_not_exists(
            identifier,
            schema=desired,
            partition_spec=table.partition_spec(desired),
            sort_order=table.sort_order(desired),
            properties=TABLE_PROPERTIES,
        )
        return TableStatus(table.name, "created", created.metadata_location)
    existing: Table = catalog.load_table(identifier)
    missing = {k: v for k, v in TABLE_PROPERTIES.items() if k != "format-version" and k not in existing.properties}
    if missing:  # tables created before a property was added get it (values an operator set are kept)
        with existing.transaction() as transaction:
            transaction.set_properties(missing)
    current = _columns(existing.schema())
    wanted = _columns(desired)
    if all(current.get(name) == spec for name, spec in wanted.items()):
        return TableStatus(table.name, "evolved" if missing else "unchanged", existing.metadata_location)
    try:
        with existing.update_schema() as update:
            update.union_by_name(desired)
    except (IcebergValidationError, ValueError) as exc:
        changed = sorted(n for n, spec in wanted.items() if current.get(n) not in (None, spec))
        raise SchemaError(
            f"table {namespace}.{table.name}: cannot evolve column(s) {', '.join(changed) or '?'} "
            f"to match {table.record.name}.avsc: {exc}"
        ) from exc
    return TableStatus(table.name, "evolved", existing.metadata_location)


def ensure_tables(catalog: Catalog, namespace: str) -> list[TableStatus]:
    """Create the namespace and every table in :data:`TABLES`; idempotent."""
    catalog.create_namespace_if_not_exists(namespace)
    return [ensure_table(catalog, namespace, table) for table in TABLES]
