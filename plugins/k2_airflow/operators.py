"""Operators over K2's tables."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from k2_airflow.hooks import K2Hook
from k2_etl.errors import ConfigError, QueryError, SchemaError
from k2_etl.instants import parse_day
from k2_etl.lake.tables import TABLES_BY_NAME
from k2_etl.observability import DAILY_LOAD_SCOPE, batch_job
from k2_etl.reports import (
    compaction_line,
    expiry_line,
    file_line,
    orphans_line,
    partition_line,
    quality_lines,
    replay_lines,
    schema_check_lines,
)

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
        if self.table not in TABLES_BY_NAME:
            raise ConfigError(f"not a K2 table: {self.table!r} (known: {', '.join(TABLES_BY_NAME)})")
        hook = K2Hook()
        with batch_job(hook.settings, f"k2_{self.operation}", self.log.warning, self.table):
            return self._run(hook)

    def _run(self, hook: K2Hook) -> dict[str, Any]:
        from k2_etl.lake.maintenance import compact, expire_snapshots, remove_orphan_files

        settings = hook.settings
        table = hook.table(self.table)
        now = datetime.now(UTC)
        if self.operation == "compact":

            def done(p: Any) -> None:
                self.log.info("%s", partition_line(self.table, p))

            threshold = int(self.min_files or settings.maintenance_min_files)
            compacted = compact(table, TABLES_BY_NAME[self.table], min_files=threshold, on_partition=done)
            self.log.info("compact %s", compaction_line(compacted))
            return compacted.to_dict()
        if self.operation == "expire":
            retention = timedelta(hours=settings.maintenance_snapshot_retention_hours)
            expired = expire_snapshots(table, older_than=now - retention,
                                       retain_last=settings.maintenance_retain_snapshots)  # fmt: skip
            self.log.info("expire %s", expiry_line(expired))
            return expired.to_dict()
        window = timedelta(hours=settings.maintenance_orphan_age_hours)
        orphans = remove_orphan_files(table, older_than=now - window)
        self.log.info("clean_orphans %s", orphans_line(orphans))
        return {**orphans.to_dict(), "removed": len(orphans.removed)}  # the count: the paths can be many


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
        for line in schema_check_lines(checks):
            self.log.info("%s", line)
        return [check.to_dict() for check in checks]


# --- the daily load ---------------------------------------------------------------------------
def _trading_day(value: object) -> date:
    """The operator's ``day`` (a rendered template): a bad one fails the task at once, since
    retrying cannot mend it."""
    try:
        return parse_day("day", str(value))
    except QueryError as exc:
        raise AirflowFailException(str(exc)) from exc


#: The trading date of a daily-load run: the ``trading_date`` param, else the date its data
#: interval ends on (the DAG's timetable ends intervals on the trading day, after the close).
TRADING_DATE = "{{ params.trading_date or data_interval_end.strftime('%Y-%m-%d') }}"


class FindDayFilesOperator(BaseOperator):
    """The day's files in the landing folder, by format (XCom: {format: [paths]}).

    No files is never a silent success: the task fails saying where it looked, or, with
    ``on_no_files="skip"``, is skipped (and the load after it) saying the same.
    """

    template_fields = ("day", "formats", "on_no_files")

    def __init__(self, *, day: str = TRADING_DATE, formats: Any = None, on_no_files: str = "fail",
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.day, self.formats, self.on_no_files = day, formats, on_no_files

    def execute(self, context: Context) -> dict[str, list[str]]:
        from k2_etl.ingest.landing import day_files, landing_folder

        settings = K2Hook().settings
        day = _trading_day(self.day)
        formats = list(self.formats) if self.formats else None
        files = day_files(settings, day, formats)
        if not files:
            where = landing_folder(settings) / ("{" + ",".join(formats) + "}" if formats else "<format>") / str(day)
            message = f"no files for {day} in {where} (K2_LANDING); nothing to load"
            if self.on_no_files == "skip":
                raise AirflowSkipException(message)
            raise AirflowFailException(message + " (set the param on_no_files=skip for days without files)")
        for name, paths in files.items():
            self.log.info("%s: %d files for %s", name, len(paths), day)
        return {name: [str(p) for p in paths] for name, paths in files.items()}


class CheckSchemasOperator(BaseOperator):
    """Fails (no retries) unless every K2 schema is registered as it is: nothing is loaded with
    an unregistered or incompatible schema."""

    def execute(self, context: Context) -> None:
        from k2_etl.schemas.registration import check_schemas

        checks = check_schemas(K2Hook().settings)
        bad = [f"{c.subject} is {c.state}{': ' + ' | '.join(c.problems) if c.problems else ''}"
               for c in checks if c.state != "registered"]  # fmt: skip
        if bad:
            raise AirflowFailException("; ".join(bad) + "; run the k2_schema_registration DAG (or k2 schemas register)")
        self.log.info("all %d schemas registered", len(checks))


class _DayOperator(BaseOperator):
    """An operator on a trading day (``day``) and the files of an earlier task's XCom (``files``)."""

    template_fields = ("day", "files")

    def __init__(self, *, files: Any, day: str = TRADING_DATE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.day, self.files = day, files


class LoadDayOperator(_DayOperator):
    """Load the day's files (``files``: FindDayFilesOperator's XCom) with the day as their trading
    date. Files loaded before are skipped (the load manifest), so a re-run or a cleared run
    produces nothing twice. XCom: each file's result (status, counts, offsets produced)."""

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from pathlib import Path

        from k2_etl.ingest.landing import load_day

        day = _trading_day(self.day)
        settings = K2Hook().settings
        with batch_job(settings, "k2_load", self.log.warning, DAILY_LOAD_SCOPE):
            loaded = load_day(settings, day, {name: [Path(p) for p in paths] for name, paths in self.files.items()})
            for f in loaded.files:
                self.log.info("%s", file_line(f))
            failed = [f"{f['file']}: {f.get('message')}" for f in loaded.files if f["status"] == "failed"]
            if failed:
                raise AirflowFailException(f"{len(failed)} files failed to load: " + "; ".join(failed))
            return loaded.files


class DayQualityOperator(_DayOperator):
    """The day's data-quality checks (``k2_etl.jobs.quality``) once landed (``files``:
    LoadDayOperator's XCom); fails naming every check that failed. Its outlets are the tables'
    assets: published only when the checks pass."""

    def execute(self, context: Context) -> dict[str, Any]:
        from k2_etl.jobs.quality import check_day

        settings = K2Hook().settings
        with batch_job(settings, "k2_day_quality", self.log.warning):
            quality = check_day(settings, _trading_day(self.day), self.files)
            for line in quality_lines(quality):
                self.log.info("%s", line)
            if not quality.ok:
                raise AirflowFailException(f"data quality of {self.day}: {quality.failures()}")
            return quality.to_dict()


# --- replay -----------------------------------------------------------------------------------
class ReplayOperator(BaseOperator):
    """Re-process ``[start, end)`` of a table from Kafka or the landing files and replace exactly
    that range in one snapshot (``k2_etl.jobs.replay``); ``compare_only``: a dry run. Logs the
    range's checksum before and after; XCom: the report.

    Fails without retries when retrying cannot help: bad arguments, or a source lacking rows
    the table holds (a replay never removes data).
    """

    template_fields = ("table", "start", "end", "source", "compare_only")

    def __init__(self, *, table: str, start: str, end: str, source: str = "kafka", compare_only: Any = False,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.table, self.start, self.end, self.source = table, start, end, source
        self.compare_only = compare_only  # (BaseOperator has a dry_run method)

    def execute(self, context: Context) -> dict[str, Any]:
        from k2_etl.instants import parse_time
        from k2_etl.jobs.replay import replay
        from k2_etl.lake.replace import ReplaceError

        settings = K2Hook().settings
        try:
            start, end = parse_time("start", str(self.start)), parse_time("end", str(self.end))
            with batch_job(settings, "k2_replay", self.log.warning, str(self.table), _flag(self.compare_only)):
                report = replay(settings, str(self.table), start, end, source=self.source,  # type: ignore[arg-type]
                                dry_run=_flag(self.compare_only))  # fmt: skip
        except (ConfigError, QueryError, ReplaceError) as exc:
            raise AirflowFailException(str(exc)) from exc
        for line in replay_lines(report):
            self.log.info("%s", line)
        return report.to_dict()


def _flag(value: Any) -> bool:
    """A boolean param rendered natively (True/False) or as text ("true", "False", ...)."""
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false"):
            raise AirflowFailException(f"dry_run={value!r}: true or false")
        return value.strip().lower() == "true"
    return bool(value)
