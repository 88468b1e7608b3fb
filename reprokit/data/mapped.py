"""Training data larger than one DataFrame: a dataset file encoded piece by piece into `.npy`
files that training maps into memory (`data.storage = "mapped"`, `--storage mapped`).

`load_encoded` gives the same `EncodedData` either way: the same split, the same indices,
vocabulary sizes and keys, labels, times and numeric z-scores, bit for bit (tests). The in-memory
path reads the whole parquet file into a DataFrame and encodes it there; this one never holds
more than one piece of `READ_ROWS` rows of the file (plus one numeric column at a time, for its
mean and standard deviation):

1. the example ids (and timestamps, for a temporal split) decide the split (`split_order`);
2. pass 1 over the file's pieces collects every categorical field's distinct training values and
   missing count (its `FieldVocab`), and the labels and times;
3. pass 2 writes every row's indices and z-scores into `.npy` files at its place in its split;
   eval values unseen in training are kept aside for `eval_cat_raw`.

The files go to a cache directory, one per (file, size, mtime, schema, label, split settings):
``$REPROKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/reprokit``, else ``~/.cache/reprokit``, under
``encoded/``. They are written in a temporary directory renamed into place when complete, so a
killed encode leaves nothing a later run would take for finished; a later run with the same data
and split reuses them. The arrays are `MappedArray`s: workers on this machine map the same files.

``auto`` (the default) maps a dataset whose encoded arrays would pass `AUTO_BYTES`, and reads
smaller ones (and the built-in synthetic data) into memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.lib.format import open_memmap

from reprokit.config import STORAGES
from reprokit.data.encoding import (
    EncodedData,
    FieldVocab,
    VocabSizes,
    _labels,
    _numeric_matrix,
    column_stats,
    sorted_distinct,
    standardise,
    timestamp_seconds,
    unseen_mask,
)
from reprokit.data.layout import Dataset, DatasetSchema, schema_of_table
from reprokit.data.mapped_array import open_mapped, release
from reprokit.data.splits import (
    check_dataset_path,
    check_eval_size,
    select_labels,
    split_order,
    with_example_id,
)
from reprokit.errors import ReprokitError

if TYPE_CHECKING:
    from reprokit.config import DataConfig

#: `auto` maps a dataset whose encoded index and feature arrays would hold more bytes than this.
AUTO_BYTES = 1 << 30
#: Rows of the dataset file read (and converted to pandas) at a time.
READ_ROWS = 1 << 16
#: Bumped whenever the cached files' layout or the encoding changes, so old caches are not read.
CACHE_VERSION = 1
_BIG = ("train_cat", "eval_cat", "train_num", "eval_num", "eval_cat_raw")
_SMALL = ("train_y", "eval_y", "train_example_id", "eval_example_id", "train_time")


def cache_root() -> Path:
    """Where encoded datasets are cached (see the module docstring)."""
    env = os.environ.get("REPROKIT_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "reprokit"


def use_mapped(data_config: DataConfig) -> bool:
    """Whether `data_config` trains from memory-mapped arrays (its `storage`, auto decided by the
    size of the encoded arrays, which the file's metadata gives without reading it)."""
    storage = data_config.storage
    if storage not in STORAGES:
        raise ReprokitError(f"unknown storage {storage!r}; choose {', '.join(STORAGES)}")
    if data_config.path is None:
        if storage == "mapped":
            raise ReprokitError(
                "--storage mapped needs a dataset file (--data); the built-in synthetic data is "
                "generated in memory"
            )
        return False
    if storage != "auto":
        return storage == "mapped"
    path = check_dataset_path(data_config.path)
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowInvalid, OSError):
        return False  # the in-memory reader says what is wrong with it
    columns = max(meta.num_columns - 2, 1)  # minus the label and the example id
    return meta.num_rows * columns * 8 > AUTO_BYTES


def load_mapped(data_config: DataConfig) -> EncodedData:
    """The encoded split of `data_config`'s dataset file, in memory-mapped `.npy` files (built on
    first use, then reused; see the module docstring)."""
    path, file, schema = _open_file(data_config)
    n = file.metadata.num_rows
    check_eval_size(n, data_config.eval_fraction, data_config.path)
    target = cache_root() / "encoded" / _cache_key(path, schema, data_config)
    if not (target / "meta.json").exists():
        _build(file, path, schema, data_config, target)
        file.close()
        del file
        pa.default_memory_pool().release_unused()  # the pieces' buffers, back to the OS
    return _open(target)


def eval_column(data_config: DataConfig, column: str) -> np.ndarray:
    """The evaluation split's `column` in prediction order (what `eval_groups` gives for the
    in-memory path), reading only that column and the split's."""
    path, file, schema = _open_file(data_config)
    if column not in file.schema_arrow.names:
        raise ReprokitError(
            f"the evaluation data has no column {column!r} to measure churn by; it has "
            f"{', '.join(file.schema_arrow.names)}"
        )
    place, _, _, _ = _place(file, schema, data_config)
    series = file.read(columns=[column]).to_pandas()[column]
    missing = int(series[place.is_eval].isna().sum())
    if missing:
        raise ReprokitError(
            f"column {column!r} has {missing} missing values in the evaluation data"
        )
    out = np.empty(place.n_eval, dtype=series.to_numpy().dtype)
    out[place.slot[place.is_eval]] = series.to_numpy()[place.is_eval]
    return out


def _open_file(data_config: DataConfig) -> tuple[Path, pq.ParquetFile, DatasetSchema]:
    """The dataset file, its reader and its schema narrowed to the configured labels."""
    path = check_dataset_path(str(data_config.path))
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReprokitError(f"{path} is not a readable parquet file ({exc})") from None
    schema = schema_of_table(file.schema_arrow, path)
    schema.validate(pd.DataFrame(columns=file.schema_arrow.names))
    schema = select_labels(
        Dataset(pd.DataFrame(), schema), data_config.labels or data_config.label
    ).schema
    return path, file, schema


def _cache_key(path: Path, schema: DatasetSchema, data_config: DataConfig) -> str:
    stat = path.stat()
    doc = {
        "version": CACHE_VERSION,
        "file": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "schema": schema.to_dict(),
        "split": data_config.split,
        "eval_fraction": data_config.eval_fraction,
        "split_seed": data_config.split_seed,
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]
    return f"{path.stem}-{digest}"


# --- building the cache --------------------------------------------------------------------------
@dataclasses.dataclass
class _Placement:
    """Where each row of the file goes: its split and its position there."""

    is_eval: np.ndarray  # bool [n]
    slot: np.ndarray  # int64 [n]
    n_train: int
    n_eval: int

    def parts(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(train rows of file rows lo..hi-1 relative to lo, their slots, eval rows, slots)."""
        ev = self.is_eval[lo:hi]
        slot = self.slot[lo:hi]
        tr_rows, ev_rows = np.flatnonzero(~ev), np.flatnonzero(ev)
        return tr_rows, slot[tr_rows], ev_rows, slot[ev_rows]


def _place(file: pq.ParquetFile, schema: DatasetSchema, data_config: DataConfig) -> tuple:
    """Split the file's rows as `split_dataset` would (reads only the id and time columns)."""
    wanted = [c for c in (schema.example_id, schema.timestamp) if c]
    frame = file.read(columns=wanted).to_pandas() if wanted else pd.DataFrame()
    if not wanted:
        frame = pd.DataFrame(index=pd.RangeIndex(file.metadata.num_rows))
    dataset = with_example_id(Dataset(frame, schema))
    train_pos, eval_pos = split_order(
        dataset, data_config.split, data_config.eval_fraction, data_config.split_seed
    )
    n = len(dataset)
    is_eval = np.zeros(n, dtype=bool)
    is_eval[eval_pos] = True
    slot = np.empty(n, dtype=np.int64)
    slot[train_pos] = np.arange(len(train_pos))
    slot[eval_pos] = np.arange(len(eval_pos))
    ids = dataset.frame[dataset.schema.example_id].to_numpy(dtype=np.int64)
    placement = _Placement(is_eval, slot, len(train_pos), len(eval_pos))
    return placement, dataset.schema, ids[train_pos], ids[eval_pos]


def _pieces(file: pq.ParquetFile, columns: list[str]):
    """(first row, DataFrame) of each piece of `READ_ROWS` rows of `columns`."""
    lo = 0
    for batch in file.iter_batches(batch_size=READ_ROWS, columns=columns):
        frame = batch.to_pandas()
        yield lo, frame
        lo += len(frame)


def _build(
    file: pq.ParquetFile, path: Path, schema: DatasetSchema, data_config: DataConfig, target: Path
) -> None:
    """Encode the file into `target` (see the module docstring), atomically."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(target)
        prefix = f".{target.name}.tmp-{os.getpid()}-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    except OSError as exc:
        raise ReprokitError(
            f"cannot write the memory-mapped training data under {target.parent} "
            f"({exc.strerror or exc}); set REPROKIT_CACHE_DIR to a writable directory"
        ) from None
    try:
        _encode_into(tmp, file, path, schema, data_config)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same encoding first
            if not (target / "meta.json").exists():
                raise
    except OSError as exc:
        raise ReprokitError(
            f"cannot write the memory-mapped training data under {target.parent} "
            f"({exc.strerror or exc}); free space or set REPROKIT_CACHE_DIR elsewhere"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_abandoned(target: Path) -> None:
    """Delete the temporary directories of builds of `target` whose process is gone (killed)."""
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            pid = int(leftover.name.split(".tmp-", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue  # not ours to judge: another user's process, or another name


def _encode_into(
    out: Path, file: pq.ParquetFile, path: Path, schema: DatasetSchema, data_config: DataConfig
) -> None:
    place, schema, train_ids, eval_ids = _place(file, schema, data_config)
    fields, numeric, labels = list(schema.categorical), list(schema.numeric), list(schema.labels)
    n_tr, n_ev = place.n_train, place.n_eval
    if n_tr == 0:
        raise ReprokitError("the training split is empty")
    ts = schema.timestamp
    read = [*fields, *labels, *([ts] if ts else [])]

    # pass 1: vocabularies, labels, times
    distinct: list[list[np.ndarray]] = [[] for _ in fields]
    merged = [0] * len(fields)  # distinct values after the last merge of each field's parts
    nulls = [0] * len(fields)
    train_y = np.zeros((n_tr, len(labels)), dtype=np.float32)
    eval_y = np.zeros((n_ev, len(labels)), dtype=np.float32)
    train_time = np.zeros(n_tr, dtype=np.float64) if ts else None
    for lo, frame in _pieces(file, read):
        tr, tr_slot, ev, ev_slot = place.parts(lo, lo + len(frame))
        train_part = frame.iloc[tr]
        for j, name in enumerate(fields):
            values = train_part[name]
            nulls[j] += int(values.isna().sum())
            distinct[j].append(np.asarray(pd.unique(values.dropna())))
            if sum(len(d) for d in distinct[j]) > 2 * merged[j] + 4 * READ_ROWS:  # amortised
                distinct[j] = [np.asarray(pd.unique(pd.Series(np.concatenate(distinct[j]))))]
                merged[j] = len(distinct[j][0])
        train_y[tr_slot] = _labels(train_part, labels, "train")
        eval_y[ev_slot] = _labels(frame.iloc[ev], labels, "eval")
        if train_time is not None:
            train_time[tr_slot] = timestamp_seconds(train_part[ts])
    vocabs = [FieldVocab.from_distinct(d, k) for d, k in zip(distinct, nulls, strict=True)]
    del distinct

    # numeric scaling, one column at a time in training order (as the in-memory path sums)
    mean = np.zeros(len(numeric))
    std = np.ones(len(numeric))
    for k, name in enumerate(numeric):
        column = np.empty(n_tr, dtype=np.float64)
        for lo, frame in _pieces(file, [name]):
            tr, tr_slot, _, _ = place.parts(lo, lo + len(frame))
            column[tr_slot] = _numeric_matrix(frame.iloc[tr], [name])[:, 0]
        mean[k], std[k] = column_stats(column)
        del column

    # pass 2: indices and z-scores at each row's place
    arrays = {
        "train_cat": open_memmap(out / "train_cat.npy", "w+", np.int64, (n_tr, len(fields))),
        "eval_cat": open_memmap(out / "eval_cat.npy", "w+", np.int64, (n_ev, len(fields))),
        "train_num": open_memmap(out / "train_num.npy", "w+", np.float32, (n_tr, len(numeric))),
        "eval_num": open_memmap(out / "eval_num.npy", "w+", np.float32, (n_ev, len(numeric))),
    }
    unseen: list[list[tuple[np.ndarray, pd.Series]]] = [[] for _ in fields]
    written = 0
    for lo, frame in _pieces(file, [*fields, *numeric]):
        tr, tr_slot, ev, ev_slot = place.parts(lo, lo + len(frame))
        train_part, eval_part = frame.iloc[tr], frame.iloc[ev]
        for j, (name, vocab) in enumerate(zip(fields, vocabs, strict=True)):
            arrays["train_cat"][tr_slot, j] = vocab.codes(train_part[name])
            codes = vocab.codes(eval_part[name])
            arrays["eval_cat"][ev_slot, j] = codes
            missed = unseen_mask(eval_part[name], codes)
            if missed.any():
                unseen[j].append((ev_slot[missed], eval_part[name][missed]))
        if numeric:
            arrays["train_num"][tr_slot] = standardise(
                _numeric_matrix(train_part, numeric), mean, std
            )
            arrays["eval_num"][ev_slot] = standardise(
                _numeric_matrix(eval_part, numeric), mean, std
            )
        written += len(frame)
        if written >= n_tr:  # the written pages stay in the page cache (and reach the file)
            release(*arrays.values())
            written = 0
    for arr in arrays.values():
        arr.flush()

    extras = []
    has_raw = any(unseen)
    if has_raw:
        arrays["eval_cat"].flush()
        shutil.copyfile(out / "eval_cat.npy", out / "eval_cat_raw.npy")
        raw = open_memmap(out / "eval_cat_raw.npy", "r+")
    for j, vocab in enumerate(vocabs):
        values = pd.concat([v for _, v in unseen[j]]) if unseen[j] else pd.Series([], dtype=object)
        extra = sorted_distinct(values)
        extras.append(extra)
        if len(extra):
            slots = np.concatenate([s for s, _ in unseen[j]])
            raw[slots, j] = vocab.size + extra.get_indexer(values).astype(np.int64)
    if has_raw:
        raw.flush()
        del raw
    del arrays

    np.save(out / "train_y.npy", train_y)
    np.save(out / "eval_y.npy", eval_y)
    np.save(out / "train_example_id.npy", train_ids)
    np.save(out / "eval_example_id.npy", eval_ids)
    if train_time is not None:
        np.save(out / "train_time.npy", train_time)
    np.savez(out / "keys.npz", *[v.keys(e) for v, e in zip(vocabs, extras, strict=True)])
    meta: dict[str, Any] = {
        "version": CACHE_VERSION,
        "source": str(path),
        "vocab_sizes": [v.size for v in vocabs],
        "field_names": fields,
        "numeric_names": numeric,
        "label_names": labels,
        "numeric_mean": [float(m) for m in mean],
        "numeric_std": [float(s) for s in std],
        "has_raw": has_raw,
        "has_time": train_time is not None,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")  # last: marks it complete


def _open(target: Path) -> EncodedData:
    """The `EncodedData` of a complete cache directory."""
    meta = json.loads((target / "meta.json").read_text())
    big = {name: open_mapped(target / f"{name}.npy") for name in _BIG[:4]}
    big["eval_cat_raw"] = open_mapped(target / "eval_cat_raw.npy") if meta["has_raw"] else None
    small = {
        name: np.load(target / f"{name}.npy")
        for name in _SMALL
        if name != "train_time" or meta["has_time"]
    }
    with np.load(target / "keys.npz") as keys_file:
        keys = [keys_file[f"arr_{j}"] for j in range(len(meta["field_names"]))]
    sizes = VocabSizes(meta["vocab_sizes"], keys, meta["field_names"], big["train_cat"])
    return EncodedData(
        **big,
        **small,
        vocab_sizes=sizes,
        field_names=meta["field_names"],
        numeric_names=meta["numeric_names"],
        label_names=meta["label_names"],
        numeric_mean=meta["numeric_mean"],
        numeric_std=meta["numeric_std"],
    )
