"""MovieLens-100k from a local copy, in either of its two common layouts (detected automatically).

- GroupLens (the original archive): ``u.data`` (tab-separated user, item, rating, timestamp),
  ``u.user`` (``id|age|gender|occupation|zip``), ``u.item`` (pipe-separated, latin-1: id, title,
  release date ``01-Jan-1995``, video release date, IMDb URL, 19 genre flags).
- RecBole atomic files: ``<name>.inter``, ``<name>.user``, ``<name>.item``, tab-separated with typed
  headers such as ``user_id:token`` (the item file has ``release_year`` and a space-separated
  ``class`` genre list).

The resulting dataset (one row per rating, in the order of the ratings file):

| column | role | meaning |
|---|---|---|
| ``example_id`` | id | row number in the ratings file (0..99999) |
| ``user_id``, ``item_id`` | categorical | the MovieLens ids |
| ``age`` | categorical | age bucket as in MovieLens-1M, by lower bound: 1 (<18), 18, 25, 35,
  45, 50, 56 |
| ``gender``, ``occupation`` | categorical | as in the user file |
| ``zip`` | categorical | first character of the zip code (US region digit, or the letter of a
  Canadian postcode); ``?`` when unknown |
| ``release_year`` | categorical | year of release, 0 when unknown |
| ``genres`` | categorical | the movie's genres collapsed to one token, ``Action|Comedy``, in the
  GroupLens genre order (a multi-hot vector as a single categorical value; 216 distinct combinations
  in ml-100k) |
| ``timestamp`` | timestamp | seconds since the epoch |
| ``label`` | label | 1 when the rating is >= 4, else 0 (int8) |
| ``label_5star`` | label | second task for multitask runs: 1 when the rating is 5, else 0 (int8) |

The rating itself is not kept, since the labels are derived from it. Single-task runs train on
``label`` (the first label); ``--tasks all`` trains both.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from reprokit.data.layout import Dataset, DatasetSchema
from reprokit.errors import ReprokitError

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)  # MovieLens-1M buckets: lower bounds
LABEL_MIN_RATING = 4
FIVE_STAR_RATING = 5  # the second task, `label_5star`
CATEGORICAL = (
    "user_id",
    "item_id",
    "age",
    "gender",
    "occupation",
    "zip",
    "release_year",
    "genres",
)


def detect_layout(path: str | os.PathLike) -> tuple[str, Path, str]:
    """(layout, directory, RecBole file stem) for a MovieLens copy; refuse anything else.

    `path` may be the directory itself, a parent holding ``ml-100k/``, or one of the files.
    """
    path = Path(path)
    if not path.exists():
        raise ReprokitError(f"MovieLens directory not found: {path}")
    if path.is_file():
        path = path.parent
    candidates = [path, path / "ml-100k"]
    for directory in candidates:
        if (directory / "u.data").is_file():
            for need in ("u.user", "u.item"):
                if not (directory / need).is_file():
                    raise ReprokitError(f"{directory} has u.data but no {need}")
            return "grouplens", directory, ""
        inters = sorted(directory.glob("*.inter")) if directory.is_dir() else []
        if inters:
            stem = inters[0].stem
            for ext in (".user", ".item"):
                if not (directory / f"{stem}{ext}").is_file():
                    raise ReprokitError(f"{directory} has {stem}.inter but no {stem}{ext}")
            return "recbole", directory, stem
    raise ReprokitError(
        f"{path} holds no MovieLens copy: expected GroupLens u.data/u.user/u.item or RecBole "
        "<name>.inter/<name>.user/<name>.item files"
    )


def _read(path: Path, what: str, **kwargs) -> pd.DataFrame:
    for encoding in ("utf-8", "latin-1"):
        try:
            return pd.read_csv(path, encoding=encoding, **kwargs)
        except UnicodeDecodeError:
            continue
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "empty file"
            raise ReprokitError(f"cannot read the MovieLens {what} file {path} ({first})") from None
    raise ReprokitError(f"cannot decode the MovieLens {what} file {path}")  # pragma: no cover


def _need(frame: pd.DataFrame, columns: list[str], path: Path) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReprokitError(f"{path} lacks column(s) {', '.join(missing)}")
    return frame


def _read_grouplens(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    inter = _read(
        directory / "u.data",
        "ratings",
        sep="\t",
        header=None,
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    users = _read(
        directory / "u.user",
        "user",
        sep="|",
        header=None,
        names=["user_id", "age", "gender", "occupation", "zip_code"],
        dtype=str,
        keep_default_na=False,
    )
    item_cols = ["item_id", "title", "release_date", "video_release_date", "url", *GENRES]
    items = _read(
        directory / "u.item",
        "item",
        sep="|",
        header=None,
        names=item_cols,
        dtype=str,
        keep_default_na=False,
    )
    flags = items[list(GENRES)].apply(pd.to_numeric, errors="coerce").fillna(0).astype(bool)
    names = np.asarray(GENRES, dtype=object)
    items["genres"] = [
        "|".join(names[row]) or "unknown" for row in flags.to_numpy()
    ]  # 1682 rows: a plain loop is fine
    items["release_year"] = items["release_date"].str[-4:]
    return inter, users, items[["item_id", "release_year", "genres"]]


def _read_recbole(directory: Path, stem: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    def typed(path: Path, what: str) -> pd.DataFrame:
        frame = _read(path, what, sep="\t", dtype=str, keep_default_na=False)
        return frame.rename(columns=lambda c: c.split(":")[0])

    inter_path = directory / f"{stem}.inter"
    inter = _need(typed(inter_path, "ratings"), ["user_id", "item_id", "rating"], inter_path)
    if "timestamp" not in inter.columns:
        raise ReprokitError(f"{inter_path} lacks a timestamp column")
    user_path, item_path = directory / f"{stem}.user", directory / f"{stem}.item"
    user_cols = ["user_id", "age", "gender", "occupation", "zip_code"]
    users = _need(typed(user_path, "user"), user_cols, user_path)[user_cols]
    items = _need(typed(item_path, "item"), ["item_id"], item_path)
    order = {g: k for k, g in enumerate(GENRES)}
    classes = items["class"] if "class" in items.columns else pd.Series([""] * len(items))
    items["genres"] = [
        "|".join(sorted({g for g in text.split() if g in order}, key=order.get)) or "unknown"
        for text in classes
    ]
    if "release_year" not in items.columns:
        items["release_year"] = ""
    return inter, users, items[["item_id", "release_year", "genres"]]


def _to_int(series: pd.Series, what: str, path: Path) -> pd.Series:
    values = pd.to_numeric(series, errors="coerce")
    if values.isna().any():
        bad = series[values.isna()].iloc[0]
        raise ReprokitError(f"{path}: the {what} column holds a non-number ({bad!r})")
    return values.astype(np.int64)


def _ids(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype("Int64")


def load_movielens(path: str | os.PathLike) -> Dataset:
    """Read a local MovieLens-100k copy (GroupLens or RecBole layout) as a reprokit dataset."""
    layout, directory, stem = detect_layout(path)
    if layout == "grouplens":
        inter, users, items = _read_grouplens(directory)
        inter_path = directory / "u.data"
    else:
        inter, users, items = _read_recbole(directory, stem)
        inter_path = directory / f"{stem}.inter"
    if len(inter) == 0:
        raise ReprokitError(f"{inter_path} has no ratings")

    user_id = _to_int(inter["user_id"], "user id", inter_path)
    item_id = _to_int(inter["item_id"], "item id", inter_path)
    rating = pd.to_numeric(inter["rating"], errors="coerce")
    if rating.isna().any():
        raise ReprokitError(f"{inter_path}: the rating column has missing or non-numeric values")
    timestamp = _to_int(inter["timestamp"], "timestamp", inter_path)

    users = users.assign(user_id=_ids(users["user_id"])).dropna(subset=["user_id"])
    users = users.drop_duplicates("user_id").set_index("user_id")
    items = items.assign(item_id=_ids(items["item_id"])).dropna(subset=["item_id"])
    items = items.drop_duplicates("item_id").set_index("item_id")

    age_years = pd.to_numeric(users["age"], errors="coerce")
    bucket_pos = np.searchsorted(AGE_BUCKETS, age_years.fillna(0), side="right") - 1
    age_bucket = pd.Series(np.asarray(AGE_BUCKETS)[np.maximum(bucket_pos, 0)], index=users.index)
    age_bucket = age_bucket.where(age_years.notna(), 0)
    zip_code = users["zip_code"].astype(str).str.strip().str[:1].str.upper().replace("", "?")
    year = pd.to_numeric(items["release_year"], errors="coerce").fillna(0).astype(np.int64)

    def user_attr(values: pd.Series, missing: object) -> np.ndarray:
        return values.reindex(user_id.to_numpy()).fillna(missing).to_numpy()

    def item_attr(values: pd.Series, missing: object) -> np.ndarray:
        return values.reindex(item_id.to_numpy()).fillna(missing).to_numpy()

    n = len(inter)
    frame = pd.DataFrame(
        {
            "example_id": np.arange(n, dtype=np.int64),
            "user_id": user_id.to_numpy(),
            "item_id": item_id.to_numpy(),
            "age": user_attr(age_bucket, 0).astype(np.int64),
            "gender": user_attr(users["gender"].astype(str), "?").astype(str),
            "occupation": user_attr(users["occupation"].astype(str), "?").astype(str),
            "zip": user_attr(zip_code, "?").astype(str),
            "release_year": item_attr(year, 0).astype(np.int64),
            "genres": item_attr(items["genres"].astype(str), "unknown").astype(str),
            "timestamp": timestamp.to_numpy(),
            "label": (rating.to_numpy() >= LABEL_MIN_RATING).astype(np.int8),
            "label_5star": (rating.to_numpy() >= FIVE_STAR_RATING).astype(np.int8),
        }
    )
    schema = DatasetSchema(
        categorical=list(CATEGORICAL),
        numeric=[],
        labels=["label", "label_5star"],
        example_id="example_id",
        timestamp="timestamp",
        name="movielens-100k",
    )
    schema.validate(frame)
    return Dataset(frame=frame, schema=schema)
