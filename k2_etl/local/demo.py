"""`k2 demo`: the bundled sample day through the daily load, as a new user's first run.

The sample (``data/sample/<format>/<YYYY-MM-DD>/``, reference files beside the day folder) is
copied into the landing folder as the daily load expects it (``<K2_LANDING>/<format>/<day>/``,
reference files inside the day folder), then ``k2_daily_load`` is triggered for that day in the
local Airflow, so the UI shows the DAG doing the work. Both steps are idempotent: files already
in place are left alone, and the run has a fixed id (``k2_sample__<day>``), so a second
`make run` reports the run it made the first time.
"""

from __future__ import annotations

import csv
import filecmp
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from k2_etl.config import Settings
from k2_etl.errors import ComponentError, ConfigError
from k2_etl.ingest.landing import landing_folder
from k2_etl.local.airflow import REPO, AirflowApi

if TYPE_CHECKING:
    from k2_etl.ingest.landing import DayLoad
    from k2_etl.jobs.quality import DayQuality

SAMPLE = REPO / "data" / "sample"
DAG_ID = "k2_daily_load"
DAG_PARSE_TIMEOUT_SECONDS = 180.0
FINISHED = ("success", "failed")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")

Say = Callable[[str], None]


@dataclass
class Placed:
    """What placing one format's sample day did."""

    format: str
    folder: Path
    copied: list[str] = field(default_factory=list)
    unchanged: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "folder": str(self.folder), "copied": self.copied, "unchanged": self.unchanged}


def sample_day(sample: Path = SAMPLE) -> date:
    """The trading date of the bundled sample (its one day folder, the same in every format)."""
    days = {p.name for p in sample.glob("*/*") if p.is_dir() and _DAY.match(p.name)}
    if len(days) != 1:
        raise ConfigError(f"expected one day folder (YYYY-MM-DD) in the sample at {sample}, found {sorted(days)}")
    return date.fromisoformat(days.pop())


def sample_symbol(sample: Path = SAMPLE) -> str:
    """A symbol of the sample, for the example query printed at the end."""
    with (sample / "k2" / "reference_data.csv").open(newline="") as handle:
        return str(next(csv.DictReader(handle))["symbol"])


def place_sample(settings: Settings, sample: Path = SAMPLE) -> list[Placed]:
    """Copy the sample day into the landing folder; files already there and equal are left alone.

    Each file is written as ``<name>.part`` and renamed, so a daily load running meanwhile never
    reads half a file (the landing folder ignores ``.part`` files).
    """
    if not sample.is_dir():
        raise ConfigError(f"no bundled sample at {sample}: `k2 demo` runs from a source checkout")
    day = sample_day(sample).isoformat()
    placed: list[Placed] = []
    for source in sorted(p for p in sample.iterdir() if (p / day).is_dir()):
        target = landing_folder(settings) / source.name / day
        done = Placed(source.name, target)
        files = [(f, f.relative_to(source / day)) for f in sorted((source / day).rglob("*")) if f.is_file()]
        files += [(f, Path(f.name)) for f in sorted(source.iterdir()) if f.is_file()]  # reference data: in the day
        for src, relative in files:
            dst = target / relative
            if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
                done.unchanged += 1
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            partial = dst.with_name(dst.name + ".part")
            shutil.copyfile(src, partial)
            os.replace(partial, dst)
            done.copied.append(str(relative))
        placed.append(done)
    return placed


def run_id(day: date) -> str:
    return f"k2_sample__{day.isoformat()}"


def trigger_daily_load(api: AirflowApi, day: date, say: Say) -> dict[str, Any]:
    """Trigger k2_daily_load for ``day`` (unpausing it if it is paused), or return the run
    triggered before (same id): a second `make run` neither fails nor loads twice."""
    dag = api.wait_for_dag(DAG_ID, DAG_PARSE_TIMEOUT_SECONDS)
    if dag.get("is_paused"):
        api.request("PATCH", f"/api/v2/dags/{DAG_ID}", params={"update_mask": "is_paused"}, json={"is_paused": False})
        say(f"airflow: unpaused {DAG_ID}")
    runs = f"/api/v2/dags/{DAG_ID}/dagRuns"
    body = {"dag_run_id": run_id(day), "logical_date": None, "conf": {"trading_date": day.isoformat()},
            "note": "The bundled sample day, triggered by `k2 demo` (make run)."}  # fmt: skip
    existing = api.request("GET", f"{runs}/{run_id(day)}", ok=(200, 404))
    if existing.status_code == 404:
        created = api.request("POST", runs, json=body, ok=(200, 409))  # 409: another `k2 demo` was quicker
        if created.status_code == 200:
            run: dict[str, Any] = created.json()
            say(f"airflow: triggered {DAG_ID} for {day} (run {run['dag_run_id']})")
            return run
        existing = api.request("GET", f"{runs}/{run_id(day)}")
    run = existing.json()
    say(f"airflow: {DAG_ID} run {run['dag_run_id']} was triggered before; it is {run['state']}")
    return run


def wait_for_run(api: AirflowApi, run: dict[str, Any], timeout: float, say: Say) -> dict[str, Any]:
    """Poll the run until it succeeds or fails, saying each state it passes through."""
    deadline = time.monotonic() + timeout
    state = run["state"]
    while state not in FINISHED:
        if time.monotonic() > deadline:
            raise ComponentError(
                f"airflow: {DAG_ID} run {run['dag_run_id']} still {state} after {timeout:g} s; see it in the UI"
            )
        time.sleep(2.0)
        run = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}").json()
        if run["state"] != state:
            state = run["state"]
            say(f"airflow: {DAG_ID} run {run['dag_run_id']}: {state}")
    return run


def daily_load_here(
    settings: Settings, day: date, say: Say, timeout: float, warn: Say, loaded_report: Callable[[DayLoad], None]
) -> tuple[DayLoad, DayQuality | None]:
    """The daily load's steps in this process, for a platform without Airflow: load the day's
    files, wait (up to ``timeout`` seconds) until the consumer has landed what they produced, then
    run the day's quality checks. Each step pushes its metrics as the DAG's tasks do."""
    from k2_etl.ingest.landing import day_files, load_day
    from k2_etl.jobs.quality import check_day
    from k2_etl.lake.progress import files_pending
    from k2_etl.observability import DAILY_LOAD_SCOPE, batch_job

    files = day_files(settings, day)
    with batch_job(settings, "k2_load", warn, DAILY_LOAD_SCOPE) as outcome:
        loaded = load_day(settings, day, files)
        outcome.succeeded = loaded.ok
    loaded_report(loaded)
    if not loaded.ok:
        return loaded, None
    deadline = time.monotonic() + timeout
    while files_pending(settings, loaded.files)[1]:
        if time.monotonic() > deadline:
            raise ComponentError(f"the consumer has not landed the sample day within {timeout:g} s; is it running?")
        time.sleep(0.5)
    say("landed: every record the load produced is in the tables")
    with batch_job(settings, "k2_day_quality", warn) as outcome:
        quality = check_day(settings, day, loaded.files)
        outcome.succeeded = quality.ok
    return loaded, quality
