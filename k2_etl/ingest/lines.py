"""Read a CSV file (plain or gzip) as blocks of lines, with exact line numbers, in bounded memory.

Lines are split here rather than by a CSV parser so that every row keeps its
file line number and raw text for quarantine. A block holds at most
``block_bytes`` of text; a line longer than ``max_line_bytes`` (say, a huge
file with no newline) is rejected and skipped without ever being held whole.
Lines that are not UTF-8 are rejected one by one; blank lines are not rows.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BLOCK_BYTES = 4 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024  # market data rows are well under 1 KiB; Kafka's default message limit is 1 MB
GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class LineReject:
    """A line rejected before it could be parsed."""

    line_number: int
    raw: str
    reason: str
    detail: str


@dataclass
class Block:
    """Consecutive non-blank lines of a file (without line terminators) and their line numbers."""

    lines: pa.StringArray
    line_numbers: np.ndarray
    rejects: list[LineReject] = field(default_factory=list)
    blank_lines: int = 0
    nbytes: int = 0
    quoted: bool = True  # whether any line may contain a double quote (then fields follow CSV quoting rules)


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when it is gzip (recognised by content, not name)."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def file_checksum(path: Path) -> str:
    """SHA-256 of the file as stored (compressed or not): the identity of its content."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _preview(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("utf-8", errors="backslashreplace")
    return text + ("…" if len(raw) > limit else "")


def _utf8_split(block: bytes, first_line: int) -> tuple[bytes, np.ndarray, list[LineReject]]:
    """Slow path for a block that is not valid UTF-8: drop the bad lines, reject each one."""
    kept: list[bytes] = []
    numbers: list[int] = []
    rejects: list[LineReject] = []
    for offset, line in enumerate(block.split(b"\n")[:-1]):  # the block ends with a newline
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejects.append(
                LineReject(
                    first_line + offset,
                    _preview(line),
                    "not_utf8",
                    f"not valid UTF-8: byte 0x{line[exc.start]:02x} at column {exc.start + 1}",
                )
            )
            continue
        kept.append(line + b"\n")
        numbers.append(first_line + offset)
    return b"".join(kept), np.asarray(numbers, dtype=np.int64), rejects


def _to_block(data: bytes, first_line: int, line_count: int, max_line_bytes: int = MAX_LINE_BYTES) -> Block:
    """``data``: whole lines, each ending in a newline; their numbers start at ``first_line``."""
    rejects: list[LineReject] = []
    try:
        data.decode("utf-8")
        numbers = np.arange(first_line, first_line + line_count, dtype=np.int64)
    except UnicodeDecodeError:
        data, numbers, rejects = _utf8_split(data, first_line)
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    offsets = np.empty(len(ends) + 1, dtype=np.int64)
    offsets[0] = 0
    offsets[1:] = ends + 1
    # Zero-copy view of the lines with their terminators, then one vectorized trim of "\r\n".
    with_newlines = pa.Array.from_buffers(
        pa.large_string(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    lines = pc.utf8_rtrim(with_newlines, characters="\r\n").cast(pa.string())
    lengths = pc.binary_length(lines)
    too_long = pc.greater(lengths, max_line_bytes)
    if pc.any(too_long).as_py():
        for index in pc.indices_nonzero(too_long).to_pylist():
            rejects.append(
                LineReject(
                    int(numbers[index]),
                    _preview(lines[index].as_py().encode()),
                    "line_too_long",
                    f"line longer than {max_line_bytes:,} bytes; skipped",
                )
            )
        lines = pc.if_else(too_long, "", lines)  # dropped below, with the blank lines, not counted as blank
    keep = pc.not_equal(pc.binary_length(lines), 0)
    dropped = len(lines) - (pc.sum(keep).as_py() or 0)
    blank = dropped - (pc.sum(too_long).as_py() or 0)
    if dropped:
        lines = lines.filter(keep)
        numbers = numbers[keep.to_numpy(zero_copy_only=False)]
    return Block(lines, numbers, rejects, blank, len(data), quoted=b'"' in data)


def read_blocks(
    path: Path, *, skip_lines: int = 0, block_bytes: int = BLOCK_BYTES, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Block]:
    """Yield the file's lines after the first ``skip_lines`` (a header), in blocks."""
    line_no = 1  # the number of the line that starts `pending`
    pending = b""  # bytes of an unfinished line
    skipping = False  # discarding the rest of an over-long line (line `line_no`)
    with open_binary(path) as handle:
        while True:
            chunk = handle.read(block_bytes)
            eof = not chunk
            if line_no == 1 and not pending and chunk.startswith(BOM):
                chunk = chunk[len(BOM) :]  # a UTF-8 byte order mark is not data
            pending += chunk
            if skipping:
                cut = pending.find(b"\n")
                if cut < 0:
                    pending = b""
                    if eof:
                        break
                    continue
                pending, skipping, line_no = pending[cut + 1 :], False, line_no + 1
            if eof:
                whole, pending = (pending if pending.endswith(b"\n") or not pending else pending + b"\n"), b""
            else:
                cut = pending.rfind(b"\n")
                whole, pending = pending[: cut + 1], pending[cut + 1 :]
            count = whole.count(b"\n")
            rejects: list[LineReject] = []
            if len(pending) > max_line_bytes:
                rejects.append(
                    LineReject(
                        line_no + count,
                        _preview(pending),
                        "line_too_long",
                        f"line longer than {max_line_bytes:,} bytes; skipped up to its newline",
                    )
                )
                pending, skipping = b"", True
            if skip_lines and count:
                drop = min(skip_lines, count)
                cut = -1
                for _ in range(drop):
                    cut = whole.index(b"\n", cut + 1)
                whole, count, skip_lines, line_no = whole[cut + 1 :], count - drop, skip_lines - drop, line_no + drop
            if count:
                block = _to_block(whole, line_no, count, max_line_bytes)
                block.rejects = rejects + block.rejects
                yield block
            elif rejects:
                yield Block(pa.array([], pa.string()), np.empty(0, np.int64), rejects)
            line_no += count
            if eof:
                break


def read_first_line(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> str | None:
    """The first line (a header), or None for an empty file; raises UnicodeDecodeError on bad bytes."""
    with open_binary(path) as handle:
        head = handle.read(max_line_bytes)
    if not head:
        return None
    return head.removeprefix(BOM).split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8")
