"""Operators over K2's tables."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from k2_airflow.hooks import K2Hook
from k2_etl.errors import ConfigError, SchemaError
from k2_etl.lake.tables import TABLES_BY_NAME

# k2_etl's heavier modules (pyiceberg IO, numpy, confluent-kafka) are imported in execute():
# every scheduler parse of a DAG file imports this module.

MAINTENANCE_OPERATIONS = ("compact", "expire", "clean_orphans")


class TableMaintenanceOperator(BaseOperator):
    """One maintenance operation on one K2 table (see ``k2_etl.lake.maintenance``), safe while
    the consumer streams. Thresholds default to the K2_MAINTENANCE_* settings; the report
    (files, bytes, snapshots before and after) is logged and returned as the task's XCom.
    """

    template_fields = ("table", "min_files")

    def __init__(self, *, table: str, operation: str, min_files: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if operation not in MAINTENANCE_OPERATIONS:
            raise ConfigError(f"operation {operation!r}: one of {', '.join(MAINTENANCE_OPERATIONS)}")
        self.table = table
        self.operation = operation
        self.min_files = min_files

    def execute(self, context: Context) -> dict[str, Any]:
        from k2_etl.lake.maintenance import compact, expire_snapshots, remove_orphan_files

        if self.table not in TABLES_BY_NAME:
            raise ConfigError(f"not a K2 table: {self.table!r} (known: {', '.join(TABLES_BY_NAME)})")
        hook = K2Hook()
        settings = hook.settings
        table = hook.table(self.table)
        now = datetime.now(UTC)
        report: dict[str, Any]
        if self.operation == "compact":

            def done(p: Any) -> None:
                self.log.info("%s %s: %s, %d -> %d files", self.table, p.partition, p.outcome, p.files_before,
                              p.files_after)  # fmt: skip

            threshold = int(self.min_files or settings.maintenance_min_files)
            report = compact(table, TABLES_BY_NAME[self.table], min_files=threshold, on_partition=done).as_dict()
        elif self.operation == "expire":
            retention = timedelta(hours=settings.maintenance_snapshot_retention_hours)
            report = asdict(expire_snapshots(table, older_than=now - retention,
                                             retain_last=settings.maintenance_retain_snapshots))  # fmt: skip
        else:
            window = timedelta(hours=settings.maintenance_orphan_age_hours)
            report = asdict(remove_orphan_files(table, older_than=now - window))
            report["removed"] = len(report["removed"])  # the count in XCom; the paths in the log
        self.log.info("%s %s: %s", self.operation, self.table, {k: v for k, v in report.items() if k != "partitions"})
        return report


class RegisterSchemasOperator(BaseOperator):
    """Register every K2 schema in the schema registry (idempotent, all or nothing).

    An incompatible schema fails the task at once, without retries (retrying cannot fix it), with
    the registry's reason naming the subject and the field; an unreachable registry is retried.
    Returns each subject's state, version and schema id (XCom).
    """

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from k2_etl.schemas.registration import register_schemas

        try:
            checks = register_schemas(K2Hook().settings)
        except SchemaError as exc:
            raise AirflowFailException(str(exc)) from exc
        for check in checks:
            self.log.info("%s (%s.avsc): %s, version %s, id %s", check.subject, check.record_type,
                          "registered" if check.changed else "already registered", check.version,
                          check.schema_id)  # fmt: skip
        return [asdict(check) for check in checks]
