"""The summary document (docs/contracts.md): PD keys, CIs, accuracy, buckets, histogram."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reprokit.errors import ReprokitError
from reprokit.metrics.accuracy import accuracy_summary, check_labels
from reprokit.metrics.churn import DEFAULT_TOP_K, ChurnResult, topk_churn
from reprokit.metrics.pd import (
    DEFAULT_CHUNK,
    PD_KEYS,
    ProgressCallback,
    pd_by_bucket,
    per_example_histogram,
    prediction_difference,
)
from reprokit.metrics.stats import CI_METHOD, replica_bootstrap_ci

SCHEMA_VERSION = 1

#: The pairwise keys that get a bootstrap CI and per-pair values in the document.
CI_KEYS = ("rel", "abs")


def _as_matrix(predictions: Any) -> np.ndarray:
    """Accept a [M, N] array or a sequence of M 1-D arrays; refuse ragged or non-2-D input."""
    if isinstance(predictions, Sequence) and not isinstance(predictions, str | bytes):
        rows = [np.asarray(r) for r in predictions]
        if len(rows) < 2:
            raise ReprokitError(f"PD needs at least 2 replicas, got {len(rows)}")
        sizes = {r.shape for r in rows}
        if len(sizes) > 1:
            lengths = sorted({r.size for r in rows})
            raise ReprokitError(
                f"replicas have different numbers of examples ({', '.join(map(str, lengths))})"
            )
        predictions = np.stack(rows)
    arr = np.asarray(predictions)
    if arr.ndim == 3:
        raise ReprokitError("multi-task predictions [replicas, examples, tasks] are not supported")
    if arr.ndim != 2:
        raise ReprokitError(
            f"predictions must be a 2-D array [replicas, examples], got shape {arr.shape}"
        )
    if arr.shape[0] < 2:
        raise ReprokitError(f"PD needs at least 2 replicas, got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ReprokitError("predictions have no examples")
    return arr


def _churn_entry(
    churn: ChurnResult, replicas: int, ci_level: float, n_resamples: int, seed: int
) -> dict[str, Any]:
    """The summary's churn key: value, bootstrap CI over replicas, per-pair values, group counts."""
    lo, hi = math.nan, math.nan
    if churn.groups:
        lo, hi = replica_bootstrap_ci(
            churn.per_pair, replicas, level=ci_level, n_resamples=n_resamples, seed=seed
        )
    return {
        "k": churn.k,
        "value": churn.value,
        "ci": [lo, hi],
        "per_pair": [float(v) for v in churn.per_pair],
        "groups": churn.groups,
        "groups_skipped": churn.groups_skipped,
    }


def summarize(
    predictions: Any,
    labels: Any = None,
    *,
    flip_threshold: float = 0.5,
    ci_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    buckets: int = 10,
    bucket_method: str = "log",
    hist_bins: int = 20,
    kind: str | None = None,
    replica_names: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    groups: Any = None,
    top_k: int = DEFAULT_TOP_K,
    group_name: str | None = None,
) -> dict[str, Any]:
    """The summary document of docs/contracts.md (schema_version 1) for [M, N] predictions.

    ``labels`` [N] or None (then no auc/logloss/calibration keys). ``groups`` [N] (e.g. user ids)
    or None (then no churn key): top-k churn per group with ``top_k``, the groups' column named
    ``group_name`` in the document. ``kind`` ("pd",
    "train-ensemble") is placed right after schema_version when given; otherwise the caller adds it.
    ``replica_names`` only improves error messages. Undefined accuracy metrics (one class only) are
    NaN (null in JSON) with an `UndefinedMetricWarning`. Every value is a Python float/int/list, so
    the document serialises with `reprokit.jsonio.to_json`.

    Raises ReprokitError for fewer than 2 replicas, ragged replicas, NaN/Inf or predictions outside
    [0, 1], labels of the wrong length or outside [0, 1], and bad option values.
    """
    arr = _as_matrix(predictions)
    m, n = arr.shape
    if replica_names is not None and len(replica_names) != m:
        raise ReprokitError(f"got {len(replica_names)} replica names for {m} replicas")
    if not (math.isfinite(flip_threshold) and 0.0 < flip_threshold < 1.0):
        raise ReprokitError(f"flip threshold must be in (0, 1), got {flip_threshold}")
    if not (math.isfinite(ci_level) and 0.0 < ci_level < 1.0):
        raise ReprokitError(f"confidence level must be strictly between 0 and 1, got {ci_level}")
    if n_resamples < 1:
        raise ReprokitError(f"bootstrap resamples must be a positive number, got {n_resamples}")
    y = None if labels is None else check_labels(labels, n)
    churn = None if groups is None else topk_churn(arr, groups, top_k)

    res = prediction_difference(
        arr,
        flip_threshold,
        chunk_size=chunk_size,
        threads=threads,
        progress=progress,
        replica_names=replica_names,
    )

    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    if kind is not None:
        doc["kind"] = kind
    doc["replicas"] = m
    doc["examples"] = n
    doc["pd"] = {key: float(res.values[key]) for key in PD_KEYS}
    ci: dict[str, Any] = {}
    for key in CI_KEYS:
        lo, hi = replica_bootstrap_ci(
            res.per_pair[key], m, level=ci_level, n_resamples=n_resamples, seed=seed
        )
        ci[key] = [lo, hi]
    ci["level"] = float(ci_level)
    ci["method"] = CI_METHOD
    doc["pd_ci"] = ci
    doc["pd_per_pair"] = {key: [float(v) for v in res.per_pair[key]] for key in ("abs", "rel")}
    doc["flip_threshold"] = float(flip_threshold)
    if y is not None:
        # The ensemble is the plain mean over replicas: the centred p̄ of the PD kernels differs
        # from it in the last bits, which breaks exact ties and so moves the AUC.
        acc = accuracy_summary(y, arr)
        for name in ("auc", "logloss", "calibration"):
            entry = acc[name]
            doc[name] = {
                "mean": float(entry["mean"]),
                "std": float(entry["std"]),
                "per_replica": [float(v) for v in entry["per_replica"]],
                "ensemble": float(entry["ensemble"]),
            }
    if churn is not None:
        doc["churn"] = _churn_entry(churn, m, ci_level, n_resamples, seed)
        if group_name is not None:
            doc["churn"]["by"] = group_name
    doc["pd_by_bucket"] = pd_by_bucket(
        res.mean_prediction, res.per_example_abs, buckets=buckets, method=bucket_method
    )
    doc["pd_per_example_hist"] = per_example_histogram(res.per_example_abs, bins=hist_bins)
    return doc
