"""Read-only loading of run directories for `report`, `gate` and users' own scripts.

The writer side (manifest, per-replica files, atomic writes, resume) lives in `reprokit.store`; this
module only reads what the run-directory contract in `docs/contracts.md` promises, and turns every
missing or corrupt file into one clear `ReprokitError` sentence.

Kinds understood here:

- ``train-ensemble``: ``manifest.json``, ``summary.json``, ``replicas/NNN/...``
- ``compare-activations``: ``compare.json`` and one train-ensemble run directory per arm under
  ``arms/``
- any other kind named by a manifest (``stability`` later) loads as a generic run with its manifest
  and summary, so a consumer can decide whether it supports it.

A path may also name a ``summary.json`` or ``compare.json`` file directly, or a directory that
holds only a ``summary.json`` (handy for a stored CI baseline); such a run has documents but no
replica files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reprokit.errors import ReprokitError

# Re-exported: report, gate and users' scripts read document numbers with `rundir.as_float`.
from reprokit.jsonio import as_float as as_float
from reprokit.runschema import (
    ARM_STUDIES,
    COMPARE,
    MANIFEST,
    METRICS,
    PREDICTIONS,
    REPLICAS,
    STUDY_DOCUMENTS,
    SUMMARY,
    TRAIN_ENSEMBLE,
    TRAIN_LOG,
    ReplicaColumns,
)
from reprokit.store import read_json


# -------------------------------------------------------------------------------------------- files
def read_table(path: str | Path, what: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a parquet file (optionally some columns) with a clear error when missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ReprokitError(f"{what} not found: {path}")
    try:
        return pq.read_table(path, columns=columns).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowException, OSError, KeyError) as exc:
        raise ReprokitError(f"{what} is corrupt or lacks a column ({path}: {exc})") from None


def _require(doc: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in doc]
    if missing:
        raise ReprokitError(f"{where} lacks key(s) {', '.join(map(repr, missing))}")


def check_summary(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """Check the parts of a summary document that every consumer relies on."""
    _require(doc, ("replicas", "pd"), where)
    if not isinstance(doc["pd"], dict):
        raise ReprokitError(f"{where} has a 'pd' entry that is not an object")
    return doc


# ----------------------------------------------------------------------------------------- replicas
@dataclass
class Replica:
    """One replica's files; tables load lazily and each loads once."""

    index: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return read_json(self.path / METRICS, f"replica {self.name} {METRICS}")

    @cached_property
    def train_log(self) -> pd.DataFrame:
        frame = read_table(self.path / TRAIN_LOG, f"replica {self.name} {TRAIN_LOG}")
        if "step" not in frame.columns or "loss" not in frame.columns:
            raise ReprokitError(
                f"replica {self.name} train_log.parquet lacks the 'step' and 'loss' columns"
            )
        return frame

    def predictions(self) -> pd.DataFrame:
        """The prediction file (not cached: a consumer streams replicas to keep memory bounded)."""
        return read_table(self.path / PREDICTIONS, f"replica {self.name} {PREDICTIONS}")


# ---------------------------------------------------------------------------------------------- run
@dataclass
class Run:
    """A loaded run directory (or a bare summary/compare document)."""

    path: Path
    kind: str
    manifest: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    documents_only: bool = False
    _arms: dict[str, Run] = field(default_factory=dict, repr=False)

    # ---- names
    @property
    def name(self) -> str:
        """A human name: the manifest's `name` (or the config's), else the directory name."""
        for doc in (
            self.manifest or {},
            (self.manifest or {}).get("config") or {},
            self.compare or {},
        ):
            value = doc.get("name") if isinstance(doc, dict) else None
            if isinstance(value, str) and value:
                return value
        return self.path.name if self.path.is_dir() else self.path.parent.name

    # ---- replicas
    def replicas(self) -> list[Replica]:
        """Replica directories in index order; an error when there are none."""
        if self.documents_only:
            raise ReprokitError(
                f"{self.path} is a bare document; replica files need the whole run directory"
            )
        root = self.path / REPLICAS
        if not root.is_dir():
            raise ReprokitError(f"{self.path} has no replicas/ directory")
        found = sorted(
            (p for p in root.iterdir() if p.is_dir() and p.name.isdigit()),
            key=lambda p: int(p.name),
        )
        if not found:
            raise ReprokitError(f"{root} holds no replica directories")
        return [Replica(index=int(p.name), path=p) for p in found]

    # ---- compare-activations arms
    def arm_entries(self) -> list[dict[str, Any]]:
        if self.compare is None:
            return []
        return self.compare["arms"]

    def arm_run(self, entry: dict[str, Any]) -> Run:
        """The train-ensemble run directory of one arm of a compare run."""
        name = entry["name"]
        if name not in self._arms:
            if self.documents_only:
                raise ReprokitError(
                    f"{self.path} is a bare compare.json; arm files need the whole run directory"
                )
            rel = entry.get("run_dir") or f"arms/{name}"
            arm_path = (self.path / rel).resolve()
            if not arm_path.is_dir():
                raise ReprokitError(f"arm {name!r} has no run directory at {self.path / rel}")
            self._arms[name] = load_run(arm_path, expect=TRAIN_ENSEMBLE)
        return self._arms[name]


def _check_compare(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    _require(doc, ("arms",), str(path))
    arms = doc["arms"]
    if not isinstance(arms, list) or not arms:
        raise ReprokitError(f"{path} lists no arms")
    seen: set[str] = set()
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict):
            raise ReprokitError(f"{path}: arm #{i} is not an object")
        check_summary(arm, f"{path} arm #{i}")
        name = arm.get("name") or arm.get("label") or arm.get("activation")
        if not isinstance(name, str) or not name:
            raise ReprokitError(f"{path}: arm #{i} has neither a 'name' nor a 'label'")
        if name in seen:
            raise ReprokitError(f"{path}: arm name {name!r} appears twice")
        seen.add(name)
        arm.setdefault("name", name)
        arm.setdefault("label", arm.get("activation") or name)
    return doc


def load_run(path: str | Path, expect: str | None = None) -> Run:
    """Load a run directory (or a summary.json / compare.json file) and detect its kind."""
    path = Path(path)
    if not path.exists():
        raise ReprokitError(f"run directory not found: {path}")
    run = _load_document(path) if path.is_file() else _load_directory(path)
    if expect is not None and run.kind != expect:
        raise ReprokitError(f"{path} is a {run.kind} run, expected a {expect} run")
    return run


def _load_document(path: Path) -> Run:
    doc = read_json(path)
    kind = doc.get("kind")
    if kind in ARM_STUDIES or (kind is None and "arms" in doc):
        return Run(
            path=path, kind=kind or COMPARE, compare=_check_compare(doc, path), documents_only=True
        )
    if kind is None and "pd" not in doc:
        raise ReprokitError(f"{path} is neither a reprokit summary.json nor a compare.json")
    return Run(
        path=path,
        kind=kind or TRAIN_ENSEMBLE,
        summary=check_summary(doc, str(path)),
        documents_only=True,
    )


def _load_directory(path: Path) -> Run:
    compare_path = next(
        (path / name for name in STUDY_DOCUMENTS if (path / name).exists()), path / "compare.json"
    )
    manifest_path = path / MANIFEST
    if compare_path.exists():
        doc = _check_compare(read_json(compare_path, compare_path.name), compare_path)
        manifest = read_json(manifest_path, "manifest.json") if manifest_path.exists() else None
        return Run(path=path, kind=doc.get("kind") or COMPARE, manifest=manifest, compare=doc)
    if not manifest_path.exists():
        if (path / SUMMARY).is_file():  # a stored baseline may keep only its summary.json
            run = _load_document(path / SUMMARY)
            run.path = path
            return run
        if (path / "arms").is_dir() or (path / "cells").is_dir():
            raise ReprokitError(
                f"{path} holds a study that has not finished (no compare.json or attribute.json "
                "yet); re-run its command to resume it"
            )
        raise ReprokitError(
            f"{path} is not a reprokit run directory (no manifest.json or compare.json)"
        )
    manifest = read_json(manifest_path, "manifest.json")
    kind = manifest.get("kind") or TRAIN_ENSEMBLE
    summary_path = path / SUMMARY
    if not summary_path.exists():
        raise ReprokitError(
            f"{path} has no summary.json; the run has not finished (re-run it to resume)"
        )
    summary = check_summary(read_json(summary_path, "summary.json"), str(summary_path))
    return Run(path=path, kind=kind, manifest=manifest, summary=summary)


# ------------------------------------------------------------------------------ prediction matrices
def prediction_columns(
    frame: pd.DataFrame, manifest: dict[str, Any] | None
) -> tuple[str, str | None]:
    """(prediction column, label column or None) of the first task of a predictions.parquet
    frame, as the run's manifest declares them (`reprokit.runschema`)."""
    cols = ReplicaColumns.resolve(manifest, frame.columns)
    return cols.predictions[0], (cols.labels[0] if cols.labels else None)


def align_to(reference_ids: np.ndarray | None, frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Reorder `frame` to the reference example_id order; refuse different example sets."""
    if reference_ids is None or "example_id" not in frame.columns:
        return frame
    ids = frame["example_id"].to_numpy()
    if len(ids) == len(reference_ids) and np.array_equal(ids, reference_ids):
        return frame
    if len(ids) != len(reference_ids):
        raise ReprokitError(
            f"{where} has {len(ids)} examples but replica 000 has {len(reference_ids)}"
        )
    indexed = frame.set_index("example_id")
    try:
        out = indexed.loc[reference_ids].reset_index()
    except KeyError:
        raise ReprokitError(f"{where} predicts different examples than the first replica") from None
    return out
