"""Train / evaluation splits and the one entry point training uses to get its data.

Both splits are functions of the data's *content*, not of the row order it happens to be stored in:

- ``random``: rows are ordered by example id, a ``numpy.random.default_rng(seed)`` permutation
  picks ``round(n · eval_fraction)`` of them for evaluation. Both parts come back sorted by id.
- ``temporal``: rows are ordered by (timestamp, example id); the last ``round(n · eval_fraction)``
  are the evaluation part. Both parts come back in that (time, id) order.

So the evaluation examples and their order are identical on every call with the same arguments,
which is what makes predictions of different replicas (and runs) comparable row by row.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reprokit.data.layout import Dataset, read_dataset
from reprokit.errors import ReprokitError

if TYPE_CHECKING:
    from reprokit.config import DataConfig

SPLIT_METHODS = ("random", "temporal")
#: Training refuses data whose evaluation split would be smaller: AUC, log loss and PD over fewer
#: examples are noise, and a run on them would look like a result.
MIN_EVAL_ROWS = 50
_RAW_SUFFIXES = (".csv", ".tsv", ".txt", ".gz", ".bz2", ".zip", ".xz", ".json", ".jsonl")


def with_example_id(dataset: Dataset) -> Dataset:
    """Give a dataset without an example-id column one (row position), and check ids are unique."""
    schema, frame = dataset.schema, dataset.frame
    if schema.example_id is None:
        name = "example_id"
        if name in frame.columns:
            raise ReprokitError(
                "the dataset has an 'example_id' column that its schema does not name as the id"
            )
        frame = frame.assign(**{name: np.arange(len(frame), dtype=np.int64)})
        schema = dataclasses.replace(schema, example_id=name)
        return Dataset(frame=frame, schema=schema)
    ids = frame[schema.example_id]
    if ids.isna().any():
        raise ReprokitError(f"the example id column {schema.example_id!r} has missing values")
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        raise ReprokitError(
            f"the example id column {schema.example_id!r} repeats the value {dup!r}; "
            "example ids must be unique"
        )
    return dataset


def _take(dataset: Dataset, positions: np.ndarray) -> Dataset:
    frame = dataset.frame.iloc[positions].reset_index(drop=True)
    return Dataset(frame=frame, schema=dataclasses.replace(dataset.schema))


def eval_rows(n: int, eval_fraction: float) -> int:
    """How many of `n` rows the evaluation split gets: ``round(n · eval_fraction)``."""
    if not 0.0 < eval_fraction < 1.0:
        raise ReprokitError(f"the evaluation fraction must be in (0, 1), got {eval_fraction}")
    return int(round(n * eval_fraction))


def check_eval_size(n: int, eval_fraction: float, source: str, more: str = "more data") -> None:
    """Refuse training on data whose evaluation split would hold fewer than `MIN_EVAL_ROWS` rows."""
    n_eval = eval_rows(n, eval_fraction)
    if n_eval < MIN_EVAL_ROWS:
        raise ReprokitError(
            f"{source} has {n:,} rows; the evaluation split (fraction {eval_fraction:g}) would "
            f"hold only {n_eval} rows, fewer than {MIN_EVAL_ROWS} — use {more} or a larger "
            "--eval-fraction"
        )


def split_dataset(
    dataset: Dataset, method: str = "random", eval_fraction: float = 0.2, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Split into (train, eval); deterministic for the arguments (see the module docstring)."""
    dataset = with_example_id(dataset)
    train_pos, eval_pos = split_order(dataset, method, eval_fraction, seed)
    return _take(dataset, train_pos), _take(dataset, eval_pos)


def split_order(
    dataset: Dataset, method: str, eval_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, eval positions) of `dataset`'s rows (it has its example ids, see
    `with_example_id`; only the id and timestamp columns are read, so the memory-mapped loader
    passes a frame of just those)."""
    if method not in SPLIT_METHODS:
        raise ReprokitError(f"unknown split {method!r}; choose random or temporal")
    n = len(dataset)
    n_eval = eval_rows(n, eval_fraction)
    if n_eval < 1 or n - n_eval < 1:
        raise ReprokitError(
            f"cannot split {n} rows with evaluation fraction {eval_fraction}: "
            "both parts need at least one row"
        )
    ids = dataset.frame[dataset.schema.example_id].to_numpy()
    ts_col = dataset.schema.timestamp
    times = None
    if method == "temporal":
        if ts_col is None:
            raise ReprokitError(
                f"a temporal split needs a timestamp column, and dataset {dataset.schema.name!r} "
                "has none; use the random split or import the data with --timestamp"
            )
        ts = dataset.frame[ts_col]
        if ts.isna().any():
            raise ReprokitError(f"the timestamp column {ts_col!r} has missing values")
        times = ts.to_numpy()
    if times is None:
        order = np.argsort(ids, kind="stable")
        rng = np.random.default_rng(seed)
        chosen = np.zeros(n, dtype=bool)
        chosen[rng.permutation(n)[:n_eval]] = True  # positions in id order
        return order[~chosen], order[chosen]
    order = np.lexsort((ids, times))  # by time, ties by example id
    return order[: n - n_eval], order[n - n_eval :]


def select_labels(dataset: Dataset, label: str | list[str] | None) -> Dataset:
    """Narrow the schema to `label` (a name, a list of names for a multitask run, or ["all"]),
    or to the schema's first label when None / empty."""
    labels = dataset.schema.labels
    if not labels:
        raise ReprokitError(f"dataset {dataset.schema.name!r} names no label column")
    wanted = [label] if isinstance(label, str) else list(label or [])
    if wanted == ["all"]:
        wanted = list(labels)
    for name in wanted:
        if name not in labels:
            raise ReprokitError(
                f"label {name!r} is not a label of dataset {dataset.schema.name!r}; "
                f"its labels are {', '.join(labels)}"
            )
    schema = dataclasses.replace(dataset.schema, labels=wanted or [labels[0]])
    return Dataset(frame=dataset.frame, schema=schema)


def load_dataset(data_config: DataConfig) -> Dataset:
    """The whole dataset a `DataConfig` names: built-in synthetic when `path` is None."""
    if data_config.path is None:
        from reprokit.data.synth import generate_dataset

        return generate_dataset(
            rows=data_config.synth_rows,
            fields=data_config.synth_fields,
            cardinality=data_config.synth_cardinality,
            numeric=data_config.synth_numeric,
            seed=data_config.synth_seed,
            tasks=data_config.synth_tasks,
        )
    return read_dataset(check_dataset_path(data_config.path))


def check_dataset_path(name: str) -> Path:
    """`name` as a dataset file, or the sentence that says why it is not one."""
    path = Path(name)
    if not path.exists():
        raise ReprokitError(f"dataset file not found: {path}")
    if path.is_dir():
        raise ReprokitError(
            f"{path} is a directory; give a dataset parquet file (for MovieLens, convert the "
            f"directory first with `reprokit data movielens --path {path}`)"
        )
    if path.suffix.lower() in _RAW_SUFFIXES:
        raise ReprokitError(
            f"{path} is not in reprokit's dataset layout; convert it first with "
            f"`reprokit data import {path} --out DATASET.parquet`"
        )
    return path


def load_training_data(data_config: DataConfig) -> tuple[Dataset, Dataset]:
    """(train, eval) for a run: load, keep the configured label, refuse an evaluation split too
    small to measure anything (before any training), split as configured."""
    dataset = select_labels(load_dataset(data_config), data_config.labels or data_config.label)
    if data_config.path is None:
        check_eval_size(
            len(dataset),
            data_config.eval_fraction,
            "the built-in synthetic data",
            "more rows (--synth-rows)",
        )
    else:
        check_eval_size(len(dataset), data_config.eval_fraction, data_config.path)
    return split_dataset(
        dataset,
        method=data_config.split,
        eval_fraction=data_config.eval_fraction,
        seed=data_config.split_seed,
    )


def eval_groups(eval_: Dataset, column: str) -> np.ndarray:
    """The evaluation split's `column` [N] (in row order, the order predictions are made in): the
    groups of top-k churn, e.g. user ids. Refuses a missing column or missing values."""
    frame = eval_.frame
    if column not in frame.columns:
        raise ReprokitError(
            f"the evaluation data has no column {column!r} to measure churn by; it has "
            f"{', '.join(map(str, frame.columns))}"
        )
    missing = int(frame[column].isna().sum())
    if missing:
        raise ReprokitError(
            f"column {column!r} has {missing} missing values in the evaluation data"
        )
    return frame[column].to_numpy()
