"""The daily load's parts on the real platform: the landing folder, loading a day, and the quality
checks once the real consumer has landed it (records read back from Kafka, found by id)."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest
from pyiceberg.expressions import EqualTo

from k2_etl.config import Settings
from k2_etl.errors import ConfigError
from k2_etl.ingest.landing import day_files, load_day
from k2_etl.jobs.quality import check_day
from k2_etl.lake.catalog import open_catalog
from tests.integration.query_helpers import SAMPLE, land_everything, streaming_platform

DAY = date(2026, 11, 2)


@pytest.fixture(scope="module")
def landed_day(platform_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict]:
    """The sample day put in the landing folder, loaded by load_day and landed by the real consumer."""
    home = tmp_path_factory.mktemp("daily")
    settings = streaming_platform(platform_settings, home)
    folder = home / "landing" / "k2" / DAY.isoformat()
    shutil.copytree(SAMPLE / DAY.isoformat(), folder)
    shutil.copy(SAMPLE / "reference_data.csv", folder)
    (folder / "trades_LATE.csv.part").write_text("still arriving")  # a transfer in progress: left alone
    files = day_files(settings, DAY)
    loaded = load_day(settings, DAY, files)
    assert loaded.ok, loaded.to_dict()
    land_everything(settings, loaded.files)
    return settings, loaded.to_dict()


def test_the_days_files_are_found_by_format_and_transfers_in_progress_left_alone(
    landed_day: tuple[Settings, dict],
) -> None:
    settings, loaded = landed_day
    files = day_files(settings, DAY)
    assert list(files) == ["k2"]
    assert sorted(p.name for p in files["k2"]) == sorted(
        [*(p.name for p in (SAMPLE / DAY.isoformat()).iterdir()), "reference_data.csv"]
    )
    assert day_files(settings, date(2026, 11, 3)) == {}
    assert [f["status"] for f in loaded["reports"]["k2"]["files"]] == ["loaded"] * 5


def test_quality_checks_pass_and_loading_the_day_again_changes_nothing(landed_day: tuple[Settings, dict]) -> None:
    settings, loaded = landed_day
    quality = check_day(settings, DAY, [f for r in loaded["reports"].values() for f in r["files"]])
    assert quality.ok, quality.failures()
    assert [c.name for c in quality.checks] == ["counts reconcile", "every record landed", "no duplicate ids",
                                               "records follow the rules"]  # fmt: skip
    assert quality.sequence_events  # the sample has gaps and resets to summarize
    trades = open_catalog(settings).load_table((settings.namespace, "trades"))
    before = trades.current_snapshot()

    again = load_day(settings, DAY, day_files(settings, DAY))

    assert {f["status"] for f in again.files} == {"skipped"}
    assert [f["offsets"] for f in again.files] == [f["offsets"] for r in loaded["reports"].values() for f in r["files"]]
    assert check_day(settings, DAY, again.files).ok
    trades.refresh()
    assert trades.current_snapshot() == before


def test_a_record_missing_from_its_table_fails_the_check_naming_the_table(
    landed_day: tuple[Settings, dict], tmp_path: Path
) -> None:
    settings, loaded = landed_day
    files = [f for r in loaded["reports"].values() for f in r["files"]]
    quotes = open_catalog(settings).load_table((settings.namespace, "quotes"))
    victim = quotes.scan(selected_fields=("event_id",), limit=1).to_arrow().column("event_id")[0].as_py()
    quotes.delete(EqualTo("event_id", victim))  # type: ignore[call-arg,arg-type]
    quality = check_day(settings, DAY, files)
    assert not quality.ok
    [landed] = [c for c in quality.checks if c.name == "every record landed"]
    assert not landed.ok and "quotes: 1 of" in landed.detail and victim in landed.detail


def test_a_landing_folder_that_is_not_a_format_is_named(landed_day: tuple[Settings, dict]) -> None:
    settings, _ = landed_day
    stray = settings.landing / "nosuchformat" / DAY.isoformat()  # type: ignore[operator]
    stray.mkdir(parents=True)
    (stray / "x.csv").write_text("a\n1\n")
    try:
        with pytest.raises(ConfigError, match="nosuchformat"):
            day_files(settings, DAY)
        assert list(day_files(settings, DAY, ["k2"])) == ["k2"]
    finally:
        shutil.rmtree(stray.parent)
