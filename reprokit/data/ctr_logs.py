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
with 0 first, so there a missing count and a count of 0 share a bucket; here they do not.)

The import streams: pass 1 reads the file block by block (`pyarrow.csv.open_csv`) and counts
values, pass 2 reads it again and writes the ids, one parquet row group per block. Memory is one
block plus the vocabularies, never the file. ``rows`` takes the first N rows. The parquet file has
reprokit's `DatasetSchema` under `SCHEMA_KEY` (so `read_dataset` and ``train-ensemble --data``
read it) and the ingest document under `INGEST_KEY`: format, source, rows, ``min_count``, and per
field its vocabulary size (ids 0..size-1), how many values fell out of vocabulary, how many were
missing, and the transform applied.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
ROW_GROUP_ROWS = 1 << 18  # rows per parquet row group

CRITEO_NUMERIC = [f"I{i}" for i in range(1, 14)]
CRITEO_CATEGORICAL = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL]
CRITEO_BUCKET = "floor(ln(x)^2) if x > 2 else x"
AVAZU_LABEL = "click"
AVAZU_HOUR = "hour"
AVAZU_DROPPED = ("id",)
AVAZU_TIME_FEATURES = ("hour", "weekday", "is_weekend")
FORMATS = ("criteo", "avazu")
#: Text features are parsed straight into dictionary arrays: each block's values are hashed once,
#: by the CSV reader, and counting and encoding work on the (small) dictionary and int indices.
_TEXT = pa.dictionary(pa.int32(), pa.string())

#: A callback `(pass_number, rows_done)`; the CLI draws the progress bar from it.
ProgressFn = Callable[[int, int], None]


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


class _Counter:
    """Value counts of one field over many blocks: per-block `value_counts`, merged by a group-by
    whenever the pending parts outgrow the merged table (amortised, all in Arrow)."""

    def __init__(self) -> None:
        self.merged: pa.Table | None = None
        self.parts: list[pa.Table] = []
        self.pending = 0

    def add(self, values: pa.Array) -> None:
        if pa.types.is_dictionary(values.type):
            indices = values.indices.drop_null().to_numpy()
            n = np.bincount(indices, minlength=len(values.dictionary))
            seen = np.flatnonzero(n)
            part = pa.table({"v": values.dictionary.take(seen), "n": n[seen]})
        else:
            counts = pc.value_counts(values.drop_null())
            part = pa.table({"v": counts.field("values"), "n": counts.field("counts")})
        self.parts.append(part)
        self.pending += len(part)
        if self.pending > max(1 << 16, len(self.merged) if self.merged is not None else 0):
            self._merge()

    def _merge(self) -> None:
        tables = ([self.merged] if self.merged is not None else []) + self.parts
        self.parts, self.pending = [], 0
        if not tables:
            return
        table = pa.concat_tables(tables)
        merged = table.group_by("v").aggregate([("n", "sum")])
        self.merged = merged.rename_columns(["v", "n"])

    def vocabulary(self, min_count: int, value_type: pa.DataType) -> tuple[pa.Array, int, int]:
        """(kept values by falling count then value, distinct values, rows of the rare ones)."""
        self._merge()
        if self.merged is None or len(self.merged) == 0:
            return pa.array([], type=value_type), 0, 0
        table = self.merged
        kept = table.filter(pc.greater_equal(table["n"], min_count))
        order = pc.sort_indices(kept, sort_keys=[("n", "descending"), ("v", "ascending")])
        rare = int(pc.sum(table["n"]).as_py()) - int(pc.sum(kept["n"]).as_py() or 0)
        return kept["v"].take(order).combine_chunks().cast(value_type), len(table), rare


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
    features: Callable[[pa.RecordBatch], dict[str, pa.Array]]
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
        features=_criteo_features,
    )


def _criteo_features(batch: pa.RecordBatch) -> dict[str, pa.Array]:
    out: dict[str, pa.Array] = {}
    for name in CRITEO_NUMERIC:
        column = batch.column(name)
        valid = column.is_valid()
        raw = column.fill_null(0).to_numpy(zero_copy_only=False)
        mask = ~valid.to_numpy(zero_copy_only=False)
        out[name] = pa.array(criteo_bucket(raw), mask=mask if mask.any() else None)
    for name in CRITEO_CATEGORICAL:
        out[name] = batch.column(name)
    return out


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
        features=lambda batch: _avazu_features(batch, categorical),
        timestamp="timestamp",
    )


def avazu_hour(hour: pa.Array) -> dict[str, pa.Array]:
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


def _avazu_features(batch: pa.RecordBatch, categorical: list[str]) -> dict[str, pa.Array]:
    out = {name: batch.column(name) for name in categorical}
    out.update(avazu_hour(batch.column(AVAZU_HOUR)))
    return out


# --- reading --------------------------------------------------------------------------------
def _text_blocks(path: Path, block_size: int) -> Iterator[tuple[bytearray, int]]:
    """The file (decompressed) in pieces of about `block_size` bytes that end at a line end, so
    each piece parses on its own (and in parallel, by `pyarrow.csv.read_csv`): (buffer, length).
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


def _batches(path: Path, fmt: _Format, rows: int | None) -> Iterator[pa.Table]:
    """The file's blocks as tables, cut at `rows`; a row that does not parse is one sentence that
    names its line."""
    done = 0
    lines_before = 0
    for k, (buf, end) in enumerate(_text_blocks(path, fmt.block_size)):
        if end < 4096 and not bytes(buf[:end]).strip():
            continue  # trailing blank lines
        skip = 1 if (k == 0 and fmt.header) else 0
        text = pa.py_buffer(memoryview(buf)[:end])  # no copy; the parsed arrays own their memory
        try:
            table = pacsv.read_csv(
                text,
                read_options=pacsv.ReadOptions(
                    column_names=fmt.column_names, skip_rows=skip, block_size=1 << 22
                ),
                parse_options=fmt.parse_options,
                convert_options=fmt.convert_options,
            )
        except pa.ArrowInvalid as exc:
            raise _parse_error(path, fmt, exc, bytes(buf[:end]), lines_before) from None
        del text
        lines_before += buf.count(b"\n", 0, end)
        if rows is not None and done + table.num_rows >= rows:
            yield table.slice(0, rows - done)
            return
        done += table.num_rows
        yield table


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


def _label(batch: pa.RecordBatch, fmt: _Format, path: Path) -> pa.Array:
    label = batch.column(fmt.label)
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

    spill = out.with_name(f".{out.name}.pass1-{os.getpid()}.arrow")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        total = _count_pass(path, fmt, rows, min_count, spill, report)
        counted_seconds = time.perf_counter() - started
        return _encode_pass(
            kind, path, out, fmt, total, min_count, spill, report, started, counted_seconds
        )
    finally:
        spill.unlink(missing_ok=True)


def _count_pass(
    path: Path,
    fmt: _Format,
    rows: int | None,
    min_count: int,
    spill: Path,
    report: ProgressFn,
) -> int:
    """Pass 1: parse each block, count every feature's values and append the parsed features to
    the `spill` file (Arrow IPC), so pass 2 neither parses nor decompresses again."""
    counters = {f.name: _Counter() for f in fmt.fields}
    types: dict[str, pa.DataType] = {}
    missing = dict.fromkeys(counters, 0)
    total = 0
    writer: pa.ipc.RecordBatchStreamWriter | None = None
    report(1, 0)
    try:
        for table in _batches(path, fmt, rows):
            # the parser's chunks as they are: each text column's chunk has its own dictionary
            for batch in table.to_batches():
                label = _label(batch, fmt, path)
                features = fmt.features(batch)
                for name, counter in counters.items():
                    values = features[name]
                    counter.add(values)
                    types[name] = getattr(values.type, "value_type", values.type)
                    missing[name] += values.null_count
                spilled = pa.record_batch({fmt.label: label, **features})
                if writer is None:
                    writer = pa.ipc.new_stream(str(spill), spilled.schema)
                writer.write_batch(spilled)
            total += table.num_rows
            report(1, total)
    finally:
        if writer is not None:
            writer.close()
    if total == 0:
        raise ReprokitError(f"{path} has no rows")
    for stats in fmt.fields:
        stats.missing = missing[stats.name]
        stats.vocabulary, stats.counted, stats.oov = counters.pop(stats.name).vocabulary(
            min_count, types.get(stats.name, pa.string())
        )
    return total


def _encode_pass(
    kind: str,
    path: Path,
    out: Path,
    fmt: _Format,
    total: int,
    min_count: int,
    spill: Path,
    report: ProgressFn,
    started: float,
    counted_seconds: float,
) -> IngestResult:
    """Pass 2: read the spilled blocks back and write each as a parquet row group of ids."""
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

    def write(tmp: Path) -> None:
        done = 0
        report(2, 0)
        with (
            pq.ParquetWriter(tmp, arrow_schema, use_dictionary=False, compression="lz4") as writer,
            pa.OSFile(str(spill), "rb") as source,
        ):
            groups: list[pa.Table] = []
            pending = 0
            for features in pa.ipc.open_stream(source):
                groups.append(_encode_batch(features, fmt, arrow_schema, done))
                pending += features.num_rows
                done += features.num_rows
                if pending >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(groups), row_group_size=pending)
                    groups, pending = [], 0
                    report(2, done)
            if groups:
                writer.write_table(pa.concat_tables(groups), row_group_size=pending)
            report(2, done)

    atomic_write(out, write)
    seconds = time.perf_counter() - started
    doc = {**doc, "seconds": {"count": round(counted_seconds, 3), "total": round(seconds, 3)}}
    return IngestResult(path=out, schema=schema, fields=fmt.fields, doc=doc)


def _encode_batch(
    features: pa.RecordBatch, fmt: _Format, schema: pa.Schema, first_row: int
) -> pa.Table:
    """One spilled batch as the output's columns: row ids, the label, the feature ids."""
    arrays = [
        pa.array(np.arange(first_row, first_row + features.num_rows, dtype=np.int64)),
        features.column(fmt.label),
    ]
    arrays += [_encode(features.column(f.name), f) for f in fmt.fields]
    if fmt.timestamp:
        arrays.append(features.column(fmt.timestamp))
    return pa.Table.from_arrays(arrays, schema=schema)


def _encode(values: pa.Array, stats: FieldStats) -> pa.Array:
    """Ids: FIRST_ID + the value's rank in the vocabulary, MISSING_ID for null, OOV_ID else."""
    assert stats.vocabulary is not None
    if pa.types.is_dictionary(values.type):
        by_entry = _encode(values.dictionary, stats).to_numpy()
        indices = values.indices
        if not len(by_entry):
            return pa.array(np.full(len(values), MISSING_ID, dtype=np.int32))
        ids = by_entry[indices.fill_null(0).to_numpy()]
        if indices.null_count:
            ids[~indices.is_valid().to_numpy(zero_copy_only=False)] = MISSING_ID
        return pa.array(ids)
    index = pc.index_in(values, value_set=stats.vocabulary)
    ids = pc.fill_null(pc.add(index.cast(pa.int32()), pa.scalar(FIRST_ID, pa.int32())), OOV_ID)
    if values.null_count:
        ids = pc.if_else(values.is_null(), pa.scalar(MISSING_ID, pa.int32()), ids)
    return ids


def read_ingest_doc(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ingest document of a file written by `import_log` (None for any other dataset)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[INGEST_KEY]) if INGEST_KEY in meta else None


def rows_per_second(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else math.inf
