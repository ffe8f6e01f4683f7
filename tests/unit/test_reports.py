"""A report reads the same wherever it is shown: `k2` prints these lines and the operators log them."""

from __future__ import annotations

from datetime import date

from k2_etl.jobs.quality import Check, DayQuality
from k2_etl.jobs.replay import ReplayReport
from k2_etl.lake.maintenance import OrphanReport
from k2_etl.lake.replace import Checksum, RangeReport
from k2_etl.reports import file_line, orphans_line, quality_lines, replay_lines, schema_check_lines
from k2_etl.schemas.registration import SchemaCheck


def _replay(dry_run: bool, after: Checksum) -> ReplayReport:
    held = Checksum(1500, "00000000000000ff")
    replaced = RangeReport("quotes", "2026-11-04T00:00:00+00:00", "2026-11-05T00:00:00+00:00", dry_run, held, after,
                           ids_added=0 if after == held else 2, ids_changed=0, files_replaced=3, files_written=1,
                           snapshot_before=11, snapshot_after=None if dry_run else 12)  # fmt: skip
    return ReplayReport("quotes", "kafka", 1502, 1500, 1, 1, 0, replaced=replaced)


def test_a_replay_reads_its_checksums_before_and_after() -> None:
    held = Checksum(1500, "00000000000000ff")
    dry = replay_lines(_replay(True, held))
    assert dry == [
        "quotes [2026-11-04T00:00:00+00:00, 2026-11-05T00:00:00+00:00) from kafka: read 1,502 records, "
        "1,500 in the range, 1 rejected, 1 repeated ids, 0 of rolled-back loads left out",
        "checksum before: 1,500 rows, digest 00000000000000ff",
        "checksum would be: 1,500 rows, digest 00000000000000ff (identical)",
    ]
    done = replay_lines(_replay(False, Checksum(1502, "0000000000000100")))
    assert done[2] == "checksum after: 1,502 rows, digest 0000000000000100 (2 ids added, 0 changed)"
    assert done[3] == "3 files replaced by 1; snapshot 11 -> 12"


def test_orphans_say_what_a_dry_run_would_delete() -> None:
    report = OrphanReport("trades", 1200, 1190, 10, 4096, ["a"] * 10, True, 0.5)
    assert orphans_line(report) == "trades: 1,200 files, 1,190 referenced; would delete 10 orphans (4,096 bytes)"
    report.dry_run = False
    assert "; deleted 10 orphans" in orphans_line(report)


def test_schema_checks_name_the_state_and_each_problem() -> None:
    checks = [
        SchemaCheck("trade", "k2.trades-value", "registered", 7, 2),
        SchemaCheck("quote", "k2.quotes-value", "registered", 8, 1, changed=True),
        SchemaCheck("reference_data", "k2.reference-value", "incompatible", problems=("price: removed",)),
    ]
    assert schema_check_lines(checks) == [
        "k2.trades-value (trade.avsc): already registered (id 7, version 2)",
        "k2.quotes-value (quote.avsc): registered now (id 8, version 1)",
        "k2.reference-value (reference_data.avsc): INCOMPATIBLE",
        "  price: removed",
    ]


def test_quality_and_a_loaded_file_read_as_one_line_each() -> None:
    quality = DayQuality(date(2026, 11, 2), [Check("every record landed", True, "1,000 of 1,000")])
    assert quality_lines(quality) == ["ok   every record landed: 1,000 of 1,000", "sequence events on 2026-11-02: none"]
    result = {"file": "t.csv", "status": "loaded", "rows_read": 1001, "rows_produced": 1000, "rows_rejected": 1,
              "rejected_by_reason": {"bad price": 1}, "message": None}  # fmt: skip
    assert file_line(result) == "t.csv: loaded, 1,001 read, 1,000 produced, 1 rejected (bad price 1)"
