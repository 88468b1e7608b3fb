"""Turn a (train, eval) pair of datasets into the arrays a model trains on.

Everything is fitted on the TRAINING split only, so the evaluation split never leaks into the model:

- categorical field: the distinct training values, sorted, get indices 1..V; a missing value
  (null) seen in training gets V+1; anything else (an id never seen in training, or a null when
  training had none) maps to index 0, the out-of-vocabulary row. ``vocab_sizes`` counts that row,
  so an embedding table of ``vocab_sizes[f]`` rows covers every index. ``eval_cat_raw`` keeps
  the eval values unseen in training apart instead (indices past the vocabulary, their keys in
  ``vocab_sizes.keys``), for table kinds that read the raw value (``hashed``).
- numeric feature: standardised with the training mean and standard deviation (population std; a
  constant or all-missing column uses std 1); missing values become 0 after standardising, which is
  the training mean.
- labels: float32 ``[n, T]`` in the order of ``label_names``.

``vocab_sizes`` is a :class:`VocabSizes`: the list of sizes that also carries, per field, the
64-bit key of the raw value behind each index (:func:`value_keys`), so table kinds that hash the
raw value (``hashed``) get it through the same argument as the sizes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from reprokit.data.layout import Dataset
from reprokit.data.mapped_array import MappedArray, release
from reprokit.errors import ReprokitError

if TYPE_CHECKING:
    from reprokit.config import DataConfig


def _blake64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


#: Keys of the out-of-vocabulary index 0 and of the missing-value index (no raw value has them
#: unless an integer id happens to equal them).
OOV_KEY = _blake64(b"reprokit:out-of-vocabulary")
NULL_KEY = _blake64(b"reprokit:missing")


def value_keys(values: np.ndarray | list) -> np.ndarray:
    """The fixed 64-bit key (uint64) of each raw categorical value, the same in every process and
    on every machine (``PYTHONHASHSEED`` plays no part): an integer (or a bool, or an integral
    float) is its own int64 two's complement; anything else is the first 8 bytes, little-endian,
    of ``blake2b(str(value).encode("utf-8"), digest_size=8)``."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64).view(np.uint64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64).view(np.uint64)
    out = np.empty(len(arr), dtype=np.uint64)
    for i, v in enumerate(arr.tolist()):
        integral = isinstance(v, bool | int) or (isinstance(v, float) and v.is_integer())
        if integral and -(2**63) <= int(v) < 2**63:
            out[i] = np.int64(int(v)).view(np.uint64)
        else:
            out[i] = _blake64(str(v).encode("utf-8"))
    return out


class VocabSizes(list):
    """Per field, the rows a `table` needs (vocabulary + OOV row); `keys[f][i]` is the 64-bit key
    (:func:`value_keys`) of the raw value encoded as index i (index 0: `OOV_KEY`; indices from
    the size on: the eval-only values of `EncodedData.eval_cat_raw`, in their sorted order). Table kinds
    that are fitted to the training data (LMA's co-occurrence signatures, frequency-based widths)
    read `train_cat` (the training split's indices [n, fields], a reference, not a copy) and
    `names` (the field names, for per-field settings) from it too; a plain list has neither."""

    def __init__(
        self,
        sizes: list[int],
        keys: list[np.ndarray],
        names: list[str] | None = None,
        train_cat: np.ndarray | None = None,
    ) -> None:
        super().__init__(int(s) for s in sizes)
        self.keys = keys
        self.names = list(names) if names is not None else None
        self.train_cat = train_cat


@dataclass
class EncodedData:
    """Model-ready arrays of one train/eval split (see the module docstring for the encoding)."""

    train_cat: np.ndarray  # int64 [n_train, F]
    train_num: np.ndarray  # float32 [n_train, K]
    train_y: np.ndarray  # float32 [n_train, T]
    eval_cat: np.ndarray  # int64 [n_eval, F]
    eval_num: np.ndarray  # float32 [n_eval, K]
    eval_y: np.ndarray  # float32 [n_eval, T]
    train_example_id: np.ndarray  # int64 [n_train]
    eval_example_id: np.ndarray  # int64 [n_eval]
    vocab_sizes: list[int]  # per field, including the out-of-vocabulary row 0 (a VocabSizes)
    field_names: list[str]
    numeric_names: list[str]
    label_names: list[str]
    numeric_mean: list[float] = field(default_factory=list)
    numeric_std: list[float] = field(default_factory=list)
    #: the training examples' timestamps (float64 [n_train]; seconds for a date column), None
    #: when the dataset has none: the clock of tables that expire ids
    train_time: np.ndarray | None = None
    #: the eval indices with every value unseen in training at an index of its own past the
    #: vocabulary (`vocab_sizes.keys` holds its key there), for table kinds that read raw values
    #: (`hashed`: the raw value's hash, not the OOV row); None when no eval value is unseen
    eval_cat_raw: np.ndarray | None = None
    _rows_read: int = field(default=0, init=False, repr=False, compare=False)

    def eval_ids(self, raw_values: bool) -> np.ndarray:
        """The eval indices a table reads: `eval_cat_raw` for kinds that read raw values."""
        return self.eval_cat_raw if raw_values and self.eval_cat_raw is not None else self.eval_cat

    @property
    def is_mapped(self) -> bool:
        """Whether the training arrays are memory-mapped files (`reprokit.data.mapped`)."""
        return isinstance(self.train_cat, MappedArray)

    def release_pages(self) -> None:
        """Drop memory-mapped arrays' pages from this process (`reprokit.data.mapped`; the OS
        page cache keeps them). Nothing happens for in-memory arrays."""
        release(self.train_cat, self.train_num, self.eval_cat, self.eval_num, self.eval_cat_raw)
        self._rows_read = 0

    def rows_read(self, rows: int) -> None:
        """The engines say how many rows a step (or a prediction chunk) gathered; once they add
        up to the training split (about an epoch), the mapped pages are released.

        Not more often: the pages are the OS page cache of the file, held once for every process
        and dropped by the kernel under memory pressure, so they are not memory the run takes
        from anything. And Linux maps the neighbouring cached pages of a fault too (64 KiB, or a
        whole large folio: up to 1 MiB per random row was measured), so releasing every few
        steps would cost ~10% of a step and still not keep them out of this process's RSS.
        Nothing happens for in-memory arrays."""
        if not self.is_mapped:
            return
        self._rows_read += rows
        if self._rows_read >= len(self.train_cat):
            self.release_pages()

    @property
    def n_train(self) -> int:
        return len(self.train_y)

    @property
    def n_eval(self) -> int:
        return len(self.eval_y)

    def eval_oov_rate(self) -> list[float]:
        """Per field, the share of evaluation rows that fell into the out-of-vocabulary row."""
        if self.n_eval == 0:
            return [0.0] * len(self.field_names)
        return [float(x) for x in (self.eval_cat == 0).mean(axis=0)]


def _sorted_unique(values: pd.Series, min_count: int = 1) -> np.ndarray:
    if min_count > 1:
        counts = values.value_counts(dropna=True)
        uniq = counts.index[counts.to_numpy() >= min_count].to_numpy()
    else:
        uniq = pd.unique(values.dropna())
    try:
        return np.sort(np.asarray(uniq))
    except TypeError:  # mixed types (e.g. ints and strings in one object column)
        return np.asarray(sorted(uniq, key=lambda v: (type(v).__name__, v)), dtype=object)


@dataclass
class FieldVocab:
    """One categorical field's training vocabulary: the kept values (sorted), and whether a
    missing value has an index of its own (V+1) because training had it."""

    values: pd.Index
    has_null: bool

    @classmethod
    def fit(cls, train: pd.Series, min_count: int = 1) -> FieldVocab:
        has_null = int(train.isna().sum()) >= max(min_count, 1)
        return cls(pd.Index(_sorted_unique(train, min_count)), has_null)

    @classmethod
    def from_distinct(cls, distinct: list[np.ndarray], nulls: int) -> FieldVocab:
        """The vocabulary (min count 1) from the distinct values of the training split's parts
        (each part's `pd.unique`) and its count of missing values: what `fit` gives on the
        whole column, for a split read in pieces."""
        parts = [np.asarray(p) for p in distinct if len(p)]
        values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return cls(pd.Index(_sorted_unique(pd.Series(values))), nulls >= 1)

    @property
    def size(self) -> int:
        """Rows of the table: the OOV row 0, one per value, the missing-value row if any."""
        return len(self.values) + 1 + int(self.has_null)

    def codes(self, values: pd.Series) -> np.ndarray:
        """Indices: 1..V for kept values, V+1 for missing (if training had it), 0 otherwise."""
        codes = self.values.get_indexer(values).astype(np.int64) + 1  # unseen -> -1 -> 0
        if self.has_null:
            codes[values.isna().to_numpy()] = len(self.values) + 1
        return codes

    def keys(self, extra: pd.Index) -> np.ndarray:
        """The 64-bit key of every index: OOV, the vocabulary, missing, then `extra` (eval-only
        values past the vocabulary, see `EncodedData.eval_cat_raw`)."""
        return np.concatenate(
            [
                np.array([OOV_KEY], dtype=np.uint64),
                value_keys(self.values.to_numpy()),
                np.array([NULL_KEY] * int(self.has_null), dtype=np.uint64),
                value_keys(extra.to_numpy()) if len(extra) else np.zeros(0, dtype=np.uint64),
            ]
        )


def unseen_mask(values: pd.Series, codes: np.ndarray) -> np.ndarray:
    """Which of `values` are present but fell into the OOV row (index 0): eval values unseen in
    training, which `eval_cat_raw` gives indices of their own."""
    return (codes == 0) & values.notna().to_numpy()


def sorted_distinct(values: pd.Series) -> pd.Index:
    return pd.Index(_sorted_unique(values))


def _encode_categorical(
    train: pd.Series, test: pd.Series, min_count: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
    """(train codes, eval codes, eval codes with unseen values past the vocabulary, rows, keys
    of every index: the vocabulary's, then the eval-only values')."""
    vocab = FieldVocab.fit(train, min_count)
    test_codes = vocab.codes(test)
    unseen = unseen_mask(test, test_codes)
    extra = sorted_distinct(test[unseen])
    test_raw = test_codes.copy()
    test_raw[unseen] = vocab.size + extra.get_indexer(test[unseen]).astype(np.int64)
    return vocab.codes(train), test_codes, test_raw, vocab.size, vocab.keys(extra)


def _numeric_matrix(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    if not names:
        return np.zeros((len(frame), 0), dtype=np.float64)
    try:
        x = frame[names].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    except (TypeError, ValueError):
        bad = [c for c in names if not pd.api.types.is_numeric_dtype(frame[c])]
        raise ReprokitError(
            f"numeric column(s) {', '.join(map(repr, bad))} hold non-numbers; "
            "re-import the data with them as --categorical"
        ) from None
    x[~np.isfinite(x)] = np.nan  # infinities count as missing
    return x


def column_stats(column: np.ndarray) -> tuple[float, float]:
    """(mean, std) of one numeric training column (NaN = missing): the population std, 1 for a
    constant or all-missing column. One column at a time, contiguous, so the in-memory and the
    memory-mapped loaders sum in the same order and agree bit for bit."""
    x = np.ascontiguousarray(column, dtype=np.float64)
    x = x[~np.isnan(x)]
    if not len(x):
        return 0.0, 1.0
    mean = float(np.sum(x) / len(x))
    std = float(np.sqrt(np.sum((x - mean) ** 2) / len(x)))
    return mean, (std if np.isfinite(std) and std > 0 else 1.0)


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float32 z-scores; missing (and infinite) values sit at the training mean, 0."""
    with np.errstate(invalid="ignore"):
        z = (x - mean) / std
    z[~np.isfinite(z)] = 0.0
    return z.astype(np.float32)


def _labels(frame: pd.DataFrame, names: list[str], part: str) -> np.ndarray:
    y = frame[names].to_numpy(dtype=np.float32, na_value=np.nan)
    if np.isnan(y).any():
        raise ReprokitError(f"the {part} split has missing label values")
    return y


def timestamp_seconds(values: pd.Series) -> np.ndarray:
    """A timestamp column as float64: numbers as they are, dates as seconds since the epoch."""
    if pd.api.types.is_datetime64_any_dtype(values):
        values = pd.to_datetime(values, utc=True)
        return (values - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)
    return values.to_numpy(dtype=np.float64)


def _times(dataset: Dataset) -> np.ndarray | None:
    """The dataset's timestamp column in seconds (`timestamp_seconds`), or None."""
    col = dataset.schema.timestamp
    if col is None or col not in dataset.frame.columns:
        return None
    return timestamp_seconds(dataset.frame[col])


def _example_ids(dataset: Dataset) -> np.ndarray:
    col = dataset.schema.example_id
    if col is None:
        return np.arange(len(dataset), dtype=np.int64)
    return dataset.frame[col].to_numpy(dtype=np.int64)


def encode(
    train: Dataset, eval_: Dataset, labels: list[str] | None = None, min_count: int = 1
) -> EncodedData:
    """Encode a split with vocabularies and scalings fitted on `train` only.

    `labels` picks label columns (default: all of the training schema's labels). `min_count` is the
    BARS/FuxiCTR ``min_categr_count``: values seen fewer times in training share the OOV row.
    """
    if min_count < 1:
        raise ReprokitError(f"min_count must be at least 1, got {min_count}")
    schema = train.schema
    if (schema.categorical, schema.numeric) != (eval_.schema.categorical, eval_.schema.numeric):
        raise ReprokitError("the train and eval datasets have different feature columns")
    label_names = list(labels) if labels is not None else list(schema.labels)
    if not label_names:
        raise ReprokitError("no label column to train on")
    for part, ds in (("train", train), ("eval", eval_)):
        missing = [c for c in label_names if c not in ds.frame.columns]
        if missing:
            raise ReprokitError(f"the {part} split lacks label column(s) {', '.join(missing)}")
    if len(train) == 0:
        raise ReprokitError("the training split is empty")

    fields, numeric = list(schema.categorical), list(schema.numeric)
    n_tr, n_ev = len(train), len(eval_)
    train_cat = np.zeros((n_tr, len(fields)), dtype=np.int64)
    eval_cat = np.zeros((n_ev, len(fields)), dtype=np.int64)
    eval_raw = np.zeros((n_ev, len(fields)), dtype=np.int64)
    sizes, keys = [], []
    for j, name in enumerate(fields):
        a, b, raw, size, k = _encode_categorical(train.frame[name], eval_.frame[name], min_count)
        train_cat[:, j], eval_cat[:, j], eval_raw[:, j] = a, b, raw
        sizes.append(size)
        keys.append(k)

    x_tr = _numeric_matrix(train.frame, numeric)
    x_ev = _numeric_matrix(eval_.frame, numeric)
    stats = [column_stats(x_tr[:, k]) for k in range(len(numeric))]
    mean = np.array([m for m, _ in stats], dtype=np.float64)
    std = np.array([s for _, s in stats], dtype=np.float64)

    def scale(x: np.ndarray) -> np.ndarray:
        return standardise(x, mean, std)

    return EncodedData(
        train_cat=train_cat,
        train_num=scale(x_tr),
        train_y=_labels(train.frame, label_names, "train"),
        eval_cat=eval_cat,
        eval_num=scale(x_ev),
        eval_y=_labels(eval_.frame, label_names, "eval"),
        train_example_id=_example_ids(train),
        eval_example_id=_example_ids(eval_),
        vocab_sizes=VocabSizes(sizes, keys, fields, train_cat),
        field_names=fields,
        numeric_names=numeric,
        label_names=label_names,
        numeric_mean=[float(m) for m in mean],
        numeric_std=[float(s) for s in std],
        train_time=_times(train),
        eval_cat_raw=None if np.array_equal(eval_raw, eval_cat) else eval_raw,
    )


def load_encoded(data_config: DataConfig) -> EncodedData:
    """What a training run needs: `load_training_data(data_config)` followed by `encode`, or the
    same arrays memory-mapped from a cache built piece by piece (`data.storage`, see
    `reprokit.data.mapped`)."""
    from reprokit.data.mapped import load_mapped, use_mapped
    from reprokit.data.splits import load_training_data

    if use_mapped(data_config):
        return load_mapped(data_config)
    train, eval_ = load_training_data(data_config)
    return encode(train, eval_)
