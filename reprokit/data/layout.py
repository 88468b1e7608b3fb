"""reprokit's dataset layout: one parquet file, its schema in the file's key-value metadata.

Everything that reads or writes a dataset goes through `read_dataset` / `write_dataset`, so the
schema travels with the data and a training run never has to guess which column is what.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reprokit.errors import ReprokitError
from reprokit.fsio import atomic_write

SCHEMA_KEY = b"reprokit.schema"
SCHEMA_VERSION = 1


@dataclass
class DatasetSchema:
    """Which columns are categorical ids, numeric features, labels, the example id and the time."""

    categorical: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=lambda: ["label"])
    example_id: str | None = "example_id"
    timestamp: str | None = None
    name: str = "dataset"

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, doc: dict) -> DatasetSchema:
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return cls(**known)

    def validate(self, frame: pd.DataFrame) -> None:
        """Refuse a frame that lacks a column the schema names, or has no label."""
        if not self.labels:
            raise ReprokitError("the dataset schema names no label column")
        named = [*self.categorical, *self.numeric, *self.labels]
        named += [c for c in (self.example_id, self.timestamp) if c]
        missing = [c for c in named if c not in frame.columns]
        if missing:
            raise ReprokitError(
                f"dataset {self.name!r} lacks column(s) {', '.join(map(repr, missing))}; "
                f"it has {', '.join(map(repr, frame.columns))}"
            )


@dataclass
class Dataset:
    frame: pd.DataFrame
    schema: DatasetSchema

    def __len__(self) -> int:
        return len(self.frame)


#: Rows per parquet row group of the files reprokit writes (predictions of a large evaluation
#: split are then read back, and streamed by other tools, a group at a time).
ROW_GROUP_ROWS = 1 << 17


def atomic_write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write parquet to a temporary name and rename: a killed process never leaves half a file."""
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS))


def write_dataset(frame: pd.DataFrame, schema: DatasetSchema, path: str | os.PathLike) -> Path:
    """Write `frame` with `schema` embedded in the parquet metadata (atomically)."""
    schema.validate(frame)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[SCHEMA_KEY] = json.dumps(schema.to_dict()).encode()
    table = table.replace_schema_metadata(meta)
    atomic_write_table(table, path)
    return Path(path)


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Read a dataset written by `write_dataset`; refuse files that are not in reprokit's layout."""
    path = Path(path)
    if not path.exists():
        raise ReprokitError(f"dataset file not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReprokitError(f"{path} is not a readable parquet file ({exc})") from None
    schema = schema_of_table(table.schema, path)
    frame = table.to_pandas()
    schema.validate(frame)
    return Dataset(frame=frame, schema=schema)


def schema_of_table(arrow_schema: pa.Schema, path: Path) -> DatasetSchema:
    """The reprokit schema in a parquet file's metadata (refused when there is none)."""
    meta = arrow_schema.metadata or {}
    if SCHEMA_KEY not in meta:
        raise ReprokitError(
            f"{path} has no reprokit schema; convert it first with `reprokit data import {path}`"
        )
    return DatasetSchema.from_dict(json.loads(meta[SCHEMA_KEY]))


def dataset_fingerprint(dataset: Dataset) -> str:
    """A short sha256 of the schema and every value (row order matters), for manifests."""
    import hashlib

    digest = hashlib.sha256(json.dumps(dataset.schema.to_dict(), sort_keys=True).encode())
    digest.update(json.dumps([[str(c), str(t)] for c, t in dataset.frame.dtypes.items()]).encode())
    if len(dataset.frame):
        hashed = pd.util.hash_pandas_object(dataset.frame, index=False)
        digest.update(hashed.to_numpy().tobytes())
    return digest.hexdigest()[:16]
