"""`reprokit data criteo / avazu`: raw Criteo and Avazu click logs → reprokit's dataset layout.

The conventions are those of FuxiCTR / BARS (Criteo_x4_001, Avazu_x4_001), so AUC and logloss can
be set next to the BARS leaderboards:

- **Criteo** (Kaggle display-advertising layout): tab-separated, no header, 40 columns: ``label``,
  the counts ``I1..I13`` and the hashed categories ``C1..C26`` (8 hex digits). Each count x goes
  through FuxiCTR's ``convert_to_bucket``: ``floor(ln(x)**2)`` for x > 2, x itself (an integer,
  negatives included) otherwise. The bucket is a categorical feature, as in Criteo_x4.
- **Avazu** (Kaggle CTR layout): CSV with a header holding ``click`` and ``hour`` (``YYMMDDHH``,
  UTC); ``id`` is dropped; every other column (C1, banner_pos, site_*, app_*, device_*,
  C14..C21) is categorical. ``hour`` becomes three categorical features as FuxiCTR computes them:
  ``hour`` (hour of the day, 0..23), ``weekday`` (``%w``: Sunday 0 .. Saturday 6) and
  ``is_weekend`` (Saturday or Sunday), plus the ``timestamp`` column (seconds since the epoch).
  The label column keeps its name, ``click``.

Every feature is encoded with the same rule: a value seen at least ``min_count`` times (BARS'
``min_categr_count``: Criteo 10, Avazu 2) gets its own id, numbered from ``FIRST_ID`` by falling
count (ties by value, so the ids do not depend on the order of the file or on the block size);
rarer values share the out-of-vocabulary id ``OOV_ID`` = 0; a missing value (an empty cell) is a
category of its own, ``MISSING_ID`` = 1, whatever its count. (FuxiCTR fills missing Criteo counts
with 0 first, so there a missing count and a count of 0 share a bucket; here they do not.) Text
values order bytewise (the order of their UTF-8 text), counts by number.

The import streams: pass 1 reads the file block by block (a background thread reads and parses
the next block with `pyarrow.csv.read_csv` while the current one is counted), turns each block's
column into block-local codes (`pandas.factorize`) and counts them, and spills the codes and each
block's distinct values to a temporary file; pass 2 reads the spill back, maps each block's
distinct values to ids and writes the ids, one parquet row group per ``ROW_GROUP_ROWS`` rows, so
it neither parses nor decompresses again (the ids are delta-packed, `PARQUET_OPTIONS`). A text
cell of at most ``PACKED_BYTES`` bytes of ASCII without NUL (every Criteo category: 8 hex digits)
is counted as an unsigned 64-bit integer holding its bytes big-endian and zero padded (keys
compare as the texts do, and are equal exactly when the texts are); any other text (longer,
non-ASCII, checked to be UTF-8) goes through Arrow's string hashing instead, with the same ids.
Counts are integers, their codes offsets from the block's smallest value where that range is
small. Memory is a few blocks plus the vocabularies, never the file. ``rows`` takes the
first N rows. The parquet file has reprokit's `DatasetSchema` under `SCHEMA_KEY` (so
`read_dataset` and ``train-ensemble --data`` read it) and the ingest document under
`INGEST_KEY`: format, source, rows, ``min_count``, and per field its vocabulary size (ids
0..size-1), how many values fell out of vocabulary, how many were missing, and the transform
applied.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from reprokit.data.layout import SCHEMA_KEY, DatasetSchema
from reprokit.errors import ReprokitError
from reprokit.fsio import atomic_write

INGEST_KEY = b"reprokit.ingest"
OOV_ID = 0
MISSING_ID = 1
FIRST_ID = 2
DEFAULT_MIN_COUNT = {"criteo": 10, "avazu": 2}
DEFAULT_BLOCK_SIZE = 16 << 20  # bytes of text per block: ~65k Criteo rows
PARSE_BLOCK_SIZE = 1 << 20  # read_csv's own blocks (its chunks): its parse stays in cache
ROW_GROUP_ROWS = 1 << 18  # rows per parquet row group
#: Text cells of at most this many bytes (ASCII, no NUL) are counted as packed uint64 keys;
#: longer ones (and 0 here: every cell) take Arrow's string path. 8 is the most a key holds.
PACKED_BYTES = 8
MERGE_ENTRIES = 1 << 16  # a field's pending per-block counts merged past this many entries
#: The output's encoding: delta-packed integers, no compression codec (a third of lz4's CPU
#: time and smaller than lz4 on id columns; DELTA_BINARY_PACKED is in every Parquet reader).
PARQUET_OPTIONS: dict[str, Any] = {
    "use_dictionary": False,
    "compression": "none",
    "column_encoding": "DELTA_BINARY_PACKED",
}

CRITEO_NUMERIC = [f"I{i}" for i in range(1, 14)]
CRITEO_CATEGORICAL = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL]
CRITEO_BUCKET = "floor(ln(x)^2) if x > 2 else x"
AVAZU_LABEL = "click"
AVAZU_HOUR = "hour"
AVAZU_DROPPED = ("id",)
AVAZU_TIME_FEATURES = ("hour", "weekday", "is_weekend")
FORMATS = ("criteo", "avazu")
#: Text features are parsed as bytes (no UTF-8 check, no hashing in the parser): most cells pack
#: into integer keys; the others are checked for UTF-8 when they are counted.
_TEXT = pa.binary()

#: A callback `(pass_number, rows_done)`; the CLI draws the progress bar from it.
ProgressFn = Callable[[int, int], None]

_T = TypeVar("_T")
_Column = pa.Array | pa.ChunkedArray  # a parsed column: the parser's chunks, not joined


def criteo_bucket(values: np.ndarray) -> np.ndarray:
    """FuxiCTR's ``convert_to_bucket`` on int64 counts: ``int(floor(ln(x)**2))`` for x > 2, x
    otherwise (negatives and 0..2 unchanged). NumPy's log, as in FuxiCTR."""
    values = np.asarray(values, dtype=np.int64)
    out = values.copy()
    big = values > 2
    out[big] = np.floor(np.log(values[big].astype(np.float64)) ** 2).astype(np.int64)
    return out


@dataclass
class FieldStats:
    """One encoded feature: its vocabulary (values kept, most frequent first) and its counts."""

    name: str
    transform: str
    vocabulary: pa.Array | None = None
    counted: int = 0  # distinct non-missing values seen
    oov: int = 0  # rows whose value fell below min_count
    missing: int = 0  # rows with an empty cell

    @property
    def vocab_size(self) -> int:
        """Ids 0..size-1: OOV, missing and one per kept value."""
        return FIRST_ID + (len(self.vocabulary) if self.vocabulary is not None else 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "distinct_values": self.counted,
            "oov_rows": self.oov,
            "missing_rows": self.missing,
            "transform": self.transform,
        }


@dataclass
class IngestResult:
    """What an import wrote: the schema, the per-field stats and the timings."""

    path: Path
    schema: DatasetSchema
    fields: list[FieldStats]
    doc: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.doc["rows"])


# --- counting -------------------------------------------------------------------------------
class _KeyCounts:
    """Counts of integer keys (int64 values, packed text) over many blocks: the per-block
    (keys, counts) parts are merged by one hash pass whenever they outgrow the merged counts."""

    def __init__(self, dtype: type) -> None:
        self.keys = np.empty(0, dtype=dtype)
        self.counts = np.empty(0, dtype=np.int64)
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending = 0

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        if len(keys):
            self.parts.append((keys, counts))
            self.pending += len(keys)
            if self.pending > max(MERGE_ENTRIES, len(self.keys)):
                self.merge()

    def merge(self) -> None:
        if not self.parts:
            return
        keys = np.concatenate([self.keys, *(k for k, _ in self.parts)])
        counts = np.concatenate([self.counts, *(n for _, n in self.parts)])
        self.parts, self.pending = [], 0
        codes, self.keys = pd.factorize(keys)
        self.counts = np.zeros(len(self.keys), dtype=np.int64)
        np.add.at(self.counts, codes, counts)


class _TextCounts:
    """Counts of the text values that do not pack (Arrow binary), merged by a group-by."""

    def __init__(self) -> None:
        self.merged: pa.Table | None = None
        self.parts: list[pa.Table] = []
        self.pending = 0

    def add(self, values: pa.Array, counts: np.ndarray) -> None:
        self.parts.append(pa.table({"v": values, "n": pa.array(counts, type=pa.int64())}))
        self.pending += len(values)
        if self.pending > max(MERGE_ENTRIES, len(self.merged) if self.merged is not None else 0):
            self.merge()

    def merge(self) -> None:
        tables = ([self.merged] if self.merged is not None else []) + self.parts
        self.parts, self.pending = [], 0
        if tables:
            merged = pa.concat_tables(tables).group_by("v").aggregate([("n", "sum")])
            self.merged = merged.rename_columns(["v", "n"]).combine_chunks()

    def values(self) -> tuple[pa.Array, np.ndarray]:
        self.merge()
        if self.merged is None:
            return pa.array([], type=_TEXT), np.empty(0, dtype=np.int64)
        return self.merged["v"].combine_chunks(), self.merged["n"].to_numpy()


def _valid(values: pa.Array) -> np.ndarray | None:
    """The array's validity as a bool mask (None: no nulls), unpacked from its bitmap."""
    if values.null_count == 0:
        return None
    if values.null_count == len(values):
        return np.zeros(len(values), dtype=bool)
    bitmap = np.frombuffer(values.buffers()[0], dtype=np.uint8)
    bits = np.unpackbits(bitmap, count=values.offset + len(values), bitorder="little")
    return bits[values.offset :].view(bool)


def _int_values(values: _Column) -> tuple[np.ndarray, np.ndarray | None]:
    """An integer column's non-null values as int64, and its validity mask (None: no nulls)."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    parts, masks = [], []
    for chunk in chunks:
        data = chunk.to_numpy(zero_copy_only=False) if not chunk.null_count else None
        if data is None:
            dtype = np.dtype(chunk.type.to_pandas_dtype())
            buffer = chunk.buffers()[1]
            data = np.frombuffer(
                buffer, dtype=dtype, count=len(chunk), offset=chunk.offset * dtype.itemsize
            )
            mask = _valid(chunk)
            masks.append(mask)
            parts.append(data[mask])
        else:
            masks.append(None)
            parts.append(data)
    raw = np.concatenate(parts) if len(parts) != 1 else parts[0]
    raw = raw.astype(np.int64, copy=False)
    if all(m is None for m in masks):
        return raw, None
    valid = [
        np.ones(len(c), dtype=bool) if m is None else m for c, m in zip(chunks, masks, strict=True)
    ]
    return raw, np.concatenate(valid)


def _pack_text(values: _Column) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """The non-empty cells of a binary column that pack into uint64 keys (at most `PACKED_BYTES`
    bytes, ASCII, no NUL): (where: their rows, as an index or mask, or None for all rows; their
    keys; the rows of the non-empty cells that do not pack, or None). Chunk by chunk: joining
    the parser's chunks first would copy the text."""
    if isinstance(values, pa.Array):
        return _pack_chunk(values)
    parts = [_pack_chunk(chunk) for chunk in values.chunks]
    if not parts:
        return None, np.empty(0, dtype=np.uint64), None
    keys = np.concatenate([p[1] for p in parts])
    if all(p[0] is None and p[2] is None for p in parts):
        return None, keys, None
    where, odd, base = [], [], 0
    for chunk, (rows, _, odd_rows) in zip(values.chunks, parts, strict=True):
        if rows is None:
            where.append(np.arange(base, base + len(chunk)))
        else:
            where.append(base + (np.flatnonzero(rows) if rows.dtype == bool else rows))
        if odd_rows is not None:
            odd.append(base + odd_rows)
        base += len(chunk)
    return np.concatenate(where), keys, (np.concatenate(odd) if odd else None)


def _pack_chunk(values: pa.Array) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """`_pack_text` of one array."""
    n = len(values)
    nulls = values.null_count
    valid = _valid(values)
    if nulls == n:
        return valid, np.empty(0, dtype=np.uint64), None
    offsets = np.frombuffer(
        values.buffers()[1], dtype=np.int32, count=n + 1, offset=values.offset * 4
    )
    data_buffer = values.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer else np.empty(0, np.uint8)
    lengths = np.diff(offsets)
    filled = n - nulls
    width = int(lengths.max())
    start, end = int(offsets[0]), int(offsets[-1])
    if (
        0 < width <= PACKED_BYTES
        and end - start == width * filled
        and np.count_nonzero(lengths == width) == filled
    ):
        # every cell has the same width (Criteo: 8 hex digits): the text is a (cells, width) grid
        text = data[start:end]
        if text.min() > 0 and text.max() < 0x80:
            grid = text.reshape(filled, width)
            if width < 8:
                padded = np.zeros((filled, 8), dtype=np.uint8)
                padded[:, :width] = grid
                grid = padded
            return valid, grid.view(">u8").ravel().astype(np.uint64), None
    rows = np.arange(n) if valid is None else np.flatnonzero(valid)
    short = rows[lengths[rows] <= PACKED_BYTES]
    keys = np.empty(0, dtype=np.uint64)
    if len(short):
        if not len(data):
            data = np.zeros(1, dtype=np.uint8)
        inside = np.arange(8) < lengths[short][:, None]
        index = offsets[short].astype(np.int64)[:, None] + np.arange(8)
        np.minimum(index, len(data) - 1, out=index)
        grid = np.where(inside, data[index], 0).astype(np.uint8)
        bad = ((grid == 0) & inside).any(axis=1) | (grid >= 0x80).any(axis=1)
        # a valid empty cell (only a quoted "" can be one) packs to 0, which nothing else does
        keys = grid.view(">u8").ravel().astype(np.uint64)
        if bad.any():
            keys, short = keys[~bad], short[~bad]
    if len(short) == len(rows):
        return (None if valid is None else short), keys, None
    packed = np.zeros(n, dtype=bool)
    packed[short] = True
    return short, keys, rows[~packed[rows]]


def _unpack_text(keys: np.ndarray) -> pa.Array:
    """Packed keys back to their text (binary): the bytes before the zero padding."""
    grid = keys.astype(">u8").view(np.uint8).reshape(len(keys), 8)
    lengths = np.count_nonzero(grid, axis=1)
    data = grid[np.arange(8) < lengths[:, None]]
    offsets = np.zeros(len(keys) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
    return pa.Array.from_buffers(_TEXT, len(keys), buffers)


class _Codes(NamedTuple):
    """One field of one block, as pass 1 spills it: per row an index into `keys` (then into
    `odd`), -1 for an empty cell."""

    codes: np.ndarray
    keys: np.ndarray  # int64 values or packed text, one per code
    odd: pa.Array | None  # text values that do not pack: codes len(keys)...


def _factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`pandas.factorize` with its hash table sized for a block's distinct values (an eighth of
    its cells; it grows when there are more) rather than for every cell: a megabyte less to
    allocate, and to fault in, per column and block."""
    return pd.factorize(keys, size_hint=max(256, len(keys) // 8))


def _code_dtype(distinct: int) -> type:
    """The narrowest signed type for codes 0..distinct-1 and -1 (the spill's size)."""
    if distinct < (1 << 7):
        return np.int8
    return np.int16 if distinct < (1 << 15) else np.int32


class _Encoder:
    """One feature: pass 1 turns each block into codes and counts them, `finish` makes the
    vocabulary, pass 2 turns codes into ids."""

    def __init__(self, stats: FieldStats, transform: Callable[[np.ndarray], np.ndarray] | None):
        self.stats = stats
        self.transform = transform
        self.text: bool | None = None
        self.counts: _KeyCounts | None = None
        self.odd_counts = _TextCounts()
        self.index = pd.Index([])
        self.ids = np.empty(0, dtype=np.int32)
        self.odd_vocabulary: pa.Array | None = None
        self.odd_ids = np.empty(0, dtype=np.int32)

    # pass 1
    def block(self, values: _Column, path: Path, fmt_name: str) -> _Codes:
        text = pa.types.is_binary(values.type)
        if self.counts is None:
            self.text = text
            self.counts = _KeyCounts(np.uint64 if text else np.int64)
        self.stats.missing += values.null_count
        return self._text(values, path, fmt_name) if text else self._ints(values)

    def _ints(self, values: _Column) -> _Codes:
        assert self.counts is not None
        n = len(values)
        if values.null_count == n:
            return _Codes(np.full(n, -1, dtype=np.int8), np.empty(0, dtype=np.int64), None)
        raw, valid = _int_values(values)
        transform = self.transform
        low, high = int(raw.min()), int(raw.max())
        span = min(1 << 15, max(n, 256))
        if transform is not None and high - low >= span:
            raw, transform = transform(raw), None
            low, high = int(raw.min()), int(raw.max())
        if high - low < span:  # small integers: their offset is the code, no hashing
            local = raw - low
            keys = np.arange(low, high + 1, dtype=np.int64)
        else:
            local, keys = _factorize(raw)
        counts = np.bincount(local, minlength=len(keys))
        if transform is not None:
            keys = transform(keys)
        seen = counts > 0
        self.counts.add(keys[seen], counts[seen])
        dtype = _code_dtype(len(keys))
        if valid is None:
            return _Codes(local.astype(dtype), keys, None)
        codes = np.full(n, -1, dtype=dtype)
        codes[valid] = local
        return _Codes(codes, keys, None)

    def _text(self, values: _Column, path: Path, fmt_name: str) -> _Codes:
        assert self.counts is not None
        n = len(values)
        where, packed, odd_rows = _pack_text(values)
        local, keys = _factorize(packed)
        self.counts.add(keys, np.bincount(local, minlength=len(keys)))
        odd = None
        distinct = len(keys)
        if odd_rows is not None:
            odd_values = values.take(pa.array(odd_rows))
            if isinstance(odd_values, pa.ChunkedArray):
                odd_values = odd_values.combine_chunks()
            try:
                odd_values.cast(pa.string())
            except pa.ArrowInvalid:
                raise ReprokitError(
                    f"{path} is not a readable {fmt_name} log (the {self.stats.name!r} column "
                    "holds text that is not UTF-8)"
                ) from None
            encoded = pc.dictionary_encode(odd_values)
            odd = encoded.dictionary
            odd_local = encoded.indices.to_numpy().astype(np.int64)
            self.odd_counts.add(odd, np.bincount(odd_local, minlength=len(odd)))
            distinct += len(odd)
        dtype = _code_dtype(distinct)
        if where is None:
            return _Codes(local.astype(dtype), keys, None)
        codes = np.full(n, -1, dtype=dtype)
        codes[where] = local
        if odd_rows is not None:
            codes[odd_rows] = len(keys) + odd_local
        return _Codes(codes, keys, odd)

    def finish(self, min_count: int) -> None:
        """The vocabulary: the values seen at least `min_count` times, by falling count then
        value; and the lookups pass 2 uses."""
        stats = self.stats
        counts = self.counts or _KeyCounts(np.int64)
        counts.merge()
        keys, n = counts.keys, counts.counts
        odd, odd_n = self.odd_counts.values()
        kept, odd_kept = n >= min_count, odd_n >= min_count
        stats.counted = len(keys) + len(odd)
        stats.oov = int(n[~kept].sum()) + int(odd_n[~odd_kept].sum())
        keys, n = keys[kept], n[kept]
        odd, odd_n = odd.filter(pa.array(odd_kept)), odd_n[odd_kept]
        if not len(odd):  # one sort on the integer keys (bytewise order for packed text)
            order = np.lexsort((keys, -n))
            keys = keys[order]
            self.index = pd.Index(keys)
            self.ids = np.arange(FIRST_ID, FIRST_ID + len(keys), dtype=np.int32)
            stats.vocabulary = (
                _unpack_text(keys).cast(pa.string()) if self.text else pa.array(keys, pa.int64())
            )
            return
        values = pa.concat_arrays([_unpack_text(keys), odd])
        table = pa.table({"v": values, "n": np.concatenate([n, odd_n])})
        order = pc.sort_indices(table, sort_keys=[("n", "descending"), ("v", "ascending")])
        order = order.to_numpy()
        rank = np.empty(len(order), dtype=np.int32)
        rank[order] = np.arange(FIRST_ID, FIRST_ID + len(order), dtype=np.int32)
        self.index, self.ids = pd.Index(keys), rank[: len(keys)]
        self.odd_vocabulary, self.odd_ids = odd, rank[len(keys) :]
        stats.vocabulary = values.take(pa.array(order)).cast(pa.string())

    # pass 2
    def encode(self, block: _Codes) -> pa.Array:
        """Ids: FIRST_ID + the value's rank in the vocabulary, MISSING_ID for an empty cell,
        OOV_ID else."""
        n_keys = len(block.keys)
        n_odd = len(block.odd) if block.odd is not None else 0
        lut = np.full(n_keys + n_odd + 1, OOV_ID, dtype=np.int32)
        if n_keys and len(self.index):
            where = self.index.get_indexer(block.keys)
            hit = where >= 0
            lut[:n_keys][hit] = self.ids[where[hit]]
        if n_odd and self.odd_vocabulary is not None:
            where = pc.index_in(block.odd, value_set=self.odd_vocabulary)
            where = where.fill_null(-1).to_numpy()
            hit = where >= 0
            lut[n_keys : n_keys + n_odd][hit] = self.odd_ids[where[hit]]
        lut[-1] = MISSING_ID
        # into Arrow's memory pool, which keeps freed memory for the next block (malloc would
        # hand it back and fault it in again); -1 takes the last entry; intp codes index fastest
        n = len(block.codes)
        ids = pa.allocate_buffer(4 * n)
        np.take(lut, block.codes.astype(np.intp), out=np.frombuffer(ids, dtype=np.int32))
        return pa.Array.from_buffers(pa.int32(), n, [None, ids])


# --- the two formats ----------------------------------------------------------------------------
@dataclass
class _Format:
    """How to read one log format and turn a block into (label, features, extra columns)."""

    name: str
    label: str
    column_names: list[str]
    header: bool
    block_size: int
    parse_options: pacsv.ParseOptions
    convert_options: pacsv.ConvertOptions
    fields: list[FieldStats]
    features: Callable[[pa.Table], dict[str, _Column]]
    transforms: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    timestamp: str | None = None


def _open_stream(path: Path) -> pa.NativeFile:
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return pa.input_stream(str(path), compression="gzip" if magic == b"\x1f\x8b" else None)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ReprokitError(f"file not found: {path}")
    if path.is_dir():
        raise ReprokitError(f"{path} is a directory, not a log file")
    if path.stat().st_size == 0:
        raise ReprokitError(f"{path} is empty")


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    return table.column(name)


def _criteo_format(block_size: int) -> _Format:
    fmt_fields = [FieldStats(n, CRITEO_BUCKET) for n in CRITEO_NUMERIC]
    fmt_fields += [FieldStats(n, "none") for n in CRITEO_CATEGORICAL]
    types = {"label": pa.int8(), **dict.fromkeys(CRITEO_NUMERIC, pa.int64())}
    types.update(dict.fromkeys(CRITEO_CATEGORICAL, _TEXT))
    return _Format(
        name="criteo",
        label="label",
        column_names=CRITEO_COLUMNS,
        header=False,
        block_size=block_size,
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=True, null_values=[""]
        ),
        fields=fmt_fields,
        features=lambda table: {f: _column(table, f) for f in CRITEO_COLUMNS[1:]},
        transforms=dict.fromkeys(CRITEO_NUMERIC, criteo_bucket),
    )


def _avazu_header(path: Path) -> list[str]:
    stream = _open_stream(path)
    try:
        first = stream.read(1 << 16).split(b"\n", 1)[0]
    finally:
        stream.close()
    names = [n.strip().strip('"') for n in first.decode("utf-8", "replace").strip().split(",")]
    if AVAZU_LABEL not in names:
        shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise ReprokitError(
            f"{path} has no {AVAZU_LABEL!r} column (its header is {shown}); an Avazu training "
            "file starts with id,click,hour,... (the Kaggle test file has no labels)"
        )
    if AVAZU_HOUR not in names:
        raise ReprokitError(f"{path} has no {AVAZU_HOUR!r} column (YYMMDDHH) in its header")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ReprokitError(f"{path} repeats the column {dup[0]!r} in its header")
    return names


def _avazu_format(path: Path, block_size: int) -> _Format:
    names = _avazu_header(path)
    categorical = [n for n in names if n not in (AVAZU_LABEL, AVAZU_HOUR, *AVAZU_DROPPED)]
    clash = [n for n in categorical if n in (*AVAZU_TIME_FEATURES, "timestamp", "example_id")]
    if clash:
        raise ReprokitError(
            f"{path} has a column {clash[0]!r}, a name the import derives from 'hour'"
        )
    fmt_fields = [FieldStats(n, "none") for n in categorical]
    fmt_fields += [
        FieldStats("hour", "hour of day of YYMMDDHH (0..23)"),
        FieldStats("weekday", "weekday of YYMMDDHH (%w: Sunday 0 .. Saturday 6)"),
        FieldStats("is_weekend", "1 if YYMMDDHH is a Saturday or Sunday, else 0"),
    ]
    types = {AVAZU_LABEL: pa.int8(), AVAZU_HOUR: pa.string()}
    types.update(dict.fromkeys(categorical, _TEXT))
    return _Format(
        name="avazu",
        label=AVAZU_LABEL,
        column_names=names,
        header=True,
        block_size=block_size,
        parse_options=pacsv.ParseOptions(delimiter=","),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            include_columns=[AVAZU_LABEL, AVAZU_HOUR, *categorical],
            strings_can_be_null=True,
            null_values=[""],
        ),
        fields=fmt_fields,
        features=lambda table: _avazu_features(table, categorical),
        timestamp="timestamp",
    )


def avazu_hour(hour: _Column) -> dict[str, _Column]:
    """YYMMDDHH text → timestamp (int64 seconds, UTC), hour of day, weekday (%w), is_weekend."""
    if hour.null_count:
        raise ReprokitError("the Avazu 'hour' column has empty cells; every row needs YYMMDDHH")
    bad = pc.invert(pc.match_substring_regex(hour, r"^\d{8}$"))
    if pc.any(bad).as_py():
        example = hour.filter(bad)[0].as_py()
        raise ReprokitError(f"the Avazu 'hour' column holds {example!r}, not YYMMDDHH")
    try:
        stamp = pc.strptime(pc.binary_join_element_wise("20", hour, ""), "%Y%m%d%H", unit="s")
    except pa.ArrowInvalid:
        raise ReprokitError(
            "the Avazu 'hour' column holds a value that is not a date (YYMMDDHH)"
        ) from None
    weekday = pc.day_of_week(stamp, count_from_zero=True, week_start=7)  # Sunday 0, as %w
    weekend = pc.or_(pc.equal(weekday, 0), pc.equal(weekday, 6))
    return {
        "timestamp": stamp.cast(pa.int64()),
        "hour": pc.hour(stamp).cast(pa.int64()),
        "weekday": weekday.cast(pa.int64()),
        "is_weekend": weekend.cast(pa.int64()),
    }


def _avazu_features(table: pa.Table, categorical: list[str]) -> dict[str, _Column]:
    out = {name: _column(table, name) for name in categorical}
    out.update(avazu_hour(_column(table, AVAZU_HOUR)))
    return out


# --- reading --------------------------------------------------------------------------------
def _text_blocks(path: Path, block_size: int) -> Iterator[tuple[bytearray, int]]:
    """The file (decompressed) in pieces of about `block_size` bytes that end at a line end, so
    each piece parses on its own (by `pyarrow.csv.read_csv`): (buffer, length).
    One buffer is reused for every piece (fresh 16 MiB allocations cost more than the parse), so
    a piece is valid only until the next one is asked for."""
    with open(path, "rb") as handle:
        gz = handle.read(2) == b"\x1f\x8b"
    stream = gzip.open(path, "rb") if gz else open(path, "rb", buffering=0)  # noqa: SIM115
    try:
        buf = bytearray(block_size)
        filled = 0
        eof = False
        while not eof:
            if filled == len(buf):  # a line longer than the buffer: grow it
                buf.extend(bytes(len(buf)))
            view = memoryview(buf)
            while filled < len(buf):
                got = stream.readinto(view[filled:])
                if not got:
                    eof = True
                    break
                filled += got
            view.release()
            cut = buf.rfind(b"\n", 0, filled) + 1 if not eof else filled
            if cut == 0:
                continue
            yield buf, cut
            rest = filled - cut
            buf[:rest] = buf[cut:filled]
            filled = rest
    finally:
        stream.close()


def _count_lines(path: Path, size: int) -> int:
    """Line ends in the first `size` bytes of the (decompressed) file."""
    lines = 0
    for buf, end in _text_blocks(path, DEFAULT_BLOCK_SIZE):
        lines += buf.count(b"\n", 0, min(end, size))
        size -= end
        if size <= 0:
            break
    return lines


def _batches(path: Path, fmt: _Format, rows: int | None) -> Iterator[pa.Table]:
    """The file's blocks as tables, cut at `rows`; a row that does not parse is one sentence that
    names its line."""
    done = 0
    consumed = 0  # bytes of text before this block (its line numbers are counted on error only)
    for k, (buf, end) in enumerate(_text_blocks(path, fmt.block_size)):
        if end < 4096 and not bytes(buf[:end]).strip():
            consumed += end
            continue  # trailing blank lines
        skip = 1 if (k == 0 and fmt.header) else 0
        text = pa.py_buffer(memoryview(buf)[:end])  # no copy; the parsed arrays own their memory
        try:
            table = pacsv.read_csv(
                text,
                # one thread: the parse runs beside the counting of the block before (two
                # threads for two cores; Arrow's own threads would only compete with it)
                read_options=pacsv.ReadOptions(
                    column_names=fmt.column_names,
                    skip_rows=skip,
                    block_size=PARSE_BLOCK_SIZE,
                    use_threads=False,
                ),
                parse_options=fmt.parse_options,
                convert_options=fmt.convert_options,
            )
        except pa.ArrowInvalid as exc:
            lines_before = _count_lines(path, consumed)
            raise _parse_error(path, fmt, exc, bytes(buf[:end]), lines_before) from None
        del text
        consumed += end
        if rows is not None and done + table.num_rows >= rows:
            yield table.slice(0, rows - done)
            return
        done += table.num_rows
        yield table


def _prefetch(make: Callable[[], Iterator[_T]], depth: int = 1) -> Iterator[_T]:
    """`make()`'s items, produced by a background thread up to `depth` items ahead (Arrow's
    parsing and NumPy's loops release the GIL, so the two threads share the cores); the
    thread's exception is raised here, and leaving early stops the thread."""
    items: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[int, Any]) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            iterator = make()
            try:
                for item in iterator:
                    if not put((0, item)):
                        return
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((2, exc))
            return
        put((1, None))

    worker = threading.Thread(target=run, name="reprokit-ingest-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = items.get()
            if kind == 1:
                return
            if kind == 2:
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


_SPILL_DTYPES = [np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint64, np.uint8)]


class _Spill:
    """Pass 1's per-block codes in one file, a record per block: the number of arrays, their
    (dtype, length) and their bytes, so pass 2 reads a block with two reads. A block read back
    lives in a buffer the next one reuses: it is valid until the next `get_block`."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.buffer = bytearray()  # get_block's, reused while the next block fits

    def put_block(self, label: np.ndarray, codes: list[_Codes], extra: np.ndarray | None) -> None:
        arrays = [label]
        for block in codes:
            arrays += [block.codes, block.keys]
            if block.odd is None:
                arrays.append(np.empty(0, dtype=np.int32))
                continue
            odd = block.odd
            offsets = np.frombuffer(
                odd.buffers()[1], dtype=np.int32, count=len(odd) + 1, offset=odd.offset * 4
            )
            data_buffer = odd.buffers()[2]
            data = np.frombuffer(data_buffer, np.uint8) if data_buffer else np.empty(0, np.uint8)
            arrays += [offsets - offsets[0], data[offsets[0] : offsets[-1]]]
        if extra is not None:
            arrays.append(extra)
        head = np.empty((len(arrays), 2), dtype=np.int64)
        for i, array in enumerate(arrays):
            head[i] = _SPILL_DTYPES.index(array.dtype), len(array)
        self.handle.write(np.int64(len(arrays)).tobytes())
        self.handle.write(head.tobytes())
        for array in arrays:
            self.handle.write(memoryview(np.ascontiguousarray(array)).cast("B"))

    def get_block(self, n_fields: int, extra: bool) -> tuple[np.ndarray, list[_Codes], Any]:
        (count,) = np.frombuffer(self.handle.read(8), dtype=np.int64)
        head = np.frombuffer(self.handle.read(16 * int(count)), dtype=np.int64).reshape(-1, 2)
        sizes = [_SPILL_DTYPES[int(t)].itemsize * int(n) for t, n in head]
        if len(self.buffer) < sum(sizes):
            self.buffer = bytearray(sum(sizes) + (sum(sizes) >> 3))
        body = memoryview(self.buffer)[: sum(sizes)]
        self.handle.readinto(body)
        arrays, at = [], 0
        for (t, n), size in zip(head, sizes, strict=True):
            arrays.append(np.frombuffer(body, dtype=_SPILL_DTYPES[int(t)], count=int(n), offset=at))
            at += size
        items = iter(arrays)
        label = next(items)
        blocks = []
        for _ in range(n_fields):
            codes, keys, offsets = next(items), next(items), next(items)
            odd = None
            if len(offsets):
                data = next(items)
                odd = pa.Array.from_buffers(
                    _TEXT, len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
                )
            blocks.append(_Codes(codes, keys, odd))
        return label, blocks, (next(items) if extra else None)


def _parse_error(
    path: Path, fmt: _Format, exc: Exception, block: bytes, lines_before: int
) -> ReprokitError:
    """The first line of `block` with the wrong number of columns, or pyarrow's own reason."""
    want = len(fmt.column_names)
    delimiter = fmt.parse_options.delimiter.encode()
    for i, line in enumerate(block.split(b"\n")):
        line = line.rstrip(b"\r")
        if not line or (i == 0 and lines_before == 0 and fmt.header):
            continue
        got = line.count(delimiter) + 1
        if got != want:
            if fmt.name == "criteo":
                what = "40 tab-separated columns (label, I1-I13, C1-C26)"
            else:
                what = f"{want} comma-separated columns, as its header"
            return ReprokitError(
                f"{path}: line {lines_before + i + 1} has {got} column(s); a {fmt.name} row "
                f"has {what}"
            )
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ReprokitError(f"{path} is not a readable {fmt.name} log ({text})")


def _label(label: pa.Array, fmt: _Format, path: Path) -> pa.Array:
    if label.null_count:
        raise ReprokitError(f"{path}: the {fmt.label!r} column has empty cells")
    low, high = pc.min_max(label).values()
    if len(label) and (low.as_py() < 0 or high.as_py() > 1):
        bad = low.as_py() if low.as_py() < 0 else high.as_py()
        raise ReprokitError(f"{path}: the {fmt.name} label {fmt.label!r} holds {bad}, not 0/1")
    return label


# --- the import -----------------------------------------------------------------------------
def import_log(
    kind: str,
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    min_count: int | None = None,
    rows: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: ProgressFn | None = None,
) -> IngestResult:
    """Stream a Criteo or Avazu log (plain or gzip) into a reprokit parquet file in two passes."""
    if kind not in FORMATS:
        raise ReprokitError(f"unknown log format {kind!r}; expected one of {', '.join(FORMATS)}")
    path, out = Path(path), Path(out)
    _check_file(path)
    min_count = DEFAULT_MIN_COUNT[kind] if min_count is None else int(min_count)
    if min_count < 1:
        raise ReprokitError(f"--min-count must be at least 1, got {min_count}")
    if rows is not None and rows < 1:
        raise ReprokitError(f"--rows must be at least 1, got {rows}")
    if block_size < 1024:
        raise ReprokitError(f"the block size must be at least 1024 bytes, got {block_size}")
    fmt = _criteo_format(block_size) if kind == "criteo" else _avazu_format(path, block_size)
    report = progress or (lambda _pass, _rows: None)
    started = time.perf_counter()
    encoders = [_Encoder(f, fmt.transforms.get(f.name)) for f in fmt.fields]

    spill = out.with_name(f".{out.name}.pass1-{os.getpid()}.spill")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(spill, "wb") as handle:
            total = _count_pass(path, fmt, rows, encoders, _Spill(handle), report)
        for encoder in encoders:
            encoder.finish(min_count)
        pa.default_memory_pool().release_unused()  # pass 1's parser memory, before pass 2's
        counted_seconds = time.perf_counter() - started
        return _encode_pass(
            kind,
            path,
            out,
            fmt,
            total,
            min_count,
            encoders,
            spill,
            report,
            started,
            counted_seconds,
        )
    finally:
        spill.unlink(missing_ok=True)


def _count_pass(
    path: Path,
    fmt: _Format,
    rows: int | None,
    encoders: list[_Encoder],
    spill: _Spill,
    report: ProgressFn,
) -> int:
    """Pass 1: parse each block (one block ahead, in the background), code and count every
    feature's values and spill the codes, so pass 2 neither parses nor decompresses again."""
    total = 0
    report(1, 0)
    for table in _prefetch(lambda: _batches(path, fmt, rows)):
        label = _label(_column(table, fmt.label), fmt, path)
        features = fmt.features(table)
        codes = [e.block(features[e.stats.name], path, fmt.name) for e in encoders]
        extra = None
        if fmt.timestamp:
            extra = features[fmt.timestamp].to_numpy(zero_copy_only=False)
        spill.put_block(label.to_numpy(zero_copy_only=False), codes, extra)
        total += table.num_rows
        report(1, total)
    if total == 0:
        raise ReprokitError(f"{path} has no rows")
    return total


def _encode_pass(
    kind: str,
    path: Path,
    out: Path,
    fmt: _Format,
    total: int,
    min_count: int,
    encoders: list[_Encoder],
    spill: Path,
    report: ProgressFn,
    started: float,
    counted_seconds: float,
) -> IngestResult:
    """Pass 2: read the spilled codes back and write them as ids, in parquet row groups (the
    ids of the next group are made in the background while one is written)."""
    names = [f.name for f in fmt.fields]
    schema = DatasetSchema(
        categorical=names,
        numeric=[],
        labels=[fmt.label],
        example_id="example_id",
        timestamp=fmt.timestamp,
        name=kind,
    )
    doc: dict[str, Any] = {
        "format": kind,
        "source": str(path),
        "rows": total,
        "min_count": min_count,
        "oov_id": OOV_ID,
        "missing_id": MISSING_ID,
        "first_id": FIRST_ID,
        "id_order": "falling count, ties by value",
        "conventions": "FuxiCTR/BARS (Criteo_x4_001, Avazu_x4_001), missing as its own id",
        "fields": [f.to_dict() for f in fmt.fields],
    }
    columns = [("example_id", pa.int64()), (fmt.label, pa.int8())]
    columns += [(n, pa.int32()) for n in names]
    if fmt.timestamp:
        columns.append((fmt.timestamp, pa.int64()))
    metadata = {SCHEMA_KEY: json.dumps(schema.to_dict()), INGEST_KEY: json.dumps(doc)}
    arrow_schema = pa.schema(columns, metadata=metadata)

    def blocks() -> Iterator[pa.Table]:
        """The spilled blocks as the output's columns: row ids, the label, the ids."""
        done = 0
        with open(spill, "rb") as handle:
            source = _Spill(handle)
            while done < total:
                label, codes, extra = source.get_block(len(encoders), fmt.timestamp is not None)
                n = len(label)
                # (label and extra are copied out of the spill's buffer, which the next block
                # reuses; the ids are new arrays)
                arrays = [
                    pa.array(np.arange(done, done + n, dtype=np.int64)),
                    pa.array(label.copy()),
                ]
                arrays += [e.encode(c) for e, c in zip(encoders, codes, strict=True)]
                if extra is not None:
                    arrays.append(pa.array(extra.copy()))
                done += n
                yield pa.Table.from_arrays(arrays, schema=arrow_schema)

    def write(tmp: Path) -> None:
        done = 0
        report(2, 0)
        parts: list[pa.Table] = []
        with pq.ParquetWriter(tmp, arrow_schema, **PARQUET_OPTIONS) as writer:
            for table in _prefetch(blocks, depth=2):
                parts.append(table)
                done += table.num_rows
                if sum(t.num_rows for t in parts) >= ROW_GROUP_ROWS or done >= total:
                    group = pa.concat_tables(parts)
                    parts = []
                    writer.write_table(group, row_group_size=group.num_rows)
                    report(2, done)

    atomic_write(out, write)
    seconds = time.perf_counter() - started
    doc = {**doc, "seconds": {"count": round(counted_seconds, 3), "total": round(seconds, 3)}}
    return IngestResult(path=out, schema=schema, fields=fmt.fields, doc=doc)


def read_ingest_doc(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ingest document of a file written by `import_log` (None for any other dataset)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[INGEST_KEY]) if INGEST_KEY in meta else None


def rows_per_second(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else math.inf
