"""How a compaction commit's cost grows with the streaming history it sits on (a known limit).

The consumer commits about once a second, each commit one small file per day partition it
touched. A compaction's commit must beat the next consumer commit, or it conflicts and starts
over. This measures, for tables built by N appends that each touch 3 day partitions (as a feed
of late records does), the time of compaction's commit of the first partition: pyiceberg
rewrites every manifest holding a file it replaces. Reported as the ratio to the smallest N, run
in the same process. No broker: the table is built by appends like the consumer's.

Run: ``.venv/bin/python bench/compaction_commit_bench.py [N ...]`` (default 50 100 200).
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import save_result
from k2_etl.lake import maintenance
from k2_etl.lake.tables import TABLES_BY_NAME
from tests.integration.lake_helpers import batch, land_batches, trades_table


def measure(appends: int) -> dict[str, Any]:
    _, table = trades_table(Path(tempfile.mkdtemp(prefix="k2-bench-commit-")))
    batches = [pa.concat_tables([batch(table, [f"x{d}-{b}-{i}" for i in range(3)], day=d) for d in range(3)])
               for b in range(appends)]  # fmt: skip
    started = time.perf_counter()
    land_batches(table, batches)
    building = time.perf_counter() - started
    commit = maintenance._commit_rewrite
    spent: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> None:
        began = time.perf_counter()
        try:
            commit(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - began)

    maintenance._commit_rewrite = timed  # type: ignore[assignment]
    try:
        report = maintenance.compact(table, TABLES_BY_NAME["trades"], min_files=2)
    finally:
        maintenance._commit_rewrite = commit
    return {
        "appends": appends,
        "build_seconds": round(building, 1),
        "first_commit_seconds": round(spent[0], 3),
        "commit_seconds": [round(s, 3) for s in spent],
        "outcomes": [p.outcome for p in report.partitions],
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [50, 100, 200]
    runs = []
    for size in sizes:
        runs.append(measure(size))
        print(runs[-1], flush=True)
    base = runs[0]["first_commit_seconds"]
    for run in runs:
        run["ratio_to_smallest"] = round(run["first_commit_seconds"] / base, 1)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    save_result("compaction_commit", {"what": __doc__.splitlines()[0], "when": when, "runs": runs})


if __name__ == "__main__":
    main()
