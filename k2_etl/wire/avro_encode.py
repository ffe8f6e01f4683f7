"""Encode an Arrow table into Confluent-framed Avro messages, a column at a time.

Why not fastavro or confluent-kafka's AvroSerializer: they encode one Python
dict at a time (several microseconds per record), which alone would cap a load
well below the broker's speed. Avro's binary encoding is simple and fully
specified (zig-zag varints, length-prefixed bytes, unions as a branch index),
so each column is encoded with numpy/pyarrow vector operations and the columns
are joined row-wise by Arrow. The tests check every supported type against
fastavro's decoder, byte for byte.

Supported: string, bytes, int, long, date, timestamp-micros, decimal (bytes),
arrays of strings, and ``["null", T]`` unions of those.
"""

from __future__ import annotations

import io
import struct
from collections import Counter
from decimal import Decimal
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAGIC = b"\x00"
_EMPTY = pa.scalar(b"", pa.binary())  # the separator when joining encoded pieces
#: Columns encoded by each fast path ("constant", "dictionary", "fixed_width") since the process
#: started: a fast path's bytes are checked like any other's, and this says it was taken at all (a
#: condition that never holds would leave the tests green and the encoder slow). One increment per
#: column of a block: nothing beside the encoding itself. Unlocked on purpose: a diagnostic, read by
#: tests that encode in one thread; encoders in several threads may lose an increment, never a byte.
FAST_PATHS: Counter[str] = Counter()


def confluent_prefix(schema_id: int) -> bytes:
    """Confluent wire format: magic byte 0, then the schema id as a 4-byte big-endian int."""
    return MAGIC + struct.pack(">I", schema_id)


def _binary(lengths: np.ndarray, data: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)  # a block's messages are far below 2 GiB
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(
        pa.binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
    )


def varint(values: np.ndarray) -> pa.Array:
    """Avro ``long``/``int`` encoding (zig-zag, then base-128 varint) of int64 values."""
    v = values.astype(np.int64, copy=False)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    nbytes = np.ones(len(z), dtype=np.int64)
    rest = z >> np.uint64(7)
    while rest.any():
        nbytes += rest > 0
        rest >>= np.uint64(7)
    width = int(nbytes.max()) if len(z) else 1
    out = np.empty((len(z), width), dtype=np.uint8)
    x = z.copy()
    for i in range(width):
        byte = (x & np.uint64(0x7F)).astype(np.uint8)
        x >>= np.uint64(7)
        out[:, i] = byte | ((i < nbytes - 1).astype(np.uint8) << 7)
    mask = np.arange(width) < nbytes[:, None]
    return _binary(nbytes, out[mask])


def _length_prefixed(col: pa.Array) -> pa.Array:
    """string/bytes: varint length, then the bytes.

    Market data repeats itself (symbols, exchanges, currencies): a column with
    few distinct values is encoded once per value and gathered by index.
    """
    few = len(col) >= 1024 and pc.count_distinct(col.slice(0, 1024)).as_py() * 8 <= 1024  # ids never are
    if few and not pa.types.is_dictionary(col.type):
        encoded = pc.dictionary_encode(col)
        if len(encoded.dictionary) * 8 <= len(col):
            FAST_PATHS["dictionary"] += 1
            return pc.take(_length_prefixed(encoded.dictionary), encoded.indices)
    binary = col.cast(pa.binary())
    lengths = pc.binary_length(binary).to_numpy(zero_copy_only=False)
    if len(lengths) and lengths.min() == lengths.max():  # fixed width (ids, codes): rows of a byte matrix
        FAST_PATHS["fixed_width"] += 1
        width = int(lengths[0])
        prefix = np.frombuffer(varint(lengths[:1])[0].as_py(), dtype=np.uint8)
        start = int(np.frombuffer(binary.buffers()[1], dtype=np.int32, count=binary.offset + 1)[-1])
        data = np.frombuffer(binary.buffers()[2], dtype=np.uint8, count=start + len(lengths) * width)[start:]
        out = np.empty((len(lengths), len(prefix) + width), dtype=np.uint8)
        out[:, : len(prefix)] = prefix
        out[:, len(prefix) :] = data.reshape(len(lengths), width)
        return _binary(np.full(len(lengths), out.shape[1], dtype=np.int64), out.ravel())
    return pc.binary_join_element_wise(varint(lengths), binary, _EMPTY)


def _decimal(col: pa.Array) -> pa.Array:
    """decimal as bytes: the unscaled value, two's complement big-endian, minimal length."""
    dec = col.cast(pa.decimal128(38, col.type.scale))
    words = np.frombuffer(dec.buffers()[1], dtype=np.int64, count=2 * (len(dec) + dec.offset))
    unscaled = words[2 * dec.offset :: 2].copy()  # low 64 bits; decimal(18, s) always fits
    nbytes = np.ones(len(unscaled), dtype=np.int64)
    for k in range(1, 8):
        limit = np.int64(1) << np.int64(8 * k - 1)
        nbytes += (unscaled >= limit) | (unscaled < -limit)
    # A 9-byte row per value: its big-endian bytes right-aligned, the length (1..8, so a one-byte
    # varint: 2 * n) just before the significant ones; the mask keeps length and significant bytes.
    out = np.empty((len(unscaled), 9), dtype=np.uint8)
    out[:, 1:] = unscaled.astype(">i8").view(np.uint8).reshape(-1, 8)
    out[np.arange(len(unscaled)), 8 - nbytes] = (2 * nbytes).astype(np.uint8)
    mask = np.arange(9) >= (8 - nbytes)[:, None]
    return _binary(nbytes + 1, out[mask])


def _string_array(col: pa.Array) -> pa.Array:
    """array<string>: one block with the count and the items, then the 0 terminator; empty is just 0."""
    lists = col.cast(pa.list_(pa.string()))
    counts = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    filled = counts > 0
    if len(counts) and not filled.all():  # often most lists are empty (no trade conditions): encode the others
        encoded = _string_array(lists.filter(pa.array(filled))) if filled.any() else pa.array([], pa.binary())
        which = np.where(filled, np.cumsum(filled), 0)  # 0: the empty array's encoding, i: the i-th filled row
        return pa.concat_arrays([pa.array([b"\x00"], pa.binary()), encoded]).take(pa.array(which))
    flat = pc.list_flatten(lists)
    items = _length_prefixed(flat) if len(flat) else pa.array([], pa.binary())
    if lists.offset or len(lists) != len(col):  # pragma: no cover - arrays come unsliced from DuckDB
        raise ValueError("sliced list arrays are not supported")
    offsets = pc.subtract(lists.offsets, lists.offsets[0])  # list_flatten's items start at the first offset
    per_row = pc.binary_join(pa.ListArray.from_arrays(offsets, items), _EMPTY)
    return pc.binary_join_element_wise(varint(counts), per_row, pa.scalar(b"\x00", pa.binary()), _EMPTY)


def _plain(avro_type: Any, col: pa.Array) -> pa.Array:
    """Encode a non-null column of a non-union Avro type."""
    if isinstance(avro_type, str):
        if avro_type in ("string", "bytes"):
            return _length_prefixed(col)
        if avro_type in ("int", "long"):
            return varint(col.cast(pa.int64()).to_numpy(zero_copy_only=False))
        raise TypeError(f"unsupported Avro type {avro_type!r}")
    logical = avro_type.get("logicalType")
    if logical == "decimal":
        return _decimal(col)
    if logical == "timestamp-micros":
        micros = col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        return varint(micros.to_numpy(zero_copy_only=False))
    if logical == "date":
        return varint(col.cast(pa.date32()).cast(pa.int32()).cast(pa.int64()).to_numpy(zero_copy_only=False))
    if avro_type.get("type") == "array" and avro_type.get("items") == "string":
        return _string_array(col)
    if avro_type.get("type") in ("string", "bytes", "int", "long"):
        return _plain(avro_type["type"], col)
    raise TypeError(f"unsupported Avro type {avro_type!r}")


_NULL_BRANCH = pa.scalar(b"\x00", pa.binary())
_VALUE_BRANCH = pa.scalar(b"\x02", pa.binary())


def _filler(avro_type: Any, arrow_type: pa.DataType) -> pa.Scalar:
    """A harmless value to stand in for nulls while encoding a nullable column."""
    if pa.types.is_decimal(arrow_type):
        return pa.scalar(Decimal(0), arrow_type)
    if pa.types.is_timestamp(arrow_type):
        return pa.scalar(0, pa.int64()).cast(arrow_type)
    if pa.types.is_date(arrow_type):
        return pa.scalar(0, pa.int32()).cast(arrow_type)
    if pa.types.is_integer(arrow_type):
        return pa.scalar(0, arrow_type)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return pa.scalar([], arrow_type)
    return pa.scalar(b"" if pa.types.is_binary(arrow_type) else "", arrow_type)


def encode_column(avro_type: Any, col: pa.Array) -> pa.Array:
    if isinstance(avro_type, list):
        if len(avro_type) != 2 or avro_type[0] != "null":
            raise TypeError(f"only ['null', T] unions are supported, not {avro_type!r}")
        nulls = pc.is_null(col)
        if not pc.any(nulls).as_py():
            return pc.binary_join_element_wise(_VALUE_BRANCH, _plain(avro_type[1], col), _EMPTY)
        filled = pc.fill_null(col, _filler(avro_type[1], col.type))
        value = pc.binary_join_element_wise(_VALUE_BRANCH, _plain(avro_type[1], filled), _EMPTY)
        return pc.if_else(nulls, _NULL_BRANCH, value)
    if col.null_count:
        raise ValueError(f"null values in a non-nullable column of type {avro_type!r}")
    return _plain(avro_type, col)


def _constant(col: pa.Array) -> bool:
    """The same value on every row (lineage, a file's exchange, all-null options): encode it once."""
    if len(col) == 0:
        return False
    if col.null_count == len(col):
        return True
    if col.null_count:
        return False
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return pc.max(pc.list_value_length(col)).as_py() == 0  # all empty, e.g. no quality flags
    if col[0] != col[len(col) - 1]:  # cheap early "no" for ids and times
        return False
    return bool(pc.all(pc.equal(col, col[0])).as_py())


def _encode_value(avro_type: Any, value: Any) -> bytes:
    """One value, encoded by fastavro (for constants: done once, not per row)."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(avro_type), value)
    return out.getvalue()


def encode_table(
    table: pa.Table, schema: dict[str, Any], schema_id: int, constants: dict[str, Any] | None = None
) -> pa.Array:
    """One Confluent-framed Avro message per row.

    ``table`` has a column per schema field, except the fields given in ``constants``
    (the same value on every row, such as lineage), which are encoded once.
    """
    constants = constants or {}
    pieces: list[pa.Array | bytes] = [confluent_prefix(schema_id)]
    for f in schema["fields"]:
        if f["name"] in constants:
            encoded = _encode_value(f["type"], constants[f["name"]])
            if isinstance(pieces[-1], bytes):
                pieces[-1] += encoded
            else:
                pieces.append(encoded)
            continue
        col = table.column(f["name"]).combine_chunks()
        if _constant(col):
            FAST_PATHS["constant"] += 1
            encoded = encode_column(f["type"], col.slice(0, 1))[0].as_py()
            if isinstance(pieces[-1], bytes):  # merge runs of constants into one piece
                pieces[-1] += encoded
            else:
                pieces.append(encoded)
        else:
            pieces.append(encode_column(f["type"], col))
    args = [pa.scalar(p, pa.binary()) if isinstance(p, bytes) else p for p in pieces]
    if len(args) == 1:
        return pa.array([pieces[0]] * table.num_rows, pa.binary())
    return pc.binary_join_element_wise(*args, _EMPTY)
