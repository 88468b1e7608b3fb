"""Accuracy metrics of one prediction vector: AUC, log-loss, calibration.

Predictions are clipped to [EPS, 1 - EPS] like every PD key. A metric that is undefined for the
given labels (one class only or soft labels for AUC, no positive label for calibration) returns NaN
and emits an `UndefinedMetricWarning` whose message says why; it never raises for that.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy.stats import rankdata

from reprokit.errors import ReprokitError, ReprokitWarning
from reprokit.metrics.pd import EPS
from reprokit.metrics.stats import mean_std


class UndefinedMetricWarning(ReprokitWarning):
    """A metric is NaN for these labels; the message is one sentence saying why."""


def check_labels(labels: Any, examples: int | None = None) -> np.ndarray:
    """Labels as a float64 [N] array; ReprokitError unless finite and in [0, 1]."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ReprokitError(f"labels must be a 1-D array, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise ReprokitError(f"labels must be numeric, got dtype {y.dtype}")
    y = y.astype(np.float64)
    if examples is not None and y.size != examples:
        raise ReprokitError(f"got {y.size} labels for {examples} examples")
    bad = int(np.count_nonzero(~np.isfinite(y)))
    if bad:
        raise ReprokitError(f"labels contain {bad} NaN or infinite values")
    out = int(np.count_nonzero((y < 0.0) | (y > 1.0)))
    if out:
        raise ReprokitError(f"labels contain {out} values outside [0, 1]")
    return y


def _prepare(labels: Any, predictions: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions, dtype=np.float64)
    if p.ndim != 1:
        raise ReprokitError(f"predictions must be a 1-D array here, got shape {p.shape}")
    y = check_labels(labels, p.size)
    if p.size == 0:
        raise ReprokitError("cannot compute a metric on zero examples")
    bad = int(np.count_nonzero(~np.isfinite(p) | (p < 0.0) | (p > 1.0)))
    if bad:
        raise ReprokitError(f"{bad} predictions are NaN or outside [0, 1]")
    return y, np.clip(p, EPS, 1.0 - EPS)


def _undefined(reason: str) -> float:
    warnings.warn(UndefinedMetricWarning(reason), stacklevel=3)
    return math.nan


def auc(labels: Any, predictions: Any) -> float:
    """ROC AUC with ties counted as one half (Mann-Whitney U from average ranks).

    AUC = (sum of the average ranks of positives - P(P+1)/2) / (P * Q) for P positives and Q
    negatives. Needs binary labels (0/1) with both classes present; NaN with a warning otherwise.
    """
    y, p = _prepare(labels, predictions)
    pos = y == 1.0
    if not np.all(pos | (y == 0.0)):
        return _undefined("AUC is undefined: labels are not binary (0/1)")
    n_pos = int(np.count_nonzero(pos))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return _undefined("AUC is undefined: the labels contain only one class")
    ranks = rankdata(p, method="average")
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (float(n_pos) * float(n_neg))


def log_loss(labels: Any, predictions: Any) -> float:
    """Mean binary cross-entropy -(y log p + (1 - y) log(1 - p)); soft labels in [0, 1] allowed."""
    y, p = _prepare(labels, predictions)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def calibration(labels: Any, predictions: Any) -> float:
    """Mean prediction / mean label (1.0 = calibrated on average); NaN if the mean label is 0."""
    y, p = _prepare(labels, predictions)
    mean_label = float(y.mean())
    if mean_label == 0.0:
        return _undefined("calibration is undefined: every label is 0 (mean label 0)")
    return float(p.mean()) / mean_label


METRICS = {"auc": auc, "logloss": log_loss, "calibration": calibration}


def accuracy_summary(
    labels: Any, predictions: np.ndarray, ensemble: np.ndarray | None = None
) -> dict[str, dict[str, Any]]:
    """Per-replica metrics of a [M, N] matrix plus their mean/std (ddof=1) and the ensemble's.

    Returns ``{"auc"|"logloss"|"calibration": {"mean", "std", "per_replica": [M], "ensemble"}}``.
    ``ensemble`` is the mean prediction p̄ (computed from the clipped rows when not given). A warning
    for an undefined metric is emitted once per metric, not once per replica.
    """
    preds = np.asarray(predictions)
    if preds.ndim != 2:
        raise ReprokitError(f"predictions must be [replicas, examples], got shape {preds.shape}")
    y = check_labels(labels, preds.shape[1])
    if ensemble is None:
        ensemble = np.mean(np.clip(preds.astype(np.float64), EPS, 1.0 - EPS), axis=0)
    out: dict[str, dict[str, Any]] = {}
    for name, fn in METRICS.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UndefinedMetricWarning)
            per = [fn(y, preds[m]) for m in range(preds.shape[0])]
            ens = fn(y, ensemble)
        seen: set[tuple[type, str]] = set()
        for w in caught:
            key = (w.category, str(w.message))
            if key not in seen:
                seen.add(key)
                warnings.warn(w.message, stacklevel=2)
        mean, std = mean_std(per)
        out[name] = {"mean": mean, "std": std, "per_replica": per, "ensemble": ens}
    return out


def replica_accuracy(labels: Any, predictions: Any) -> dict[str, float]:
    """``{"auc", "logloss", "calibration"}`` of one replica's [N] predictions (NaN if undefined)."""
    return {name: float(fn(labels, predictions)) for name, fn in METRICS.items()}
