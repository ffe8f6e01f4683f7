"""A/B of two `k2 consume` processes: this tree's consumer against another tree's, alternating.

The stream benchmark's two-process ratio moves between runs on this shared 2-core machine; a
single before/after pair cannot tell a change from noise. This lands the same pre-filled topics
with two consumers of each version in turn (fresh namespace and group each time), so both see
the same machine over the same minutes.

    .venv/bin/python bench/stream_ab.py --other /path/to/old/checkout [--rounds 3] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import stream_bench
from bench.harness import bench_platform, save_result
from tests.helpers import env_of, free_port, run_k2


def _commit(path: Path) -> str:
    """The commit a checkout is at (what the A/B compared), with "+changes" when its tree is dirty."""
    where = path if path.is_dir() else path.parent
    head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    return head + ("+changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="checkout of the other version (its k2_etl)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000, help="trades to generate (about)")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"this": [], "other": []}
    platform = bench_platform(
        "stream_ab",
        args.rows,
        stream_metrics_port=free_port(),
        topic_partitions=4,
        stream_session_timeout_seconds=6,
        stream_max_poll_interval_seconds=7,
    )  # as stream_bench
    with platform as (settings, work, gen):
        env = {**env_of(settings), "K2_INGEST_METRICS_PORT": "0"}
        loaded = run_k2(env, "load", str(work / "data"), "--format", "k2", "--json", timeout=900)
        assert loaded.returncode == 0, loaded.stderr
        for round_ in range(args.rounds):
            for version in ("this", "other") if round_ % 2 == 0 else ("other", "this"):
                name = f"{version}{round_}"
                other = {"PYTHONPATH": str(args.other.resolve())} if version == "other" else None
                run = stream_bench.k2_consume(
                    settings.model_copy(update={"namespace": name, "stream_group": name}), gen.trades, 2, other
                )
                run.pop("counts")
                runs[version].append(run)
                print(version, round_, run["rows_per_second"], run["cpu_seconds_per_1000_rows"], flush=True)
    summary = {v: {"rows_per_second_median": statistics.median(r["rows_per_second"] for r in rs),
                   "cpu_seconds_per_1000_rows_median": statistics.median(r["cpu_seconds_per_1000_rows"] for r in rs)}
               for v, rs in runs.items()}  # fmt: skip
    result = {"benchmark": "stream_ab", "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "other": str(args.other), "other_commit": _commit(args.other), "this_commit": _commit(Path(__file__)),
              "trades": gen.trades, "processes": 2, "runs": runs, "summary": summary,
              "ratio_this_to_other": round(summary["this"]["rows_per_second_median"]
                                           / summary["other"]["rows_per_second_median"], 3)}  # fmt: skip
    print(summary, result["ratio_this_to_other"])
    save_result("stream_ab", result)


if __name__ == "__main__":
    main()
