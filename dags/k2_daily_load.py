"""
### k2_daily_load

Loads a trading day's vendor files and publishes the tables once the data is in and checked.
Runs on weekdays at 06:00 UTC; the trading date is the date its data interval ends on (the
param `trading_date` overrides it, e.g. for a manual run).

1. **find_files**: the day's files in `K2_LANDING/<format>/<YYYY-MM-DD>/` (param `formats`:
   only these). No files fails the run saying where it looked, or skips it with
   `on_no_files=skip` (holidays): never a silent success with zero rows.
2. **check_schemas**: every schema registered as it is, else fail (no retries) naming the
   subject: run `k2_schema_registration` first.
3. **load**: `k2 load` of the files with the trading date; rows of other days and bad rows are
   quarantined. Files loaded before are skipped (the load manifest): re-running a day, clearing a
   failed run or backfilling produces nothing twice.
4. **wait_landed**: until the streaming consumer has landed every record produced (the tables'
   offsets), in reschedule mode (no worker slot held), at most `K2_DAILY_LOAD_WAIT_SECONDS`.
5. **check_quality**: counts reconcile, every produced record is in its table by id, no
   duplicate ids, the record rules (k2_etl.records), the day's sequence events summarized; then the
   tables' assets are published (`k2.market_data.*`).

Backfill: `airflow backfill create --dag-id k2_daily_load --from-date 2026-11-02 --to-date 2026-11-06`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, CronTriggerTimetable, Param, chain, dag
from k2_airflow.operators import CheckSchemasOperator, DayQualityOperator, FindDayFilesOperator, LoadDayOperator
from k2_airflow.sensors import LandedSensor

from k2_etl.config import load_settings
from k2_etl.lake.tables import tables_by_topic

SETTINGS = load_settings()  # environment and k2.toml only: no connection at parse time
# The tables a load's records land in:
TABLE_ASSETS = [Asset(name=f"k2.{SETTINGS.namespace}.{t.name}", uri=f"iceberg://k2/{SETTINGS.namespace}/{t.name}")
                for t in tables_by_topic(SETTINGS).values()]  # fmt: skip


@dag(
    schedule=CronTriggerTimetable("0 6 * * 1-5", timezone="UTC", interval=timedelta(hours=6)),
    start_date=datetime(2026, 1, 1),
    catchup=False,  # past days are loaded with a backfill, on purpose
    max_active_runs=1,
    render_template_as_native_obj=True,  # params.formats stays a list (or None), not its text
    doc_md=__doc__,
    tags=["k2", "load"],
    default_args={
        "owner": "k2",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "execution_timeout": timedelta(hours=2),
    },
    params={
        "trading_date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="The day to load (YYYY-MM-DD); default: the run's data interval.",
        ),
        "formats": Param(None, type=["null", "array"], description="Only these formats' folders (default: all)."),
        "on_no_files": Param(
            SETTINGS.daily_load_on_no_files,
            enum=["fail", "skip"],
            description="A day without files: fail, or skip (default: K2_DAILY_LOAD_ON_NO_FILES).",
        ),
    },
)
def k2_daily_load() -> None:
    files = FindDayFilesOperator(task_id="find_files", formats="{{ params.formats }}",
                                 on_no_files="{{ params.on_no_files }}")  # fmt: skip
    schemas = CheckSchemasOperator(task_id="check_schemas", retries=0)
    loaded = LoadDayOperator(task_id="load", files=files.output)
    landed = LandedSensor(task_id="wait_landed", files=loaded.output, poke_interval=SETTINGS.daily_load_poke_seconds,
                          timeout=SETTINGS.daily_load_wait_seconds, retries=0)  # fmt: skip
    quality = DayQualityOperator(task_id="check_quality", files=loaded.output, outlets=TABLE_ASSETS, retries=0)
    chain(files, schemas, loaded, landed, quality)


k2_daily_load()
