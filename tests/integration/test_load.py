"""`k2 load` end to end: real broker, registry and catalog; messages read back and decoded."""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from k2_etl.config import Settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.manifest import Manifest
from tests.helpers import REPO
from tests.integration.ingest_helpers import file_result, load, messages_of

SAMPLE = REPO / "data" / "sample"


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_sample_loads_exactly(ready: Settings) -> None:
    report = load(ready, str(SAMPLE / "k2"), "--format", "k2")
    assert report["ok"] and report["totals"]["rows_rejected"] == 0
    trades_files = sorted((SAMPLE / "k2").rglob("trades_*.csv"))
    expected_trades = [row for path in trades_files for row in csv_rows(path)]
    for f in report["files"]:
        assert f["status"] == "loaded"
        assert f["rows_read"] == f["rows_produced"] + f["rows_rejected"]
    trades = messages_of(ready, report, "trades")
    quotes = messages_of(ready, report, "quotes")
    reference = messages_of(ready, report, "reference_data")
    assert len(trades) == len(expected_trades)
    assert len(quotes) == sum(len(csv_rows(p)) for p in (SAMPLE / "k2").rglob("quotes_*.csv"))
    assert len(reference) == len(csv_rows(SAMPLE / "k2" / "reference_data.csv"))
    # prices are exactly the CSV's digits; ids are unique; keys and timestamps as promised
    # (sequence numbers repeat: the sample has resets and duplicates; with the time they identify a trade)
    by_key = {(t.value["exchange"], t.value["symbol"], t.value["sequence_number"], t.value["event_time"]): t
              for t in trades}  # fmt: skip
    assert len(by_key) == len(trades)
    for row in expected_trades:
        at = datetime.fromisoformat(row["event_time"])
        message = by_key[(row["exchange"], row["symbol"], int(row["sequence_number"]), at)]
        assert message.value["price"] == Decimal(row["price"])
        assert str(message.value["price"].normalize()) == str(Decimal(row["price"]).normalize())
        assert message.value["size"] == Decimal(row["size"])
        assert message.key == row["symbol"].encode()
        assert message.timestamp_ms == int(message.value["event_time"].timestamp() * 1000)
        assert message.headers["k2-record-type"] == b"trade"
    assert len({t.value["event_id"] for t in trades}) == len(trades)
    flags = Counter(flag for q in quotes for flag in q.value["quality_flags"])
    assert flags["one_sided"] >= 1 and flags["crossed"] >= 1 and flags["locked"] >= 1  # --anomalies sample


def test_exchange_format_headerless(ready: Settings, tmp_path: Path) -> None:
    root = tmp_path / "asx"
    (root / "d" / "trades").mkdir(parents=True)
    (root / "d" / "quotes").mkdir(parents=True)
    (root / "company_info.csv").write_text(
        "company_id,symbol,company_name,ISIN,start_date,end_date\n"
        '7001,BHP,"BHP Group, Limited",AU000000BHP4,01/01/2000,\n'
    )
    # 2026-10-04 02:30 does not exist in Sydney (clocks go 02:00 -> 03:00); 2026-10-03 is still AEST (+10),
    # 2026-10-05 is AEDT (+11); 09:00 is before the open.
    (root / "d" / "trades" / "7001.csv").write_text(
        "10/03/2026,10:00:00.000,45.10,100,XT,CXA,B1\n"
        "10/05/2026,10:00:00.250,45.20,200,,,\n"
        "10/05/2026,09:00:00.000,45.30,300,,,\n"
        "10/04/2026,02:30:00.000,45.40,400,,,\n"
    )
    (root / "d" / "trades" / "9999.csv").write_text("10/05/2026,10:00:00.000,1.00,1,,,\n")
    (root / "d" / "quotes" / "7001.csv").write_text(
        "10/05/2026,10:00:01.000,45.10,45.12,100,200\n"
        "10/05/2026,10:00:02.000,,45.12,,200\n"
        "10/05/2026,10:00:03.000,0,45.12,0,200\n"
        "10/05/2026,10:00:04.000,45.13,45.12,10,10\n"
        "10/05/2026,10:00:05.000,45.12,45.12,10,10\n"
    )
    report = load(ready, str(root), "--format", "asx", expect_rc=1)  # 9999.csv fails entirely
    unknown = file_result(report, "trades/9999.csv")
    assert unknown["status"] == "failed" and unknown["rejected_by_reason"] == {"unknown_symbol": 1}
    trades_file = file_result(report, "trades/7001.csv")
    assert (trades_file["rows_read"], trades_file["rows_produced"], trades_file["rows_rejected"]) == (4, 3, 1)
    assert trades_file["rejected_by_reason"] == {"nonexistent_local_time": 1}
    trades = sorted(messages_of(ready, report, "trades"), key=lambda m: m.value["sequence_number"])
    assert [t.value["symbol"] for t in trades] == ["BHP"] * 3
    assert [t.value["event_time"].isoformat() for t in trades] == [
        "2026-10-03T00:00:00+00:00",  # 10:00 AEST
        "2026-10-04T23:00:00.250000+00:00",  # 10:00:00.250 AEDT
        "2026-10-04T22:00:00+00:00",  # 09:00 AEDT
    ]
    assert trades[0].value["conditions"] == ["XT"] and trades[0].value["venue"] == "CXA"
    assert trades[0].value["buyer_id"] == "B1" and trades[1].value["venue"] is None
    assert trades[2].value["quality_flags"] == ["sequence_assigned", "outside_regular_hours"]
    assert [t.value["sequence_number"] for t in trades] == [1, 1, 2]  # per (symbol, trading day), file order
    quotes = sorted(messages_of(ready, report, "quotes"), key=lambda m: m.value["sequence_number"])
    assert len(quotes) == 5
    assert quotes[1].value["bid_price"] is None and "one_sided" in quotes[1].value["quality_flags"]
    assert quotes[2].value["bid_price"] is None and quotes[2].value["bid_size"] is None  # zero = empty side
    assert "crossed" in quotes[3].value["quality_flags"] and "locked" in quotes[4].value["quality_flags"]
    rejects = messages_of(ready, report, "dead_letters")
    reasons = {r.value["line_number"]: r.value["reason"] for r in rejects if r.value["source"].endswith("7001.csv")}
    assert reasons == {4: "7001.csv line 4: \"10/04/2026 02:30:00.000\" does not exist in Australia/Sydney "
                          "(daylight-saving change)"}  # fmt: skip
    [unknown_reject] = [r for r in rejects if r.value["source"].endswith("9999.csv")]
    assert "instrument 9999 (from the file name) has no symbol in company_info.csv" in unknown_reject.value["reason"]
    assert unknown_reject.value["raw_line"] == "10/05/2026,10:00:00.000,1.00,1,,,"


def test_rerun_force_and_manifest(ready: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "day"
    folder.mkdir()
    source = SAMPLE / "k2" / "2026-11-02" / "trades_CXA.csv"
    (folder / "trades_CXA.csv.gz").write_bytes(gzip.compress(source.read_bytes()))
    first = load(ready, str(folder), "--format", "k2")
    [entry] = first["files"]
    assert entry["status"] == "loaded" and entry["rows_produced"] == len(csv_rows(source))
    again = load(ready, str(folder), "--format", "k2")
    assert again["files"][0]["status"] == "skipped" and again["totals"]["rows_produced"] == 0
    assert "already loaded" in again["files"][0]["message"]
    forced = load(ready, str(folder), "--format", "k2", "--force")
    assert forced["files"][0]["status"] == "loaded"
    ids_first = sorted(m.value["event_id"] for m in messages_of(ready, first, "trades"))
    ids_forced = sorted(m.value["event_id"] for m in messages_of(ready, forced, "trades"))
    assert ids_first == ids_forced and len(set(ids_first)) == len(ids_first)
    manifest = Manifest(open_catalog(ready), ready.namespace)
    history = manifest.history(entry["load_id"])[entry["load_id"]]
    assert [h.status for h in history] == ["started", "completed", "started", "completed"]
    assert history[-1].forced and history[1].rows_produced == entry["rows_produced"]
    assert history[1].offsets == entry["offsets"]


def test_symbols_are_checked_against_the_reference_data(ready: Settings, tmp_path: Path) -> None:
    (tmp_path / "reference_data.csv").write_text(
        "symbol,exchange,instrument_id,name,isin,currency,valid_from,valid_to\nBHP,ASX,1,BHP,,AUD,2000-01-01,\n"
    )
    day = tmp_path / "2026-11-02"
    day.mkdir()
    (day / "trades_ASX.csv").write_text(
        "event_time,symbol,exchange,price,size,currency,sequence_number,conditions,venue\n"
        "2026-11-02T00:00:01Z,BHP,ASX,45.10,100,AUD,1,,\n"
        "2026-11-02T00:00:02Z,BHPP,ASX,45.10,100,AUD,2,,\n"
    )
    report = load(ready, str(day / "trades_ASX.csv"), "--format", "k2")
    assert report["files"][0]["rejected_by_reason"] == {"unknown_symbol": 1}
    [reject] = messages_of(ready, report, "dead_letters")
    assert reject.value["reason"] == 'trades_ASX.csv line 3: symbol "BHPP" is not in reference_data.csv'


def test_edge_cases_of_time_symbols_and_sequences(ready: Settings, tmp_path: Path) -> None:
    root = tmp_path / "asx"
    (root / "d" / "trades").mkdir(parents=True)
    # a rename on the boundary day: OLD until 06/30, NEW from 06/30 (overlapping by a day)
    (root / "company_info.csv").write_text(
        "\ufeffcompany_id,symbol,company_name,ISIN,start_date,end_date\n"
        "7001,OLD,Old Name,AU0,01/01/2000,06/30/2026\n7001,NEW,New Name,AU0,06/30/2026,\n"
    )
    (root / "d" / "trades" / "7001.csv").write_text(
        "06/29/2026,10:00:00.000,1.00,1,,,\n"
        "06/30/2026,10:00:00.000,1.00,1,,,\n"
        "04/05/2026,02:30:00.000,1.00,1,,,\n"  # happens twice in Sydney that night: standard time (+10) wins
    )
    report = load(ready, "asx", "--format", "asx", cwd=tmp_path)  # a relative folder
    trades_file = file_result(report, "7001.csv")
    assert (trades_file["rows_read"], trades_file["rows_produced"], trades_file["rows_rejected"]) == (3, 3, 0)
    trades = {t.value["event_time"].isoformat(): t.value["symbol"] for t in messages_of(ready, report, "trades")}
    assert trades == {
        "2026-06-29T00:00:00+00:00": "OLD",
        "2026-06-30T00:00:00+00:00": "NEW",
        "2026-04-04T16:30:00+00:00": "OLD",
    }
    # ISO times without an offset are local to the format's time zone; a mapped sequence must have a value
    fmt = (REPO / "k2_etl" / "formats" / "builtin" / "k2.toml").read_text()
    fmt = fmt.replace('name = "k2"', 'name = "ny"').replace('timezone = "UTC"', 'timezone = "America/New_York"')
    (tmp_path / "ny.toml").write_text(fmt)
    (tmp_path / "trades_ny.csv").write_text(
        "event_time,symbol,exchange,price,size,currency,sequence_number,conditions,venue\n"
        "2026-11-02T10:00:00,IBM,XNYS,1.00,1,USD,1,,\n"
        "2026-11-02T10:00:00Z,IBM,XNYS,1.00,1,USD,2,,\n"
        "2026-11-02T10:00:01,IBM,XNYS,1.00,1,USD,,,\n"
    )
    report = load(ready, str(tmp_path / "trades_ny.csv"), "--format", str(tmp_path / "ny.toml"))
    assert report["files"][0]["rejected_by_reason"] == {"missing_value": 1}
    times = sorted(t.value["event_time"].isoformat() for t in messages_of(ready, report, "trades"))
    assert times == ["2026-11-02T10:00:00+00:00", "2026-11-02T15:00:00+00:00"]
