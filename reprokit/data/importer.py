"""`reprokit data import`: any CSV or parquet file with a label column → reprokit's dataset layout.

Roles are inferred, and every inference can be overridden:

- labels: ``--label`` (repeatable or comma-separated); otherwise every column named ``label`` or
  starting with ``label``; otherwise the first of ``click``, ``clicked``, ``is_click``, ``target``,
  ``y``. Labels must be 0/1 (or booleans) without missing values; ``--label-threshold T`` turns a
  numeric column into ``value >= T`` (e.g. ratings). They are stored as int8.
- example id: ``--example-id COL`` or a column named ``example_id``; unique integers. Created as
  0..n-1 (file order) when absent.
- timestamp: ``--timestamp COL`` or a column named ``timestamp``; numbers (kept as int64) or dates
  (converted to int64 seconds since the epoch, UTC).
- everything else is a feature: strings, booleans and categories are categorical; integers are
  categorical when they have at most ``max_categories`` distinct values or when the name looks like
  an id (``id``, ``*_id``, ``*Id``), numeric otherwise; floats are numeric. ``--categorical`` and
  ``--numeric`` override, ``--drop`` leaves columns out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reprokit.data.layout import Dataset, DatasetSchema, write_dataset
from reprokit.errors import ReprokitError

LABEL_FALLBACKS = ("click", "clicked", "is_click", "target", "y")
DEFAULT_MAX_CATEGORIES = 1000
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_ID_NAME = re.compile(r"(^id$|_id$|[a-z0-9]Id$)")


def split_names(values: str | Iterable[str] | None) -> list[str]:
    """['a,b', 'c'] or 'a,b,c' → ['a', 'b', 'c'] (order kept, blanks and repeats dropped)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV/TSV (optionally compressed) or parquet file into a frame; refuse anything else."""
    path = Path(path)
    if not path.exists():
        raise ReprokitError(f"file not found: {path}")
    if path.is_dir():
        raise ReprokitError(f"{path} is a directory, not a CSV or parquet file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    try:
        if magic == b"PAR1" or path.suffix.lower() in _PARQUET_SUFFIXES:
            return pq.read_table(path).to_pandas()
        suffixes = [s.lower() for s in path.suffixes]
        sep = "\t" if ".tsv" in suffixes or ".tab" in suffixes else ","
        return pd.read_csv(path, sep=sep, low_memory=False)
    except pd.errors.EmptyDataError:
        raise ReprokitError(f"{path} is empty") from None
    except (pa.ArrowInvalid, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReprokitError(f"{path} is not a readable CSV or parquet file ({first})") from None


def _check_known(frame: pd.DataFrame, names: Sequence[str], option: str, source: str) -> None:
    unknown = [n for n in names if n not in frame.columns]
    if unknown:
        shown = ", ".join(map(repr, list(frame.columns)[:20]))
        more = " ..." if len(frame.columns) > 20 else ""
        raise ReprokitError(
            f"column {unknown[0]!r} named by {option} is not in {source}; its columns are "
            f"{shown}{more}"
        )


def _binary_label(series: pd.Series, name: str, threshold: float | None) -> pd.Series:
    missing = int(series.isna().sum())
    if missing:
        raise ReprokitError(
            f"label column {name!r} has {missing} missing value(s); drop or fill those rows first"
        )
    if pd.api.types.is_bool_dtype(series):
        return series.astype(np.int8)
    if not pd.api.types.is_numeric_dtype(series):
        raise ReprokitError(
            f"label column {name!r} holds non-numbers (e.g. {series.iloc[0]!r}); labels must be 0/1"
        )
    if threshold is not None:
        return (series >= threshold).astype(np.int8)
    values = pd.unique(series)
    if not np.isin(values, [0, 1]).all():
        odd = [v for v in values if v not in (0, 1)][:3]
        raise ReprokitError(
            f"label column {name!r} is not binary (it holds values such as "
            f"{', '.join(str(v) for v in odd)}); give --label-threshold to binarise it"
        )
    return series.astype(np.int8)


def _example_id(series: pd.Series, name: str) -> pd.Series:
    if series.isna().any():
        raise ReprokitError(f"example id column {name!r} has missing values")
    if pd.api.types.is_float_dtype(series) and (series % 1 == 0).all():
        series = series.astype(np.int64)
    if not pd.api.types.is_integer_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise ReprokitError(f"example id column {name!r} must hold integers")
    if series.duplicated().any():
        dup = series[series.duplicated()].iloc[0]
        raise ReprokitError(
            f"example id column {name!r} repeats the value {dup}; ids must be unique"
        )
    return series.astype(np.int64)


def _timestamp(series: pd.Series, name: str) -> pd.Series:
    if series.isna().any():
        raise ReprokitError(f"timestamp column {name!r} has missing values")
    if pd.api.types.is_bool_dtype(series):
        raise ReprokitError(f"timestamp column {name!r} holds booleans, not times")
    if pd.api.types.is_numeric_dtype(series):
        return np.floor(series).astype(np.int64) if pd.api.types.is_float_dtype(series) else series
    if not pd.api.types.is_datetime64_any_dtype(series):
        try:
            series = pd.to_datetime(series, utc=True, format="mixed")
        except (ValueError, TypeError):
            raise ReprokitError(
                f"timestamp column {name!r} holds neither numbers nor dates "
                f"(e.g. {series.iloc[0]!r})"
            ) from None
    return _datetime_seconds(series)


def _datetime_seconds(series: pd.Series) -> pd.Series:
    if getattr(series.dt, "tz", None) is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    seconds = (series - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
    return seconds.astype("Int64") if seconds.isna().any() else seconds.astype(np.int64)


def _is_categorical(series: pd.Series, name: str, max_categories: int) -> bool:
    if pd.api.types.is_bool_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype):
        return True
    if pd.api.types.is_integer_dtype(series):
        return bool(_ID_NAME.search(name)) or series.nunique(dropna=True) <= max_categories
    numeric_like = pd.api.types.is_numeric_dtype(series)
    return not (numeric_like or pd.api.types.is_datetime64_any_dtype(series))  # strings, objects


def _as_categorical(series: pd.Series) -> pd.Series:
    """Store a categorical column as ints, bools or strings (parquet-friendly, one type)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(series.cat.categories.dtype)
    if pd.api.types.is_float_dtype(series):
        finite = series.dropna()
        if (finite % 1 == 0).all():
            return series.astype("Int64") if series.isna().any() else series.astype(np.int64)
        return series
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
        return series
    if pd.api.types.is_datetime64_any_dtype(series):
        return _datetime_seconds(series)
    non_null = series.dropna()
    if len(non_null) and not non_null.map(lambda v: isinstance(v, str)).all():
        return series.map(lambda v: v if pd.isna(v) else str(v))
    return series


def _as_numeric(series: pd.Series, name: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        return series.astype(np.float32)
    if pd.api.types.is_datetime64_any_dtype(series):
        return _datetime_seconds(series).astype(np.float64)
    if pd.api.types.is_numeric_dtype(series):
        return series
    converted = pd.to_numeric(series, errors="coerce")
    bad = converted.isna() & series.notna()
    if bad.any():
        raise ReprokitError(
            f"column {name!r} given as --numeric holds non-numbers (e.g. {series[bad].iloc[0]!r})"
        )
    return converted


def infer_dataset(
    frame: pd.DataFrame,
    *,
    labels: str | Iterable[str] | None = None,
    categorical: str | Iterable[str] | None = None,
    numeric: str | Iterable[str] | None = None,
    drop: str | Iterable[str] | None = None,
    example_id: str | None = None,
    timestamp: str | None = None,
    label_threshold: float | None = None,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    name: str = "dataset",
    source: str = "the file",
) -> Dataset:
    """Infer roles (see the module docstring), convert the columns, and return the dataset."""
    labels_l, cat_l = split_names(labels), split_names(categorical)
    num_l, drop_l = split_names(numeric), split_names(drop)
    for option, names in (
        ("--label", labels_l),
        ("--categorical", cat_l),
        ("--numeric", num_l),
        ("--drop", drop_l),
        ("--example-id", [example_id] if example_id else []),
        ("--timestamp", [timestamp] if timestamp else []),
    ):
        _check_known(frame, names, option, source)
    if max_categories < 0:
        raise ReprokitError("--max-categories must be >= 0")
    if len(frame) == 0:
        raise ReprokitError(f"{source} has no rows")
    non_str = [c for c in frame.columns if not isinstance(c, str)]
    if non_str:
        frame = frame.rename(columns={c: str(c) for c in non_str})

    if not labels_l:
        labels_l = [c for c in frame.columns if c.lower().startswith("label") and c not in drop_l]
        if not labels_l:
            fallback = [
                c for c in frame.columns if c.lower() in LABEL_FALLBACKS and c not in drop_l
            ]
            labels_l = fallback[:1]
    if not labels_l:
        raise ReprokitError(
            f"{source} has no label column (none is named label*, click, target or y); "
            "name one with --label"
        )
    if example_id is None and "example_id" in frame.columns and "example_id" not in drop_l:
        example_id = "example_id"
    if timestamp is None and "timestamp" in frame.columns and "timestamp" not in drop_l:
        timestamp = "timestamp"

    roles: dict[str, str] = {}
    for option, names in (
        ("--label", labels_l),
        ("--example-id", [example_id] if example_id else []),
        ("--timestamp", [timestamp] if timestamp else []),
        ("--categorical", cat_l),
        ("--numeric", num_l),
        ("--drop", drop_l),
    ):
        for col in names:
            if col in roles:
                raise ReprokitError(
                    f"column {col!r} is given two roles ({roles[col]} and {option})"
                )
            roles[col] = option

    columns: dict[str, pd.Series] = {}
    if example_id is None:
        id_name = "example_id"
        columns[id_name] = pd.Series(np.arange(len(frame), dtype=np.int64))
    else:
        id_name = example_id
        columns[id_name] = _example_id(frame[example_id], example_id).reset_index(drop=True)

    cat_out, num_out = [], []
    for col in frame.columns:
        if col in roles and roles[col] not in ("--categorical", "--numeric"):
            continue
        series = frame[col].reset_index(drop=True)
        if col in cat_l or (col not in num_l and _is_categorical(series, col, max_categories)):
            columns[col] = _as_categorical(series)
            cat_out.append(col)
        else:
            columns[col] = _as_numeric(series, col)
            num_out.append(col)
    if timestamp is not None:
        columns[timestamp] = _timestamp(frame[timestamp], timestamp).reset_index(drop=True)
    for col in labels_l:
        columns[col] = _binary_label(frame[col], col, label_threshold).reset_index(drop=True)

    schema = DatasetSchema(
        categorical=cat_out,
        numeric=num_out,
        labels=labels_l,
        example_id=id_name,
        timestamp=timestamp,
        name=name,
    )
    out = pd.DataFrame(columns)
    schema.validate(out)
    return Dataset(frame=out, schema=schema)


def import_file(
    path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    **options,
) -> Dataset:
    """Read `path`, infer its dataset (options as for `infer_dataset`) and write it to `out`."""
    path = Path(path)
    frame = read_table(path)
    stem = path.name.split(".")[0] or "dataset"
    dataset = infer_dataset(frame, name=name or stem, source=str(path), **options)
    if out is not None:
        if Path(out).resolve() == path.resolve():
            raise ReprokitError(f"--out {out} would overwrite the input file; choose another path")
        write_dataset(dataset.frame, dataset.schema, out)
    return dataset
