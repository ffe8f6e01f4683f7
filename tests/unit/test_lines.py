"""The line reader: exact line numbers, CRLF, blank lines, gzip, bad bytes and over-long lines."""

from __future__ import annotations

import gzip
from pathlib import Path

from k2_etl.ingest.lines import file_checksum, read_blocks, read_first_line


def lines_of(path: Path, **kwargs: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]], int]:
    rows, rejects, blank = [], [], 0
    for block in read_blocks(path, **kwargs):
        rows += list(zip(block.line_numbers.tolist(), block.lines.to_pylist(), strict=True))
        rejects += [(r.line_number, r.reason) for r in block.rejects]
        blank += block.blank_lines
    return rows, rejects, blank


def test_numbers_crlf_blank_and_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"header\r\na,1\r\n\r\nb,2\n\nc,3")
    rows, rejects, blank = lines_of(path, skip_lines=1, block_bytes=4)
    assert rows == [(2, "a,1"), (4, "b,2"), (6, "c,3")]
    assert (rejects, blank) == ([], 2)


def test_gzip_is_recognised_by_content(tmp_path: Path) -> None:
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(b"h\nx,1\n"))
    assert lines_of(path, skip_lines=1)[0] == [(2, "x,1")]
    assert read_first_line(path) == "h"
    assert len(file_checksum(path)) == 64


def test_bad_utf8_and_long_lines_are_rejected_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_bytes(b"ok,1\nbad\xff,2\n" + b"z" * 5000 + b"\nok,3\n" + b"y" * 5000)
    rows, rejects, _ = lines_of(path, block_bytes=1024, max_line_bytes=2048)
    assert rows == [(1, "ok,1"), (4, "ok,3")]
    assert rejects == [(2, "not_utf8"), (3, "line_too_long"), (5, "line_too_long")]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(b"")
    assert read_first_line(path) is None
    assert lines_of(path) == ([], [], 0)


def test_long_complete_lines_and_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbfh,1\n" + b"x" * 3000 + b"\nok,2\n")
    rows, rejects, blank = lines_of(path, block_bytes=1 << 20, max_line_bytes=1024)
    assert rows == [(1, "h,1"), (3, "ok,2")]
    assert (rejects, blank) == ([(2, "line_too_long")], 0)
    assert read_first_line(path) == "h,1"
