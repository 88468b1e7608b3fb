"""The run-directory schema in one place: file names, run kinds and the roles of prediction columns.

Every reader and writer of run directories (the run store, `rundir`, the report, stability, resume)
asks this module which column of a replica's ``predictions.parquet`` holds a label and which a
prediction. The answer comes from the manifest (``data.labels``, written at training time), never
from a column's name: a user's label is called ``click`` or ``income`` as often as ``label``.
See docs/contracts.md for the layout itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reprokit.errors import ReprokitError

# ---- file names ---------------------------------------------------------------------------------
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
REPLICAS = "replicas"
LOCK = ".reprokit.lock"
PREDICTIONS = "predictions.parquet"
METRICS = "metrics.json"
TRAIN_LOG = "train_log.parquet"
#: The replica files in the order they are written; metrics.json last marks a replica finished.
REPLICA_FILES = (PREDICTIONS, TRAIN_LOG, METRICS)

# ---- run kinds ----------------------------------------------------------------------------------
TRAIN_ENSEMBLE = "train-ensemble"
COMPARE = "compare-activations"
COMPARE_CONFIGS = "compare"
ATTRIBUTE = "attribute"
STABILITY = "stability"
PD = "pd"
#: `reprokit online`: manifest.json and online.json, no summary.json and no replicas/ (the stream's
#: results are per sync interval and shard; see reprokit.runners.online).
ONLINE = "online"
ONLINE_DOCUMENT = "online.json"
#: `reprokit autodim`: a per-field embedding-width search and one paired arm per method
#: (autodim.json: a compare-like document plus the search; see reprokit.runners.autodim).
AUTODIM = "autodim"
#: Studies whose document is a list of paired arms (compare.json / attribute.json): report,
#: gate and rundir treat them alike.
ARM_STUDIES = (COMPARE, COMPARE_CONFIGS, ATTRIBUTE, AUTODIM)
#: The documents of arm studies, in the order a run directory is searched for them.
STUDY_DOCUMENTS = ("compare.json", "attribute.json", "autodim.json")

# ---- columns ------------------------------------------------------------------------------------
EXAMPLE_ID = "example_id"
PREDICTION = "prediction"


def prediction_column_names(label_names: Sequence[str]) -> list[str]:
    """`prediction` for one task, `prediction_<label>` for each task of a multitask model."""
    if len(label_names) == 1:
        return [PREDICTION]
    return [f"{PREDICTION}_{name}" for name in label_names]


def check_label_names(label_names: Sequence[str]) -> None:
    """Refuse label names that would collide with the example id or a prediction column."""
    taken = {EXAMPLE_ID, *prediction_column_names(label_names)}
    clash = [name for name in label_names if name in taken]
    if clash:
        raise ReprokitError(
            f"label column {clash[0]!r} collides with a column reprokit writes next to it in "
            "predictions.parquet; rename it (e.g. with reprokit data import --label)"
        )


@dataclass(frozen=True)
class ReplicaColumns:
    """The label and prediction columns of one run's predictions files, task by task."""

    labels: tuple[str, ...]
    predictions: tuple[str, ...]

    @classmethod
    def for_labels(cls, label_names: Sequence[str]) -> ReplicaColumns:
        return cls(tuple(label_names), tuple(prediction_column_names(label_names)))

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any] | None) -> ReplicaColumns | None:
        """The columns a manifest declares (``data.labels``); None for manifests without them."""
        data = (manifest or {}).get("data")
        labels = data.get("labels") if isinstance(data, dict) else None
        if isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels):
            return cls.for_labels(labels)
        return None

    @classmethod
    def resolve(cls, manifest: dict[str, Any] | None, columns: Sequence[str]) -> ReplicaColumns:
        """The manifest's columns, checked against a file's `columns`.

        Run directories written before the manifest named its labels hold the columns
        ``example_id``, the labels and ``prediction[_<label>]``: there every other column is a label.
        """
        declared = cls.from_manifest(manifest)
        present = [str(c) for c in columns]
        if declared is None:
            preds = tuple(c for c in present if c == PREDICTION or c.startswith(f"{PREDICTION}_"))
            labels = tuple(c for c in present if c != EXAMPLE_ID and c not in preds)
            if not preds:
                raise ReprokitError("predictions.parquet has no 'prediction' column")
            return cls(labels, preds)
        missing = [c for c in (*declared.labels, *declared.predictions) if c not in present]
        if missing:
            raise ReprokitError(
                f"predictions.parquet lacks the column(s) {', '.join(map(repr, missing))} that "
                "the run's manifest declares"
            )
        return declared
