"""`reprokit data import`: any CSV or parquet file with a label column → reprokit's dataset layout.

Roles are inferred, and every inference can be overridden:

- labels: ``--label`` (repeatable or comma-separated); otherwise every column named ``label`` or
  starting with ``label``; otherwise the first of ``click``, ``clicked``, ``is_click``, ``target``,
  ``y``. They are stored as int8 0/1 and must have no missing values. A label that already holds
  0/1 (or booleans) is kept as it is; ``--label-threshold T`` turns any other numeric label into
  ``value >= T`` (e.g. ratings); a label that holds text needs ``--positive VALUE``: that value
  becomes 1, every other value 0 (``--positive '>50K'``, ``--positive yes``). Text is compared
  after stripping surrounding whitespace, so the UCI adult file's ``' >50K'`` matches ``>50K``.
  ``--positive`` may be repeated (or comma-separated, when the whole value occurs nowhere) to
  name several spellings; a text label of more than two values with a single ``--positive`` is
  refused (UCI adult's test file writes ``' >50K.'``, which would silently become 0).
- example id: ``--example-id COL`` or a column named ``example_id``; unique integers. Created as
  0..n-1 (file order) when absent.
- timestamp: ``--timestamp COL`` or a column named ``timestamp``; numbers (kept as int64) or dates
  (converted to int64 seconds since the epoch, UTC). Without either, the one date column (ISO
  text such as ``2024-05-01`` or ``2024-05-01T12:00:00``, or datetimes) with no missing value is
  the timestamp (`ImportedDataset.inferred_timestamp`); several date columns stay features, named
  in `ImportedDataset.date_columns`, so the user can pick one with ``--timestamp``.
- pandas index: a column named ``Unnamed: N`` (or with an empty name) of distinct integers is an
  index that ``to_csv`` wrote, consecutive or not (a filtered frame): dropped, reason "index
  column written by pandas", unless ``--categorical`` or ``--numeric`` names it.
- row ids: any other column that holds a different value in every row and is text (``uuid``),
  or whole numbers named like an id (``ID``) or running through one consecutive range (a row
  counter), cannot generalise (no evaluation value is ever seen in training), so it is dropped and
  reported in `ImportedDataset.dropped` (reason "unique per row") unless ``--categorical`` or
  ``--numeric`` names it. Other integers distinct in every row (a weight, an amount) are numeric.
  A date column is never a row id.
- exact values: columns named by ``--categorical`` and id-named columns are read as the text in
  the file, so '007' and '7' stay two values and 64-bit ids with empty cells keep every digit
  (integers become int64, or nullable Int64 with missing values, each missing value one category
  of its own when encoded). Numeric features must be finite: inf is refused.
- everything else is a feature: strings, booleans and categories are categorical; integers are
  categorical when the name looks like an id or when they have at most ``max_categories`` distinct
  values that repeat (not one per row), numeric otherwise; floats are numeric, except integer-valued floats with an id-like name
  (an id column with missing values). A name looks like an id when, in any case, it is ``id``,
  starts with ``id`` plus a separator (``_``, ``-``, ``.`` or space) or ends with a separator plus
  ``id`` (``ID``, ``user_id``, ``USER_ID``, ``id_user``), or is camelCase ``...Id`` / ``...ID``
  (``userId``, ``adID``). ``--categorical`` and ``--numeric`` override, ``--drop`` leaves columns
  out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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
_ID_NAME = re.compile(r"^id$|^id[_\-. ]|[_\-. ]id$", re.IGNORECASE)
_CAMEL_ID_NAME = re.compile(r"[a-z0-9](Id|ID)$")
_CANONICAL_INTEGER = r"-?(?:0|[1-9][0-9]*)"  # an integer exactly as int() would print it
_LEADING_ZERO_INTEGER = r"[+-]?[0-9]+"
_PANDAS_INDEX_NAME = re.compile(r"^Unnamed: \d+$")
_ISO_DATE = r"\s*\d{4}-\d{2}-\d{2}"  # ISO dates and datetimes start with YYYY-MM-DD
_DATE_SAMPLE = 1000
UNIQUE_PER_ROW = "unique per row"
INDEX_COLUMN = "index column written by pandas"
_SHOWN_VALUES = 5


@dataclass
class ImportedDataset(Dataset):
    """A `Dataset` plus what the import decided on the user's behalf, so it can be shown."""

    dropped: dict[str, str] = field(default_factory=dict)  # column -> why, e.g. "unique per row"
    positive: dict[str, list[str]] = field(default_factory=dict)  # text label -> values mapped to 1
    #: the date column taken as the timestamp because it was the only one (None: none was taken)
    inferred_timestamp: str | None = None
    #: what that column held: "ISO dates" (text) or "dates" (a datetime column)
    inferred_timestamp_from: str | None = None
    #: date columns kept as features because no timestamp was named and none could be chosen
    date_columns: list[str] = field(default_factory=list)


def is_id_name(name: str) -> bool:
    """Whether a column name looks like an id (see the module docstring for the rule)."""
    return bool(_ID_NAME.search(name) or _CAMEL_ID_NAME.search(name))


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


def read_table(
    path: str | os.PathLike,
    *,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
) -> pd.DataFrame:
    """Read a CSV/TSV (optionally compressed) or parquet file into a frame; refuse anything else.

    Columns that will be categories keep their values exactly (see `_exact_csv_columns`): those
    named in `categorical` and, unless named in `numeric`, every id-named column."""
    path = Path(path)
    if not path.exists():
        raise ReprokitError(f"file not found: {path}")
    if path.is_dir():
        raise ReprokitError(f"{path} is a directory, not a CSV or parquet file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    try:
        if magic == b"PAR1" or path.suffix.lower() in _PARQUET_SUFFIXES:
            return _read_parquet(path, _exact_names(categorical, numeric))
        suffixes = [s.lower() for s in path.suffixes]
        sep = "\t" if ".tsv" in suffixes or ".tab" in suffixes else ","
        frame = pd.read_csv(path, sep=sep, low_memory=False)
        return _exact_csv_columns(frame, path, sep, categorical, numeric)
    except pd.errors.EmptyDataError:
        raise ReprokitError(f"{path} is empty") from None
    except (pa.ArrowInvalid, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReprokitError(f"{path} is not a readable CSV or parquet file ({first})") from None


def _exact_names(categorical: Sequence[str], numeric: Sequence[str]):
    """Which columns must keep exact values: named `categorical`, or id-named and not `numeric`."""

    def wanted(name: object) -> bool:
        name = str(name)
        return name in categorical or (is_id_name(name) and name not in numeric)

    return wanted


def _read_parquet(path: Path, wanted) -> pd.DataFrame:
    """Parquet as pandas, except that an integer column with nulls that will be categorical
    becomes nullable Int64 (pyarrow would make it float64 and round ids beyond 2**53)."""
    table = pq.read_table(path)
    frame = table.to_pandas()
    names = list(table.column_names)
    for i, name in enumerate(names):
        column = table.column(i)
        if (
            wanted(name)
            and names.count(name) == 1
            and name in frame.columns
            and pa.types.is_integer(column.type)
            and column.null_count
        ):
            dtype = pd.UInt64Dtype() if column.type == pa.uint64() else pd.Int64Dtype()
            frame[name] = pd.array(column.to_pylist(), dtype=dtype)
    return frame


def _exact_csv_columns(
    frame: pd.DataFrame,
    path: Path,
    sep: str,
    categorical: Sequence[str],
    numeric: Sequence[str],
) -> pd.DataFrame:
    """Re-read, as text, the columns that will be categories but that pandas parsed as numbers:
    an integer column with empty cells is float64 to pandas (ids near 2**62 collapse, 1,024 to a
    float), and '007' and '7' both become 7. Integers written as `int` would write them become
    int64 (Int64 with missing values), exactly; anything else stays text as written, except that
    an id-named column of other numbers (1.5) keeps pandas' parse."""
    wanted = _exact_names(categorical, numeric)
    if not isinstance(frame.index, pd.RangeIndex) or frame.columns.duplicated().any():
        return frame  # pandas moved columns into the index: positions no longer match the file
    positions = [
        i
        for i, col in enumerate(frame.columns)
        if wanted(col) and not _is_text(frame[col])  # text columns are already as written
    ]
    if not positions:
        return frame
    text = pd.read_csv(path, sep=sep, usecols=positions, dtype=str, low_memory=False)
    frame = frame.copy()
    for i in positions:
        col = frame.columns[i]
        values = text.iloc[:, positions.index(i)]
        present = values.dropna()
        if present.str.fullmatch(_CANONICAL_INTEGER).all():
            try:
                exact = values.astype("Int64")
            except (OverflowError, ValueError, TypeError):  # beyond int64: keep the text
                frame[col] = values.array
                continue
            frame[col] = (exact if exact.isna().any() else exact.astype(np.int64)).array
        elif str(col) in categorical or present.str.fullmatch(_LEADING_ZERO_INTEGER).all():
            frame[col] = values.array
    return frame


def _check_known(frame: pd.DataFrame, names: Sequence[str], option: str, source: str) -> None:
    unknown = [n for n in names if n not in frame.columns]
    if unknown:
        shown = ", ".join(map(repr, list(frame.columns)[:20]))
        more = " ..." if len(frame.columns) > 20 else ""
        raise ReprokitError(
            f"column {unknown[0]!r} named by {option} is not in {source}; its columns are "
            f"{shown}{more}"
        )


def _plain(series: pd.Series) -> pd.Series:
    """A categorical column as its categories' dtype, so it is judged by its values."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        return series.astype(series.cat.categories.dtype)
    return series


def _is_binary(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series):
        return True
    return pd.api.types.is_numeric_dtype(series) and bool(series.isin([0, 1]).all())


def _is_text(series: pd.Series) -> bool:
    return not (pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series))


def _stripped_text(series: pd.Series) -> pd.Series:
    """Text values with surrounding whitespace removed (CSV files often have ', >50K')."""
    return series.map(lambda v: str(v).strip())


def _show_values(values: pd.Series) -> str:
    """'a', 'b' (most frequent first), or '4 of 9 distinct values: ...' when there are many."""
    counts = values.value_counts(sort=True)
    shown = ", ".join(repr(v) for v in counts.index[:_SHOWN_VALUES])
    if len(counts) > _SHOWN_VALUES:
        return f"{_SHOWN_VALUES} of {len(counts)} distinct values: {shown}, ..."
    return shown


def _check_label_options(
    labels: dict[str, pd.Series], threshold: float | None, positive: list[str]
) -> None:
    """Refuse --positive / --label-threshold when no label column is of the kind they apply to."""
    names = ", ".join(repr(c) for c in labels)
    if positive and not any(_is_text(s) for s in labels.values()):
        raise ReprokitError(
            f"--positive applies to label columns that hold text, and none of {names} does; "
            "leave it out (numeric labels take --label-threshold)"
        )
    if threshold is not None and not any(
        not _is_text(s) and not _is_binary(s) for s in labels.values()
    ):
        raise ReprokitError(
            f"--label-threshold applies to numeric label columns that are not already 0/1, and "
            f"none of {names} is one; leave it out"
        )


def _positive_values(values: pd.Series, name: str, positive: list[str]) -> list[str]:
    """The label values that mean 1. Each --positive value counts as a whole; one that occurs
    nowhere but holds commas counts as its comma-separated parts (a value may contain a comma).
    A value that is another spelling of a positive one (UCI adult's '>50K.' next to '>50K') is
    refused: it would silently become 0. A one-vs-rest label (A/B/C with --positive A) is fine."""
    present = set(pd.unique(values))
    out: list[str] = []
    for given in positive:
        wanted = given.strip()
        parts = [wanted]
        if wanted not in present and "," in wanted:
            parts = [p.strip() for p in wanted.split(",") if p.strip()]
        for part in parts:
            if part not in present:
                same = [v for v in present if v.casefold() == part.casefold()]
                hint = f"; did you mean {same[0]!r}?" if same else ""
                raise ReprokitError(
                    f"--positive {part!r} does not occur in label column {name!r} (values "
                    f"{_show_values(values)}, compared after stripping whitespace){hint}"
                )
            if part not in out:
                out.append(part)
    variants = sorted(
        v for v in present if v not in out and any(_spelling(v) == _spelling(o) for o in out)
    )
    if variants:
        raise ReprokitError(
            f"label column {name!r} holds {variants[0]!r}, another spelling of --positive "
            f"{out[0]!r} (values {_show_values(values)}), which would silently become 0; name "
            f"each positive spelling (--positive {out[0]!r} --positive {variants[0]!r}), or "
            "clean the column first"
        )
    return out


def _spelling(value: str) -> str:
    """A label value without case, surrounding space and trailing full stops: '>50K.' and '>50k'
    read alike ('<=50K' does not), so a one-vs-rest label (grades A/B/C, --positive A) is
    accepted but a stray spelling of the positive value is not."""
    return value.casefold().strip().rstrip(".").strip()


def _binary_label(
    series: pd.Series, name: str, threshold: float | None, positive: list[str]
) -> tuple[pd.Series, list[str]]:
    """0/1 as int8 and the values mapped to 1 (text labels only): 0/1 and booleans as they are,
    other numbers by `threshold`, text by `positive` (compared after stripping whitespace)."""
    missing = int(series.isna().sum())
    if missing:
        raise ReprokitError(
            f"label column {name!r} has {missing} missing value(s); drop or fill those rows first"
        )
    if _is_binary(series):
        return series.astype(np.int8), []
    if _is_text(series):
        values = _stripped_text(series)
        if not positive:
            raise ReprokitError(
                f"label column {name!r} holds text, not 0/1 (values {_show_values(values)}); "
                "say which value is the positive class with --positive VALUE"
            )
        chosen = _positive_values(values, name, positive)
        return values.isin(chosen).astype(np.int8), chosen
    if threshold is not None:
        return (series >= threshold).astype(np.int8), []
    odd = [v for v in pd.unique(series) if v not in (0, 1)][:3]
    raise ReprokitError(
        f"label column {name!r} is not binary (it holds values such as "
        f"{', '.join(str(v) for v in odd)}); give --label-threshold to binarise it"
    )


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
        _refuse_infinite(series, f"timestamp column {name!r}")
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


def _refuse_infinite(series: pd.Series, what: str) -> None:
    """Refuse inf/-inf: a user should know, and they would poison means and standardisation."""
    if not pd.api.types.is_float_dtype(series):
        return
    count = int(np.isinf(series.to_numpy(dtype=np.float64, na_value=np.nan)).sum())
    if count:
        raise ReprokitError(
            f"{what} has {count} infinite value(s) (inf or -inf); replace them (an empty cell is "
            "a missing value) or leave the column out with --drop"
        )


def _is_pandas_index(series: pd.Series, name: str) -> bool:
    """A pandas index written with the data (``to_csv()`` without ``index=False``): named
    ``Unnamed: 0`` (or with no name), integers, one per row; consecutive or not (a filtered frame
    keeps its old row numbers)."""
    if not (name == "" or _PANDAS_INDEX_NAME.match(name)):
        return False
    if not pd.api.types.is_integer_dtype(series) or pd.api.types.is_bool_dtype(series):
        return False
    return not series.isna().any() and bool(series.is_unique)


def _is_date(series: pd.Series) -> bool:
    """Dates or datetimes: a datetime column, or text whose values all start as ISO dates
    (YYYY-MM-DD) and of which a sample parses as ISO 8601."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return True
    if not _is_text(series) or isinstance(series.dtype, pd.CategoricalDtype):
        return False
    present = series.dropna()
    sample = present.iloc[:_DATE_SAMPLE]
    if not len(sample) or not sample.map(lambda v: isinstance(v, str)).all():
        return False
    if not sample.astype(str).str.match(_ISO_DATE).all():
        return False  # cheap refusal of the usual text column before looking at every row
    try:
        pd.to_datetime(sample.astype(str), format="ISO8601", utc=True)
    except (ValueError, TypeError, OverflowError):
        return False
    return bool(present.astype(str).str.match(_ISO_DATE).all())


def _integral(series: pd.Series) -> bool:
    return bool((series.dropna() % 1 == 0).all())


def _distinct_per_row(series: pd.Series) -> bool:
    """Whether every row holds its own value (no missing values, no repeats). Floats that are not
    whole numbers (measurements, nearly always distinct), booleans and dates never count."""
    if len(series) < 2 or series.isna().any():
        return False
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_datetime64_any_dtype(series):
        return False
    if pd.api.types.is_float_dtype(series) and not _integral(series):
        return False
    try:
        return bool(series.is_unique)
    except TypeError:  # unhashable values (lists in a parquet column)
        return False


def _is_row_id(series: pd.Series, name: str) -> bool:
    """A row id (ID, uuid, a row counter): distinct per row, and text, or whole numbers that are
    named like an id or run through one consecutive range. Other distinct integers (a weight, an
    amount) are measurements and stay numeric."""
    if not _distinct_per_row(series):
        return False
    if isinstance(series.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(series):
        return True
    return is_id_name(name) or int(series.max()) - int(series.min()) + 1 == len(series)


def _is_categorical(series: pd.Series, name: str, max_categories: int) -> bool:
    if pd.api.types.is_bool_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype):
        return True
    if pd.api.types.is_integer_dtype(series):
        if is_id_name(name):
            return True
        # few values are categories; values distinct per row would all be unseen in evaluation
        return series.nunique(dropna=True) <= max_categories and not _distinct_per_row(series)
    if pd.api.types.is_float_dtype(series):
        return is_id_name(name) and _integral(series)  # an id column with missing values
    numeric_like = pd.api.types.is_numeric_dtype(series)
    return not (numeric_like or pd.api.types.is_datetime64_any_dtype(series))  # strings, objects


def _as_categorical(series: pd.Series) -> pd.Series:
    """Store a categorical column as ints, bools or strings (parquet-friendly, one type)."""
    series = _plain(series)
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
    if not pd.api.types.is_numeric_dtype(series):
        converted = pd.to_numeric(series, errors="coerce")
        bad = converted.isna() & series.notna()
        if bad.any():
            raise ReprokitError(
                f"column {name!r} given as --numeric holds non-numbers "
                f"(e.g. {series[bad].iloc[0]!r})"
            )
        series = converted
    _refuse_infinite(series, f"numeric column {name!r}")
    return series


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
    positive: str | Iterable[str] | None = None,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    name: str = "dataset",
    source: str = "the file",
) -> ImportedDataset:
    """Infer roles (see the module docstring), convert the columns, and return the dataset with
    the columns dropped as row ids and the positive values of each text label. `positive` is one
    value or several (a value may contain a comma; see `_positive_values`)."""
    positives_l = [positive] if isinstance(positive, str) else list(positive or [])
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
    if any(not str(p).strip() for p in positives_l):
        raise ReprokitError("--positive needs a value, e.g. --positive yes")
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
    dates = [c for c in frame.columns if c not in roles and _is_date(frame[c])]
    inferred_timestamp = inferred_from = None
    if timestamp is None and len(dates) == 1 and not frame[dates[0]].isna().any():
        timestamp = inferred_timestamp = dates.pop()
        roles[timestamp] = "--timestamp"
        text = not pd.api.types.is_datetime64_any_dtype(frame[timestamp])
        inferred_from = "ISO dates" if text else "dates"

    columns: dict[str, pd.Series] = {}
    if example_id is None:
        id_name = "example_id"
        columns[id_name] = pd.Series(np.arange(len(frame), dtype=np.int64))
    else:
        id_name = example_id
        columns[id_name] = _example_id(frame[example_id], example_id).reset_index(drop=True)

    cat_out, num_out = [], []
    dropped: dict[str, str] = {}
    for col in frame.columns:
        if col in roles and roles[col] not in ("--categorical", "--numeric"):
            continue
        series = frame[col].reset_index(drop=True)
        if col not in roles and _is_pandas_index(series, col):
            dropped[col] = INDEX_COLUMN
            continue
        if col not in roles and col not in dates and _is_row_id(series, col):
            dropped[col] = UNIQUE_PER_ROW  # a date is never a row id, even one per row
            continue
        if col in cat_l or (col not in num_l and _is_categorical(series, col, max_categories)):
            columns[col] = _as_categorical(series)
            cat_out.append(col)
        else:
            columns[col] = _as_numeric(series, col)
            num_out.append(col)
    if timestamp is not None:
        columns[timestamp] = _timestamp(frame[timestamp], timestamp).reset_index(drop=True)
    raw_labels = {col: _plain(frame[col]) for col in labels_l}
    _check_label_options(raw_labels, label_threshold, positives_l)
    positives: dict[str, list[str]] = {}
    for col, raw in raw_labels.items():
        binary, chosen = _binary_label(raw, col, label_threshold, positives_l)
        columns[col] = binary.reset_index(drop=True)
        if chosen:
            positives[col] = chosen

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
    return ImportedDataset(
        frame=out,
        schema=schema,
        dropped=dropped,
        positive=positives,
        inferred_timestamp=inferred_timestamp,
        inferred_timestamp_from=inferred_from,
        date_columns=dates if timestamp is None else [],
    )


def import_file(
    path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    **options,
) -> ImportedDataset:
    """Read `path`, infer its dataset (options as for `infer_dataset`, e.g. ``labels="income",
    positive=">50K"``) and write it to `out`; `.dropped` names the row-id columns left out."""
    path = Path(path)
    frame = read_table(
        path,
        categorical=split_names(options.get("categorical")),
        numeric=split_names(options.get("numeric")),
    )
    stem = path.name.split(".")[0] or "dataset"
    dataset = infer_dataset(frame, name=name or stem, source=str(path), **options)
    if out is not None:
        if Path(out).resolve() == path.resolve():
            raise ReprokitError(f"--out {out} would overwrite the input file; choose another path")
        write_dataset(dataset.frame, dataset.schema, out)
    return dataset
