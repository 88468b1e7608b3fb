"""Load replica predictions produced anywhere (parquet or CSV) for `reprokit pd`.

Two layouts are accepted:

* **long**: one row per (example, replica): columns ``example_id``, ``replica``, ``prediction`` and
  optionally ``label``;
* **wide**: one row per example: ``example_id``, optionally ``label``, and one numeric column per
  replica (any name, e.g. ``replica_0``, ``r1``). Non-numeric columns and other ``label*`` columns
  are ignored, and so are columns named like an id (``user_id``, ``ID``, ``adId``: see
  `reprokit.data.importer.is_id_name`), with a note naming them (and suggesting ``--churn-by``
  for one that repeats, like a user id). A column of only 0/1 integers (or booleans), or of only
  0.0/1.0 floats under a label's name (`looks_like_label`), is a label, not a replica's
  probabilities: unless it is the label column it is refused, naming it, so that a label called
  ``click`` is never counted as one more replica. Float 0/1 columns of other names stay replicas
  (a replica may predict hard classes).

The label column is ``label`` unless the caller names another (``label="click"``); ``label`` may be
absent (no AUC then), any other name must exist. When the default ``label`` is absent but a numeric
column is named like one (``click``), the loader's notes say to pass ``--label click``.

A parquet file whose ``example_id`` (or ``replica``) was saved as the pandas index
(``df.set_index("example_id").to_parquet(...)``) is read with the index back as a column.

Either layout may carry a group column (e.g. ``user_id``) for top-k churn per group; it is read by
`load_predictions_with_groups` and must give each example one group.

``format="auto"`` picks long when the file has ``replica`` and ``prediction`` columns, else wide.
Examples are aligned on ``example_id`` and returned sorted by it. Every problem is a ReprokitError
with one sentence naming the file, the column or the replica.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from reprokit.data.importer import LABEL_FALLBACKS, is_id_name
from reprokit.errors import ReprokitError

_log = logging.getLogger("reprokit")

FORMATS = ("auto", "long", "wide")
#: The label column when the caller names none; it may be absent (any other named one must exist).
DEFAULT_LABEL = "label"
LONG_COLUMNS = ("example_id", "replica", "prediction")
_PARQUET_SUFFIXES = {".parquet", ".pq", ".parq"}
#: Names (any case) that say "this column is a label"; so does any name starting with ``label``.
LABEL_NAMES = frozenset({DEFAULT_LABEL, *LABEL_FALLBACKS, "income"})


def looks_like_label(name: object) -> bool:
    """Whether a column name reads as a label's (``click``, ``Target``, ``label_ctr``)."""
    lowered = str(name).lower()
    return lowered in LABEL_NAMES or lowered.startswith(DEFAULT_LABEL)


class PredictionSet(NamedTuple):
    """Predictions of M replicas on the same N examples (unpacks as a 4-tuple)."""

    #: replica names, M strings (long: values of ``replica``; wide: column names)
    replicas: list[str]
    #: [N] example ids, sorted
    example_ids: np.ndarray
    #: [M, N] float64 predictions, row m belongs to replicas[m], column n to example_ids[n]
    predictions: np.ndarray
    #: [N] float64 labels, or None when the file has no ``label`` column
    labels: np.ndarray | None


class LoadedPredictions(NamedTuple):
    """What `load_predictions_with_notes` read: the predictions, the groups and notes for the user."""

    data: PredictionSet
    #: [N] integer group codes aligned with data.example_ids, or None without a group column
    groups: np.ndarray | None
    #: sentences about columns the loader left out or did not use (not errors)
    notes: list[str]


def fingerprint(data: PredictionSet) -> str:
    """sha256[:16] of the example ids and labels: two files measured the same examples with the
    same labels exactly when their fingerprints agree (what `reprokit gate` checks a baseline by)."""
    h = hashlib.sha256()
    ids = np.asarray(data.example_ids)
    if ids.dtype.kind in "iub":
        h.update(b"int64:" + np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    elif ids.dtype.kind == "f":
        h.update(b"float64:" + np.ascontiguousarray(ids, dtype=np.float64).tobytes())
    else:  # strings or objects: their text, NUL-separated (object arrays' bytes are pointers)
        h.update(b"str:" + "\0".join(map(str, ids.tolist())).encode("utf-8"))
    if data.labels is None:
        h.update(b"labels:none")
    else:
        h.update(b"labels:" + np.ascontiguousarray(data.labels, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ReprokitError(f"file not found: {path}")
    if path.is_dir():
        raise ReprokitError(f"{path} is a directory, not a predictions file")
    suffix = path.suffix.lower()
    with path.open("rb") as fh:
        magic = fh.read(4)
    is_parquet = magic == b"PAR1" or (suffix in _PARQUET_SUFFIXES)
    try:
        if is_parquet:
            df = pd.read_parquet(path)
        else:
            sep = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
            df = pd.read_csv(path, sep=sep)
    except Exception as exc:  # pyarrow / pandas raise many types for unreadable input
        kind = "parquet" if is_parquet else "CSV"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReprokitError(f"cannot read {path} as {kind}: {first}") from None
    if len(df) == 0:
        raise ReprokitError(f"{path} has no rows")
    # A named pandas index (parquet keeps it: set_index("example_id").to_parquet) is a column.
    named = [n for n in df.index.names if n is not None and n not in df.columns]
    if named:
        df = df.reset_index(level=named)
    return df


def _label_column(df: pd.DataFrame, label: str, path: Path) -> str | None:
    """The frame's column named `label`; None when the default `label` is absent."""
    for column in df.columns:
        if str(column) == label:
            return column
    if label == DEFAULT_LABEL:
        return None
    raise ReprokitError(
        f"{path} has no label column {label!r}; its columns are "
        f"{', '.join(str(c) for c in df.columns)}"
    )


def _label_hint(df: pd.DataFrame, skip: set, label: str) -> str | None:
    """A note when the caller named no label, `label` is absent, and an unused numeric column is
    named like one (so AUC is not silently missing); None otherwise."""
    if label != DEFAULT_LABEL:
        return None
    for column in df.columns:
        if column in skip or not looks_like_label(column):
            continue
        if pd.api.types.is_numeric_dtype(df[column]) or pd.api.types.is_bool_dtype(df[column]):
            return (
                f"no {DEFAULT_LABEL!r} column; column {str(column)!r} looks like one — pass "
                f"--label {column} for AUC and log-loss"
            )
    return None


def _binary_kind(series: pd.Series, name: object) -> str | None:
    """'booleans', '0/1 integers' or '0.0/1.0 floats' when the column holds nothing else and so
    looks like a label, else None. Floats count only under a label's name: a replica may predict
    hard classes."""
    if pd.api.types.is_bool_dtype(series):
        return "booleans"
    if not bool(series.isin([0, 1]).all()):
        return None
    if pd.api.types.is_integer_dtype(series):
        return "0/1 integers"
    if pd.api.types.is_float_dtype(series) and looks_like_label(name):
        return "0.0/1.0 floats"
    return None


def _numeric(series: pd.Series, what: str, path: Path) -> np.ndarray:
    if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
        converted = pd.to_numeric(series, errors="coerce")
        bad = int(converted.isna().sum() - series.isna().sum())
        if bad:
            raise ReprokitError(f"{what} in {path} has {bad} non-numeric values")
        series = converted
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def _check_predictions(preds: np.ndarray, names: list[str], path: Path) -> None:
    for m, name in enumerate(names):
        row = preds[m]
        missing = int(np.count_nonzero(np.isnan(row)))
        if missing:
            raise ReprokitError(
                f"replica {name!r} in {path} has {missing} missing (NaN) predictions"
            )
        inf = int(np.count_nonzero(~np.isfinite(row)))
        if inf:
            raise ReprokitError(f"replica {name!r} in {path} has {inf} infinite predictions")
        out = int(np.count_nonzero((row < 0.0) | (row > 1.0)))
        if out:
            raise ReprokitError(f"replica {name!r} in {path} has {out} predictions outside [0, 1]")


def _check_labels(labels: np.ndarray, path: Path, column: str) -> None:
    missing = int(np.count_nonzero(~np.isfinite(labels)))
    if missing:
        raise ReprokitError(f"column {column!r} in {path} has {missing} missing or infinite values")
    out = int(np.count_nonzero((labels < 0.0) | (labels > 1.0)))
    if out:
        raise ReprokitError(f"column {column!r} in {path} has {out} values outside [0, 1]")


def _example_ids(series: pd.Series, path: Path) -> np.ndarray:
    if series.isna().any():
        raise ReprokitError(
            f"column 'example_id' in {path} has {int(series.isna().sum())} missing values"
        )
    return series.to_numpy()


def _group_codes(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """The group column as integer codes (one per row); refuse a missing column or empty ids."""
    if column not in df.columns:
        raise ReprokitError(f"{path} lacks the group column {column!r}")
    codes, _ = pd.factorize(df[column], sort=False)
    missing = int(np.count_nonzero(codes < 0))
    if missing:
        raise ReprokitError(f"column {column!r} in {path} has {missing} missing values")
    return codes.astype(np.int64)


def _load_long(
    df: pd.DataFrame, path: Path, group_column: str | None = None, label: str = DEFAULT_LABEL
) -> LoadedPredictions:
    missing = [c for c in LONG_COLUMNS if c not in df.columns]
    if missing:
        raise ReprokitError(
            f"{path} (long format) lacks column(s) {', '.join(repr(c) for c in missing)}; "
            "expected example_id, replica, prediction and optionally label"
        )
    ids = _example_ids(df["example_id"], path)
    row_groups = None if group_column is None else _group_codes(df, group_column, path)
    if df["replica"].isna().any():
        raise ReprokitError(f"column 'replica' in {path} has missing values")
    rep_codes, rep_values = pd.factorize(df["replica"], sort=True)
    names = [str(v) for v in rep_values]
    m = len(names)
    if m < 2:
        raise ReprokitError(f"{path} holds {m} replica(s); PD needs at least 2")
    id_codes, id_values = pd.factorize(pd.Series(ids), sort=True)
    pred = _numeric(df["prediction"], "column 'prediction'", path)
    label_col = _label_column(df, label, path)
    labels = _numeric(df[label_col], f"column {label!r}", path) if label_col is not None else None
    hint = None if label_col is not None else _label_hint(df, {*LONG_COLUMNS, group_column}, label)

    # Scatter every row to its (replica, example) cell: O(rows), no sort of the long table.
    n = len(id_values)
    flat = rep_codes.astype(np.int64) * n + id_codes
    cells = np.bincount(flat, minlength=m * n).reshape(m, n)
    extra = np.maximum(cells - 1, 0).sum(axis=1)
    if extra.any():
        r = int(np.flatnonzero(extra)[0])
        example = id_values[int(np.flatnonzero(cells[r] > 1)[0])]
        example = example.item() if isinstance(example, np.generic) else example  # not np.int64
        raise ReprokitError(
            f"replica {names[r]!r} in {path} has {int(extra[r])} duplicate example_id "
            f"row(s), e.g. example_id {example!r}"
        )
    present = cells.sum(axis=1)
    short = np.flatnonzero(present != n)
    if short.size:
        r = int(short[0])
        raise ReprokitError(
            f"replicas cover different examples: replica {names[r]!r} has {int(present[r])} of "
            f"the {n} example_ids in {path}"
        )
    preds = np.empty(m * n)
    preds[flat] = pred
    preds = preds.reshape(m, n)
    _check_predictions(preds, names, path)
    if labels is not None:
        _check_labels(labels, path, label)
        lab = np.empty(m * n)
        lab[flat] = labels
        lab = lab.reshape(m, n)
        disagree = int(np.count_nonzero(np.any(lab != lab[0], axis=0)))
        if disagree:
            raise ReprokitError(
                f"labels disagree across replicas for {disagree} example(s) in {path}"
            )
        labels = lab[0].copy()
    groups = None
    if row_groups is not None:
        groups = np.empty(n, dtype=np.int64)
        groups[id_codes] = row_groups  # any row of an example; checked against all below
        disagree = np.unique(id_codes[groups[id_codes] != row_groups]).size
        if disagree:
            raise ReprokitError(
                f"column {group_column!r} disagrees across replicas for {disagree} example(s) "
                f"in {path}"
            )
    data = PredictionSet(names, np.asarray(id_values), preds, labels)
    return LoadedPredictions(data, groups, [hint] if hint else [])


def _id_columns_note(df: pd.DataFrame, columns: list[str], group_column: str | None) -> str:
    """The note on id-named columns left out of the replicas; suggests --churn-by for one whose
    values repeat (a user or group id, not a row id)."""
    listed = ", ".join(repr(c) for c in columns)
    note = f"left out column(s) {listed}: named like an id, so not a replica's predictions"
    repeating = [c for c in columns if df[c].nunique(dropna=True) < len(df)]
    if group_column is None and repeating:
        note += f"; pass --churn-by {repeating[0]} for top-k churn per group"
    return note


def _load_wide(
    df: pd.DataFrame, path: Path, group_column: str | None = None, label: str = DEFAULT_LABEL
) -> LoadedPredictions:
    if "example_id" not in df.columns:
        raise ReprokitError(
            f"{path} (wide format) lacks column 'example_id'; expected example_id, optionally "
            "label, and one numeric column per replica"
        )
    group_codes = None if group_column is None else _group_codes(df, group_column, path)
    label_col = _label_column(df, label, path)
    candidates = [
        c
        for c in df.columns
        if c not in ("example_id", group_column, label_col)
        and not str(c).lower().startswith(DEFAULT_LABEL)
        and pd.api.types.is_numeric_dtype(df[c])  # booleans too: refused below, as labels
    ]
    id_named = [str(c) for c in candidates if is_id_name(str(c))]
    names = [str(c) for c in candidates if not is_id_name(str(c))]
    for name in names:
        kind = _binary_kind(df[name], name)
        if kind is not None:
            keep = (
                "rename it" if kind.endswith("floats") else "store it as floats"
            ) + " if a replica really predicts hard 0/1 classes"
            raise ReprokitError(
                f"column {name!r} in {path} holds only {kind}, so it looks like a label, not a "
                f"replica's predictions; pass --label {name} if it is the label, or drop it "
                f"(or {keep})"
            )
    notes = [_id_columns_note(df, id_named, group_column)] if id_named else []
    if label_col is None:
        hint = _label_hint(df, {"example_id", group_column, *names}, label)
        notes += [hint] if hint else []
    if len(names) < 2:
        raise ReprokitError(
            f"{path} (wide format) has {len(names)} numeric replica column(s); PD needs at least 2"
        )
    ids = _example_ids(df["example_id"], path)
    id_codes, id_values = pd.factorize(pd.Series(ids), sort=True)
    if len(id_values) != len(ids):
        dup = len(ids) - len(id_values)
        raise ReprokitError(f"column 'example_id' in {path} has {dup} duplicate value(s)")
    order = np.argsort(id_codes, kind="stable")
    preds = np.stack([_numeric(df[c], f"column {c!r}", path)[order] for c in names])
    _check_predictions(preds, names, path)
    labels = None
    if label_col is not None:
        labels = _numeric(df[label_col], f"column {label!r}", path)[order]
        _check_labels(labels, path, label)
    groups = None if group_codes is None else group_codes[order]
    return LoadedPredictions(
        PredictionSet(names, np.asarray(id_values), preds, labels), groups, notes
    )


def load_predictions(
    path: str | Path, format: str = "auto", label: str = DEFAULT_LABEL
) -> PredictionSet:
    """Read a long- or wide-format predictions file (parquet or CSV); see the module docstring.

    Raises ReprokitError for a missing or unreadable file, missing columns, a named label column
    that is absent, a wide 0/1 column that is not the label, duplicate example ids, replicas that
    cover different examples, NaN or out-of-range predictions (naming the replica and the count),
    fewer than 2 replicas, and labels that disagree across replicas.
    """
    return load_predictions_with_groups(path, None, format, label)[0]


def load_predictions_with_groups(
    path: str | Path, group_column: str | None, format: str = "auto", label: str = DEFAULT_LABEL
) -> tuple[PredictionSet, np.ndarray | None]:
    """`load_predictions` plus the group of every example ([N] integer codes aligned with the
    sorted example ids; None without `group_column`). A missing group column, missing group ids,
    or (long layout) an example whose rows name different groups is a ReprokitError. The loader's
    notes (columns left out, a label under another name) are logged to the "reprokit" logger."""
    loaded = load_predictions_with_notes(path, group_column, format, label)
    for note in loaded.notes:
        _log.warning(note)
    return loaded.data, loaded.groups


def load_predictions_with_notes(
    path: str | Path, group_column: str | None, format: str = "auto", label: str = DEFAULT_LABEL
) -> LoadedPredictions:
    """`load_predictions_with_groups`, returning its notes (sentences for the user, not errors)
    instead of logging them, so a command can print them as warnings."""
    if format not in FORMATS:
        raise ReprokitError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    p = Path(path)
    df = _read_table(p)
    fmt = format
    if fmt == "auto":
        fmt = "long" if {"replica", "prediction"} <= set(map(str, df.columns)) else "wide"
    load = _load_long if fmt == "long" else _load_wide
    return load(df, p, group_column, label)
