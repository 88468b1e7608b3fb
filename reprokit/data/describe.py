"""`reprokit data describe`: what a dataset holds, as a versioned document and as a Rich table.

Document (``schema_version`` 1, ``kind`` "data-describe")::

    {"schema_version": 1, "kind": "data-describe", "name", "path",
     "schema_source": "file" | "inferred", "rows", "fingerprint",
     "columns": {"categorical": [...], "numeric": [...], "labels": [...],
                 "example_id": str|None, "timestamp": str|None},
     "categorical": {col: {"cardinality", "top_share", "missing"}},
     "numeric": {col: {"mean", "std", "min", "max", "missing"}},
     "labels": {col: {"base_rate", "positives", "missing"}},
     "timestamp": {"min", "max", "min_iso", "max_iso"} | None,
     "missing": {col: count for every column}}

``schema_source`` is "inferred" when the file had no reprokit schema and the roles come from the
same inference `reprokit data import` uses.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from reprokit.data.layout import SCHEMA_KEY, Dataset, dataset_fingerprint, read_dataset
from reprokit.errors import ReprokitError

DESCRIBE_SCHEMA_VERSION = 1


def _float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _iso(seconds: int) -> str | None:
    try:
        return datetime.fromtimestamp(int(seconds), tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def describe_dataset(
    dataset: Dataset, path: str | os.PathLike | None = None, schema_source: str = "file"
) -> dict:
    """The describe document of an in-memory dataset."""
    frame, schema = dataset.frame, dataset.schema
    doc: dict = {
        "schema_version": DESCRIBE_SCHEMA_VERSION,
        "kind": "data-describe",
        "name": schema.name,
        "path": str(path) if path is not None else None,
        "schema_source": schema_source,
        "rows": len(frame),
        "fingerprint": dataset_fingerprint(dataset),
        "columns": {
            "categorical": list(schema.categorical),
            "numeric": list(schema.numeric),
            "labels": list(schema.labels),
            "example_id": schema.example_id,
            "timestamp": schema.timestamp,
        },
    }
    cats = {}
    for col in schema.categorical:
        counts = frame[col].value_counts(dropna=True)
        top = int(counts.iloc[0]) if len(counts) else 0
        cats[col] = {
            "cardinality": int(len(counts)),
            "top_share": top / len(frame) if len(frame) else 0.0,
            "missing": int(frame[col].isna().sum()),
        }
    doc["categorical"] = cats
    nums = {}
    for col in schema.numeric:
        values = pd.to_numeric(frame[col], errors="coerce").astype(np.float64)
        nums[col] = {
            "mean": _float(values.mean()),
            "std": _float(values.std(ddof=0)),
            "min": _float(values.min()),
            "max": _float(values.max()),
            "missing": int(values.isna().sum()),
        }
    doc["numeric"] = nums
    labels = {}
    for col in schema.labels:
        values = pd.to_numeric(frame[col], errors="coerce").astype(np.float64)
        labels[col] = {
            "base_rate": _float(values.mean()),
            "positives": int((values > 0.5).sum()),
            "missing": int(values.isna().sum()),
        }
    doc["labels"] = labels
    doc["timestamp"] = None
    if schema.timestamp and len(frame):
        ts = frame[schema.timestamp]
        lo, hi = ts.min(), ts.max()
        if pd.notna(lo):
            doc["timestamp"] = {
                "min": int(lo),
                "max": int(hi),
                "min_iso": _iso(lo),
                "max_iso": _iso(hi),
            }
    doc["missing"] = {str(c): int(n) for c, n in frame.isna().sum().items()}
    return doc


def _has_schema(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # not parquet at all: a CSV, or garbage that read_table will refuse
        return False
    return SCHEMA_KEY in meta


def describe_file(path: str | os.PathLike) -> dict:
    """Describe a reprokit dataset file, or infer roles for a plain CSV/parquet file."""
    path = Path(path)
    if not path.exists():
        raise ReprokitError(f"file not found: {path}")
    if path.is_dir():
        raise ReprokitError(f"{path} is a directory, not a dataset file")
    if _has_schema(path):
        return describe_dataset(read_dataset(path), path, "file")
    from reprokit.data.importer import import_file

    return describe_dataset(import_file(path), path, "inferred")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def describe_table(doc: dict) -> Table:
    """A Rich table of one describe document: one row per column with its role and statistics."""
    ts = doc.get("timestamp")
    span = ""
    if ts:
        lo, hi = (ts[k][:10] if ts[k] else ts[k[:3]] for k in ("min_iso", "max_iso"))
        span = f", {lo} … {hi}"
    inferred = " (roles inferred)" if doc.get("schema_source") == "inferred" else ""
    table = Table(
        title=f"{doc['name']}: {doc['rows']:,} rows{span}{inferred}",
        title_justify="left",
    )
    for heading in ("column", "role", "statistics", "missing"):
        table.add_column(heading, justify="right" if heading == "missing" else "left")
    missing = doc.get("missing", {})
    cols = doc["columns"]
    if cols.get("example_id"):
        table.add_row(cols["example_id"], "example id", "", str(missing.get(cols["example_id"], 0)))
    for col, info in doc["labels"].items():
        stats = f"base rate {_fmt(info['base_rate'])} ({info['positives']:,} positive)"
        table.add_row(col, "label", stats, str(info["missing"]))
    for col, info in doc["categorical"].items():
        stats = f"{info['cardinality']:,} values, top {info['top_share']:.1%}"
        table.add_row(col, "categorical", stats, str(info["missing"]))
    for col, info in doc["numeric"].items():
        stats = (
            f"mean {_fmt(info['mean'])} sd {_fmt(info['std'])} "
            f"[{_fmt(info['min'])}, {_fmt(info['max'])}]"
        )
        table.add_row(col, "numeric", stats, str(info["missing"]))
    if cols.get("timestamp"):
        stats = f"{ts['min']} … {ts['max']}" if ts else ""
        table.add_row(cols["timestamp"], "timestamp", stats, str(missing.get(cols["timestamp"], 0)))
    return table
