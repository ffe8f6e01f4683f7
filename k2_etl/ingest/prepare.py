"""Turn one file's lines into messages to produce: the CPU-heavy half of `k2 load`.

A :class:`Preparer` knows a format and the schema ids. For a file it works
out the effective columns (headers may reorder them), the symbol lookups
(reference files searched next to the file and up to two folders above), and
the DuckDB statement (:mod:`k2_etl.ingest.sql`); for each block of lines it
runs the statement, splits off the rejects, assigns sequence numbers and
encodes the rest to Avro (:mod:`k2_etl.wire.avro_encode`). It holds no Kafka
client: producing is the loader's job.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2_etl.errors import K2Error
from k2_etl.formats import Format, RecordSpec
from k2_etl.ingest import sql
from k2_etl.ingest.lines import Block, read_first_line
from k2_etl.records import latest_event_time, load_reject
from k2_etl.schemas import BY_NAME
from k2_etl.wire.avro_encode import encode_table

REFERENCE_SEARCH_DEPTH = 2  # reference files are looked for next to a file and up to two folders above


@dataclass(frozen=True)
class Source:
    """The file a block comes from, as its messages' lineage names it."""

    path: Path
    load_id: str
    ingest_time: datetime


@dataclass
class Prepared:
    """One block, ready to produce."""

    values: list[bytes]
    keys: list[bytes]
    timestamps: list[int]
    rejects: list[dict[str, Any]]
    rows_read: int
    blank_lines: int
    nbytes: int


class FileFailed(K2Error):
    """The whole file cannot be loaded (empty, or a header without the format's columns)."""


def _csv_fields(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter, strict=True), [])
    except csv.Error:
        return [line]  # unparseable quoting: one field, so the row is rejected for its field count


def split_fields(lines: pa.Array, delimiter: str, count: int, quoted: bool = True) -> tuple[pa.Array, list[pa.Array]]:
    """Each line's number of fields, and its fields as ``count`` columns, trimmed of spaces.

    Lines without quotes are split on the delimiter by Arrow (vectorized); a block
    with quotes goes through Python's csv rules (``quoted=False`` says none has one).
    The fields of a line with another number of fields are NULL: the statement
    rejects it for its count.
    """
    if quoted and len(lines) and pc.any(pc.match_substring(lines, '"')).as_py():
        lists = pa.array([_csv_fields(line, delimiter) for line in lines.to_pylist()], pa.list_(pa.string()))
    else:
        lists = pc.split_pattern(lines, delimiter)
    counts = pc.list_value_length(lists)
    usable = pc.equal(counts, count)
    spread = None  # where the usable lines' fields go among all lines (NULL for the others)
    if not pc.all(usable).as_py():
        keep = usable.to_numpy(zero_copy_only=False)
        spread = pa.array(np.cumsum(keep) - 1, pa.int64(), mask=~keep)
        lists = lists.filter(usable)
    flat = pc.list_flatten(lists)  # every remaining line has exactly `count` fields: field k is every count-th
    fields = []
    for k in range(count):
        column = pc.utf8_trim(flat.take(pa.array(np.arange(k, len(flat), count))), " ")
        fields.append(column if spread is None else column.take(spread))
    return counts, fields


def find_upwards(start: Path, name: str) -> Path | None:
    for folder in [start, *start.parents][: REFERENCE_SEARCH_DEPTH + 1]:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


class Preparer:
    """Everything about a format's files but Kafka; one per load (it caches reference files)."""

    def __init__(self, fmt: Format, schema_ids: dict[str, int], load_date: date | None) -> None:
        self.fmt, self.schema_ids, self.load_date = fmt, schema_ids, load_date
        self._references: dict[Path, dict[str, list[tuple[str, date | None, date | None]]]] = {}
        self._known: dict[Path, pa.Table] = {}

    def effective_spec(self, path: Path, spec: RecordSpec) -> RecordSpec:
        """For headered files, the columns as this file's header orders them."""
        if not spec.header:
            return spec
        try:
            first = read_first_line(path)
        except UnicodeDecodeError:
            raise FileFailed("the header line is not valid UTF-8") from None
        if first is None or not first.strip():
            raise FileFailed("empty file")
        header = [h.strip() for h in next(csv.reader([first], delimiter=self.fmt.delimiter))]
        missing = [c for c in spec.columns if c not in header]
        if not missing:
            return spec.model_copy(update={"columns": header})
        hint = ""
        if len(header) == 1:
            other = next((d for d in ";\t|" if d in first), None)
            if other:
                hint = f" (the header contains {other!r}: is the delimiter {self.fmt.delimiter!r} right?)"
        raise FileFailed(f"the header lacks column(s) {', '.join(missing)}; found {', '.join(header)}{hint}")

    def symbol_ranges(self, path: Path) -> tuple[str | None, pa.Table | None, str | None]:
        ref = self.fmt.symbol_from_file_name
        if ref is None:
            return None, None, None
        instrument = path.name.split(".")[0]
        found = find_upwards(path.parent, ref.reference_file)
        by_key: dict[str, list[tuple[str, date | None, date | None]]] = {}
        label = ref.reference_file
        if found is None:
            label = f"{ref.reference_file} (none found next to {path.name} or up to two folders above)"
        else:
            by_key = self._reference(found)
        rows = _without_overlaps(by_key.get(instrument, []))
        table = pa.table(
            {
                "symbol": pa.array([r[0] for r in rows], pa.string()),
                "valid_from": pa.array([r[1] for r in rows], pa.date32()),
                "valid_to": pa.array([r[2] for r in rows], pa.date32()),
            }
        )
        return instrument, table, label

    def _reference(self, path: Path) -> dict[str, list[tuple[str, date | None, date | None]]]:
        if path in self._references:
            return self._references[path]
        ref = self.fmt.symbol_from_file_name
        assert ref is not None

        def parse(value: str | None) -> date | None:
            value = (value or "").strip()
            return datetime.strptime(value, ref.date_format).date() if value else None

        out: dict[str, list[tuple[str, date | None, date | None]]] = {}
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle, delimiter=self.fmt.delimiter):
                key, symbol = (row.get(ref.key_column) or "").strip(), (row.get(ref.symbol_column) or "").strip()
                if not key or not symbol:
                    continue
                try:
                    span = (
                        parse(row.get(ref.valid_from_column or "")),
                        parse(row.get(ref.valid_to_column or "")),
                    )
                except ValueError:
                    continue  # an unusable reference row: the reference_data load itself rejects it
                out.setdefault(key, []).append((symbol, *span))
        self._references[path] = out
        return out

    def known_symbols(self, path: Path, spec: RecordSpec) -> tuple[pa.Table | None, str | None]:
        """The symbols of the format's reference file, when it declares one and one is found."""
        known = self.fmt.known_symbols
        if known is None or spec.type == "reference_data":
            return None, None
        found = find_upwards(path.parent, known.reference_file)
        if found is None:
            return None, None
        if found not in self._known:
            with found.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle, delimiter=self.fmt.delimiter)
                symbols = {(row.get(known.symbol_column) or "").strip() for row in reader}
            self._known[found] = pa.table({"symbol": pa.array(sorted(symbols - {""}), pa.string())})
        return self._known[found], found.name

    def statement(self, path: Path, spec: RecordSpec) -> tuple[RecordSpec, sql.Statement, dict[str, pa.Table]]:
        """The file's effective spec, its SQL statement, and the lookup tables the statement joins."""
        spec = self.effective_spec(path, spec)
        instrument, ranges, reference_label = self.symbol_ranges(path)
        known, known_label = self.known_symbols(path, spec)
        statement = sql.build(
            self.fmt,
            spec,
            load_date=self.load_date.isoformat() if self.load_date else None,
            max_event_time=latest_event_time().isoformat(),
            instrument=instrument,
            reference_label=reference_label,
            known_symbols_label=known_label,
        )
        tables = {"symbol_ranges": ranges, "known_symbols": known}
        return spec, statement, {name: table for name, table in tables.items() if table is not None}

    def prepare(
        self,
        con: duckdb.DuckDBPyConnection,
        spec: RecordSpec,
        statement: sql.Statement,
        block: Block,
        seq_base: dict[tuple[str, str, date], int],
        source: Source,
    ) -> Prepared:
        """One block of one file → messages to produce and rejects, in file order."""
        path, load_id = source.path, source.load_id
        rejects = [
            load_reject(path, spec.type, r.line_number, r.raw, r.reason, r.detail, None, load_id) for r in block.rejects
        ]
        if len(block.lines) == 0:
            return Prepared([], [], [], rejects, len(block.rejects), block.blank_lines, block.nbytes)
        counts, fields = split_fields(block.lines, self.fmt.delimiter, len(spec.columns), block.quoted)
        rows = pa.table(
            {
                "line_no": pa.array(block.line_numbers, pa.int64()),
                "raw": block.lines,
                "nf": counts,
                **{f"f{k + 1}": column for k, column in enumerate(fields)},
            }
        )
        con.register("rows", rows)
        con.register("seq_base", _seq_base_table(seq_base))
        table = con.execute(statement.sql, statement.params).to_arrow_table()
        con.unregister("rows")  # DuckDB would keep the block's input alive until the next one
        del rows, fields  # peak memory: a block's intermediates are dropped as soon as they are used
        if table.num_rows != len(block.lines):  # every line is one row out, valid or not
            raise K2Error(f"{path}: {len(block.lines)} lines became {table.num_rows} rows; not loading this file")
        if table.column("reason").null_count == table.num_rows:  # the usual case: nothing to split off
            valid, bad = table, table.slice(0, 0)
        else:
            valid_mask = pc.is_null(table.column("reason"))
            valid, bad = table.filter(valid_mask), table.filter(pc.invert(valid_mask))
        if bad.num_rows:
            bad_rows = bad.select(["line_no", "reason", "detail", "field"]).to_pylist()
            positions = np.searchsorted(block.line_numbers, [r["line_no"] for r in bad_rows])
            raws = block.lines.take(pa.array(positions)).to_pylist()
            for row, raw in zip(bad_rows, raws, strict=True):
                rejects.append(
                    load_reject(path, spec.type, row["line_no"], raw, row["reason"], row["detail"], row["field"],
                                 load_id)
                )  # fmt: skip
        if "sequence_number" not in spec.fields and valid.num_rows and spec.type != "reference_data":
            _advance_sequences(valid, seq_base)
        record = BY_NAME[spec.type]
        lineage = {"source": str(path), "load_id": load_id, "ingest_time": source.ingest_time}
        encoded = encode_table(valid, record.schema, self.schema_ids[spec.type], constants=lineage)
        symbols = pc.dictionary_encode(valid.column("symbol").combine_chunks())  # one bytes object per symbol
        distinct = np.array([s.encode() for s in symbols.dictionary.to_pylist()], dtype=object)
        keys = distinct[symbols.indices.to_numpy(zero_copy_only=False)].tolist()
        if spec.type == "reference_data":
            stamp = int(time.time() * 1000)
            timestamps = [stamp] * valid.num_rows
        else:
            micros = valid.column("event_time").combine_chunks().cast(pa.int64())
            timestamps = (micros.to_numpy(zero_copy_only=False) // 1000).tolist()
        del table, valid, bad, symbols
        values = encoded.to_pylist()
        return Prepared(
            values, keys, timestamps, rejects, len(block.rejects) + len(block.lines), block.blank_lines, block.nbytes
        )


def _without_overlaps(ranges: list[tuple[str, date | None, date | None]]) -> list[tuple[str, date | None, date | None]]:
    """One symbol per day: where an instrument's ranges overlap (a rename on the boundary day,
    a repeated row), the later-starting range wins from its first day."""
    ordered = sorted(ranges, key=lambda r: (r[1] or date.min, r[0]))
    out: list[tuple[str, date | None, date | None]] = []
    for i, (symbol, start, end) in enumerate(ordered):
        following = ordered[i + 1][1] if i + 1 < len(ordered) else None
        if following is not None and (end is None or end >= following):
            end = following - timedelta(days=1)
        if start is None or end is None or start <= end:
            out.append((symbol, start, end))
    return out


def _seq_base_table(seq_base: dict[tuple[str, str, date], int]) -> pa.Table:
    return pa.table(
        {
            "exchange": pa.array([k[0] for k in seq_base], pa.string()),
            "symbol": pa.array([k[1] for k in seq_base], pa.string()),
            "trading_date": pa.array([k[2] for k in seq_base], pa.date32()),
            "base": pa.array(list(seq_base.values()), pa.int64()),
        }
    )


def _advance_sequences(valid: pa.Table, seq_base: dict[tuple[str, str, date], int]) -> None:
    """Remember the last sequence number assigned per (exchange, symbol, trading day) for the next block."""
    grouped = valid.group_by(["exchange", "symbol", "trading_date"]).aggregate([("sequence_number", "max")])
    for row in grouped.to_pylist():
        seq_base[(row["exchange"], row["symbol"], row["trading_date"])] = row["sequence_number_max"]
