"""Bad input to `k2 load`: a clear reason for every rejected row or failed file, nothing lost, counts reconcile."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
from confluent_kafka import Consumer, TopicPartition

from k2_etl.config import Settings
from k2_etl.lake.catalog import open_catalog
from k2_etl.lake.manifest import Manifest
from k2_etl.wire.kafka import client_config
from tests.helpers import env_of, free_port, poll, run_k2
from tests.integration.ingest_helpers import Message, file_result, load, messages_of, read_offsets

HEADER = "event_time,symbol,exchange,price,size,currency,sequence_number,conditions,venue\n"
GOOD = "2026-11-02T00:00:0{i}Z,BHP,ASX,45.1{i},100,AUD,{i},,\n"


def good_rows(n: int) -> str:
    return "".join(GOOD.format(i=i) for i in range(1, n + 1))


def test_bad_files_and_rows(ready: Settings, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "trades_empty.csv").write_text("")
    (d / "trades_header_only.csv").write_text(HEADER)
    (d / "trades_semicolon.csv").write_text(HEADER.replace(",", ";") + good_rows(2).replace(",", ";"))
    (d / "trades_truncated.csv").write_text(HEADER + good_rows(3) + "2026-11-02T00:00:09Z,BHP,AS")
    (d / "trades_latin1.csv").write_bytes(
        (HEADER + good_rows(2)).encode() + b"2026-11-02T00:00:05Z,CAF\xe9,ASX,1,1,AUD,5,,\n"
    )
    (d / "trades_values.csv").write_text(
        HEADER
        + good_rows(1)
        + "1899-12-31T00:00:00Z,BHP,ASX,45.10,100,AUD,2,,\n"
        + "2099-01-01T00:00:00Z,BHP,ASX,45.10,100,AUD,3,,\n"
        + "2026-11-02T00:00:04Z,BHP,ASX,45.10,-100,AUD,4,,\n"
        + "2026-11-02T00:00:05Z,BHP,ASX,45.123456789,100,AUD,5,,\n"
        + "\n"  # a blank line is not a row
        + "2026-11-02T00:00:06Z,BHP,ASX,,100,AUD,6,,\n"
    )
    report = load(ready, str(d), str(tmp_path / "missing.csv"), "--format", "k2", expect_rc=1)
    for f in report["files"]:
        assert f["rows_read"] == f["rows_produced"] + f["rows_rejected"], f
    assert file_result(report, "missing.csv")["message"].endswith("missing.csv: no such file or folder")
    assert file_result(report, "trades_empty.csv")["message"] == "empty file"
    assert file_result(report, "trades_header_only.csv")["message"] == "no data rows (header only)"
    semicolon = file_result(report, "trades_semicolon.csv")
    assert semicolon["status"] == "failed"
    assert "is the delimiter ',' right?" in semicolon["message"] and "';'" in semicolon["message"]
    truncated = file_result(report, "trades_truncated.csv")
    assert (truncated["status"], truncated["rows_produced"]) == ("loaded", 3)
    assert truncated["rejected_by_reason"] == {"wrong_field_count": 1}
    latin1 = file_result(report, "trades_latin1.csv")
    assert (latin1["rows_produced"], latin1["rejected_by_reason"]) == (2, {"not_utf8": 1})
    values = file_result(report, "trades_values.csv")
    assert (values["rows_read"], values["rows_produced"], values["blank_lines"]) == (6, 1, 1)
    assert values["rejected_by_reason"] == {
        "timestamp_out_of_range": 2, "not_positive": 1, "too_many_decimals": 1, "missing_value": 1,
    }  # fmt: skip
    rejects = {
        (Path(r.value["source"]).name, r.value["line_number"]): r.value
        for r in messages_of(ready, report, "dead_letters")
    }
    assert rejects[("trades_truncated.csv", 5)]["reason"] == (
        'trades_truncated.csv line 5: expected 9 fields separated by ",", found 3'
    )
    assert rejects[("trades_truncated.csv", 5)]["raw_line"] == "2026-11-02T00:00:09Z,BHP,AS"
    assert rejects[("trades_latin1.csv", 4)]["reason"].endswith("not valid UTF-8: byte 0xe9 at column 25")
    assert rejects[("trades_values.csv", 3)]["reason"].endswith(
        '"1899-12-31T00:00:00Z" is outside 1990-01-01 .. ' + rejects[("trades_values.csv", 3)]["reason"][-10:]
    )
    assert rejects[("trades_values.csv", 5)]["reason"] == 'trades_values.csv line 5: size "-100" must be positive'
    assert rejects[("trades_values.csv", 5)]["field"] == "size"
    assert rejects[("trades_values.csv", 6)]["reason"].endswith('price "45.123456789" has 9 decimal places; at most 8')
    assert rejects[("trades_values.csv", 8)]["reason"].endswith("price is empty")
    assert len(rejects) == 7  # every rejected row quarantined, once


def test_date_option_rejects_other_days(ready: Settings, tmp_path: Path) -> None:
    (tmp_path / "trades_x.csv").write_text(HEADER + good_rows(2) + "2026-11-03T00:00:00Z,BHP,ASX,45.10,1,AUD,9,,\n")
    report = load(ready, str(tmp_path / "trades_x.csv"), "--format", "k2", "--date", "2026-11-02")
    assert report["files"][0]["rejected_by_reason"] == {"not_load_date": 1}
    [reject] = messages_of(ready, report, "dead_letters")
    assert reject.value["reason"].endswith("trading date 2026-11-03 is not the load date 2026-11-02")


def test_unknown_format_and_bad_arguments(ready: Settings, tmp_path: Path) -> None:
    env = env_of(ready)
    result = run_k2(env, "load", str(tmp_path), "--format", "nosuch")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "k2: error: unknown format 'nosuch'; known formats: asx, k2"
    bad_format = tmp_path / "vendor.toml"
    bad_format.write_text(
        'name = "vendor"\n[[record]]\ntype = "trade"\nmatch = ["*.csv"]\ncolumns = ["a"]\nfields = {}\n'
    )
    result = run_k2(env, "load", str(tmp_path), "--format", str(bad_format))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "format file" in result.stderr and "price" in result.stderr


def test_huge_line_without_newline_keeps_memory_bounded(ready: Settings, tmp_path: Path) -> None:
    huge = tmp_path / "trades_huge.csv"
    with huge.open("wb") as out:
        out.write((HEADER + good_rows(2)).encode())
        chunk = b"x" * (1 << 20)
        for _ in range(768):  # 768 MiB, no newline
            out.write(chunk)
    env = env_of(ready)
    env["K2_INGEST_METRICS_PORT"] = "0"
    k2 = Path(sys.executable).with_name("k2")
    # A fresh Python, so RUSAGE_CHILDREN counts only this load.
    probe = textwrap.dedent(f"""
        import json, resource, subprocess
        command = [{str(k2)!r}, "load", {str(huge)!r}, "--format", "k2", "--json"]
        r = subprocess.run(command, capture_output=True, text=True)
        print(json.dumps({{"rc": r.returncode, "out": r.stdout, "err": r.stderr,
                          "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}}))
    """)
    result = json.loads(
        subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    )
    assert result["rc"] == 0, result["err"]
    [f] = json.loads(result["out"])["files"]
    assert (f["rows_produced"], f["rejected_by_reason"]) == (2, {"line_too_long": 1})
    assert result["maxrss_kb"] < 450 * 1024  # the 768 MiB line was never held (a normal load peaks near 200 MB)


def test_killed_load_rerun_produces_every_event(ready: Settings, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    env = env_of(ready)
    assert run_k2(env, "generate", "--out", str(out), "--symbols", "20", "--days", "1", "--trades-per-day",
                  "8000", "--quotes-per-trade", "0", "--exchanges", "ASX").returncode == 0  # fmt: skip
    trades = next(out.rglob("trades_ASX.csv"))
    port = free_port()
    env["K2_INGEST_METRICS_PORT"] = str(port)
    k2 = Path(sys.executable).with_name("k2")
    proc = subprocess.Popen([str(k2), "load", str(trades), "--format", "k2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def produced() -> float:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
        lines = [line for line in text.splitlines() if line.startswith("k2_ingest_rows_produced_total{")]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    topic = ready.topic_prefix + "trades"
    consumer = Consumer(client_config(ready, **{"group.id": "kill-probe", "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(ready.topic_partitions)])
    try:
        poll(lambda: produced() > 0, timeout=60, what="the load's metrics to show produced rows")
        poll(lambda: consumer.consume(num_messages=1, timeout=0.2), timeout=60, what="a delivered trade")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        consumer.close()
    rerun = load(ready, str(trades), "--format", "k2")
    [f] = rerun["files"]
    assert f["status"] == "loaded" and f["rows_rejected"] == 0
    # everything in the topic: the killed run's partial output, then the complete re-run
    everything = {t: {p: [0, span[1]] for p, span in parts.items()} for t, parts in f["offsets"].items()}
    messages = read_offsets(ready, everything)

    def of_rerun(message: Message) -> bool:  # the re-run's own trades, among those read above (read once)
        first, last = f["offsets"].get(message.topic, {}).get(str(message.partition), (-1, -2))
        return message.topic == topic and first <= message.offset <= last

    rerun_ids = {m.value["event_id"] for m in messages if of_rerun(m)}
    assert len(rerun_ids) == f["rows_read"]
    assert {m.value["event_id"] for m in messages} == rerun_ids  # at least once each, nothing foreign
    assert len(messages) > len(rerun_ids)  # the killed run had produced some (duplicates for the consumer)
    history = Manifest(open_catalog(ready), ready.namespace).history(f["load_id"])[f["load_id"]]
    assert [h.status for h in history] == ["started", "started", "completed"]
    assert history[-1].rows_produced == f["rows_read"]
