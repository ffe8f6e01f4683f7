"""
### k2_replay

Re-processes a time range of **trades** or **quotes** and replaces exactly that range of the
table, in one Iceberg snapshot. Trigger it with params:

* `table`: `trades` or `quotes`;
* `start`, `end`: the range, end exclusive (`YYYY-MM-DD` is midnight UTC; ISO 8601 times and
  epoch numbers too: k2_etl.instants, the parser of every entry point);
* `source`: `kafka` (the topic, from the first record at or after `start`) or `landing` (the
  vendor files in `K2_LANDING/<format>/<trading date>/` for the range's days and one either side);
* `dry_run`: re-process and compare, change nothing.

The log shows the range's checksum (row count and a digest of every value but `ingest_time`)
before and after: identical when the source holds what the table held. Rows outside the range
stay; the consumers' offsets do not move. A replay never removes a row the table holds: when the
source lacks one (Kafka's retention, a moved file) the run fails, naming it, and changes nothing.
The same runs by hand as `k2 replay`. To undo a batch load instead, see `k2 rollback` (docs/operations.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag
from k2_airflow.operators import ReplayOperator

from k2_etl.jobs import REPLAY_SOURCES, REPLAYABLE


@dag(
    schedule=None,  # on demand: a replay is a repair
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two replays of one table would conflict (the second would start over)
    render_template_as_native_obj=True,  # params.dry_run stays a boolean
    doc_md=__doc__,
    tags=["k2", "replay", "iceberg"],
    default_args={
        "owner": "k2",
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "execution_timeout": timedelta(hours=2),
    },
    params={
        "table": Param("trades", enum=list(REPLAYABLE), description="The table to replay."),
        "start": Param(
            "2026-11-02",
            type="string",
            minLength=10,
            description="From (YYYY-MM-DD, ISO 8601 or epoch; UTC).",
        ),
        "end": Param("2026-11-03", type="string", minLength=10, description="To, exclusive."),
        "source": Param("kafka", enum=list(REPLAY_SOURCES), description="Where to re-read the records."),
        "dry_run": Param(False, type="boolean", description="Compare only; change nothing."),
    },
)
def k2_replay() -> None:
    ReplayOperator(
        task_id="replay",
        table="{{ params.table }}",
        start="{{ params.start }}",
        end="{{ params.end }}",
        source="{{ params.source }}",
        compare_only="{{ params.dry_run }}",
    )


k2_replay()
