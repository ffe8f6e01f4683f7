"""
### k2_maintenance

Keeps K2's Iceberg tables fast while the streaming consumer writes them, every hour:

1. **compact** each table: partitions holding at least `min_files` data files are rewritten into
   large files sorted by the table's sort order, dropping duplicate ids; one commit per partition
   replaces exactly the files it read, so rows landed meanwhile stay;
2. **expire** snapshots older than `K2_MAINTENANCE_SNAPSHOT_RETENTION_HOURS`, keeping the newest
   `K2_MAINTENANCE_RETAIN_SNAPSHOTS`, tagged ones and the consumers' offsets;
3. **clean_orphans**: delete files no snapshot references, older than
   `K2_MAINTENANCE_ORPHAN_AGE_HOURS`.

Each task's report (files, bytes, snapshots before and after) is in its log and XCom. The same
operations run by hand as `k2 compact`, `k2 expire` and `k2 clean-orphans`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, chain, dag, get_current_context, task
from k2_airflow.operators import TableMaintenanceOperator

from k2_etl.lake.tables import TABLES_BY_NAME


@dag(
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,  # maintenance acts on the tables as they are now; past hours need no run
    max_active_runs=1,
    render_template_as_native_obj=True,  # params.min_files stays None or an int, not text
    doc_md=__doc__,
    tags=["k2", "maintenance", "iceberg"],
    default_args={
        "owner": "k2",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "execution_timeout": timedelta(hours=2),
    },  # a stuck run must not block the next hours
    params={
        "tables": Param(
            list(TABLES_BY_NAME), type="array", items={"enum": list(TABLES_BY_NAME)}, description="Tables to maintain."
        ),
        "min_files": Param(
            None,
            type=["null", "integer"],
            minimum=2,
            description="Compact partitions with this many files or more (default: the setting).",
        ),
    },
)
def k2_maintenance() -> None:
    @task
    def chosen_tables() -> list[str]:
        return list(get_current_context()["params"]["tables"])

    tables = chosen_tables()
    chain(
        tables,
        *(
            TableMaintenanceOperator.partial(
                task_id=operation, operation=operation, min_files="{{ params.min_files }}"
            ).expand(table=tables)
            for operation in ("compact", "expire", "clean_orphans")
        ),
    )


k2_maintenance()
