"""The run directory: manifest, per-replica files, summary; atomic writes; resume and refusal.

Layout (a contract, see DESIGN.md):
    RUN_DIR/manifest.json
    RUN_DIR/replicas/NNN/{predictions.parquet, metrics.json, train_log.parquet}
    RUN_DIR/summary.json
A replica counts as finished when its metrics.json exists: it is written last, after the other files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reprokit.data.layout import atomic_write_table
from reprokit.errors import ReprokitError
from reprokit.jsonio import to_json

#: The newest run-directory schema this version reads (and the one it writes).
SUPPORTED_SCHEMA = 1

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
REPLICAS = "replicas"

#: Manifest keys that must agree for a run directory to be resumed (the rest is informational).
RESUME_KEYS = ("kind", "config", "replica_seeds", "data")


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: str | os.PathLike, doc: Any) -> None:
    atomic_write_bytes(path, (to_json(doc) + "\n").encode())


def atomic_write_frame(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    atomic_write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def read_json(path: str | os.PathLike, what: str | None = None) -> dict[str, Any]:
    """Read a JSON object of a run directory; a missing, unreadable, corrupt or too-new file is a
    one-sentence error (every reader of run directories, report and gate included, comes here)."""
    path = Path(path)
    what = what or path.name
    if not path.is_file():
        raise ReprokitError(f"{what} not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReprokitError(f"{what} is corrupt ({path} is not valid JSON: {exc})") from None
    except OSError as exc:
        raise ReprokitError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not isinstance(doc, dict):
        raise ReprokitError(f"{what} is corrupt ({path}: expected a JSON object)")
    version = doc.get("schema_version")
    if version is not None and (not isinstance(version, int) or version > SUPPORTED_SCHEMA):
        raise ReprokitError(
            f"{path} has schema_version {version!r}; this reprokit reads up to {SUPPORTED_SCHEMA}, "
            "upgrade reprokit"
        )
    return doc


def comparable_manifest(doc: dict[str, Any]) -> dict[str, Any]:
    # Round-trip through JSON so tuples/lists and numpy scalars compare the way they are stored.
    return json.loads(to_json({k: doc.get(k) for k in RESUME_KEYS}))


def first_difference(old: Any, new: Any, where: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return first_difference(
                    old.get(key), new.get(key), f"{where}.{key}" if where else key
                )
    return f"{where} is {old!r} there but {new!r} now"


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # --- layout -------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    def replica_dir(self, replica: int) -> Path:
        return self.path / REPLICAS / f"{replica:03d}"

    def is_finished(self, replica: int) -> bool:
        d = self.replica_dir(replica)
        return (d / "metrics.json").exists() and (d / "predictions.parquet").exists()

    # --- manifest and resume ------------------------------------------------------------------
    def prepare(self, manifest: dict[str, Any], force: bool = False) -> list[int]:
        """Create or reopen the run directory; return the replicas already finished.

        A directory whose manifest disagrees with `manifest` is refused unless `force`, in which case
        its old replicas and summary are removed first.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ReprokitError(f"{self.path} exists and is not a directory")
        if self.manifest_path.exists():
            old = read_json(self.manifest_path, "manifest")
            if comparable_manifest(old) != comparable_manifest(manifest):
                if not force:
                    diff = first_difference(comparable_manifest(old), comparable_manifest(manifest))
                    raise ReprokitError(
                        f"{self.path} holds a run of another configuration ({diff}); "
                        "choose another --out or pass --force to overwrite it"
                    )
                self._clear()
        elif self.path.exists() and any(self.path.iterdir()):
            if not force:
                raise ReprokitError(
                    f"{self.path} exists, is not empty and is not a reprokit run directory; "
                    "choose another --out or pass --force"
                )
            self._clear()
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.manifest_path.exists():
            atomic_write_json(self.manifest_path, manifest)
        n = int(manifest["config"]["replicas"])
        return [r for r in range(n) if self.is_finished(r)]

    def _clear(self) -> None:
        for child in (self.path / REPLICAS, self.summary_path, self.manifest_path):
            if child.is_dir():
                shutil.rmtree(child)
            elif child.exists():
                child.unlink()

    def manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_path, "manifest")

    # --- replicas -----------------------------------------------------------------------------
    def write_replica(
        self,
        replica: int,
        predictions: pd.DataFrame,
        metrics: dict[str, Any],
        train_log: pd.DataFrame,
    ) -> None:
        d = self.replica_dir(replica)
        atomic_write_frame(d / "predictions.parquet", predictions)
        atomic_write_frame(d / "train_log.parquet", train_log)
        atomic_write_json(d / "metrics.json", metrics)  # last: marks the replica finished

    def replica_metrics(self, replica: int) -> dict[str, Any]:
        return read_json(self.replica_dir(replica) / "metrics.json", "replica metrics")

    def load_predictions(
        self, replicas: list[int] | None = None
    ) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
        """(example ids [N], labels frame [N, T], predictions [M, N, T] float64) of finished replicas.

        Refuses replicas whose example ids differ: PD is only defined on identical evaluation sets.
        """
        if replicas is None:
            replicas = [r for r in range(int(self.manifest()["config"]["replicas"]))]
        ids: np.ndarray | None = None
        labels: pd.DataFrame | None = None
        preds = []
        for r in replicas:
            path = self.replica_dir(r) / "predictions.parquet"
            try:
                frame = pq.read_table(path).to_pandas()
            except (OSError, pa.ArrowInvalid) as exc:
                raise ReprokitError(f"cannot read {path} ({exc.__class__.__name__})") from None
            pcols = [c for c in frame.columns if c.startswith("prediction")]
            if ids is None:
                ids = frame["example_id"].to_numpy()
                labels = frame[[c for c in frame.columns if c.startswith("label")]]
            elif not np.array_equal(ids, frame["example_id"].to_numpy()):
                raise ReprokitError(f"replica {r} was evaluated on other examples than replica 0")
            preds.append(frame[pcols].to_numpy(dtype=np.float64))
        if ids is None or labels is None:
            raise ReprokitError(f"{self.path} has no finished replicas")
        return ids, labels, np.stack(preds)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)

    def summary(self) -> dict[str, Any]:
        return read_json(self.summary_path, "summary")
