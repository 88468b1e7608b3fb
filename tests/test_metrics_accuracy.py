"""AUC, log-loss and calibration against sklearn and brute-force loops."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from reprokit.errors import ReprokitError
from reprokit.metrics.accuracy import (
    UndefinedMetricWarning,
    accuracy_summary,
    auc,
    calibration,
    log_loss,
    replica_accuracy,
)


def brute_auc(y, p) -> float:
    pos = [pi for yi, pi in zip(y, p, strict=True) if yi == 1]
    neg = [pi for yi, pi in zip(y, p, strict=True) if yi == 0]
    wins = 0.0
    for a in pos:
        for b in neg:
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("decimals", [1, 2, 6])
def test_auc_with_ties_matches_sklearn_and_pair_count(decimals):
    rng = np.random.default_rng(decimals)
    y = (rng.random(600) < 0.3).astype(float)
    p = np.round(np.clip(0.3 * y + rng.random(600) * 0.7, 0, 1), decimals)  # many ties at 1 dp
    value = auc(y, p)
    assert value == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert value == pytest.approx(brute_auc(y, p), abs=1e-12)


def test_auc_all_tied_is_half():
    y = np.array([0, 1, 0, 1, 1.0])
    assert auc(y, np.full(5, 0.4)) == 0.5


def test_log_loss_matches_sklearn_and_loop():
    rng = np.random.default_rng(2)
    y = (rng.random(500) < 0.4).astype(float)
    p = 0.01 + 0.98 * rng.random(500)
    value = log_loss(y, p)
    assert value == pytest.approx(sk_log_loss(y, p), rel=1e-12)
    loop = -sum(
        yi * math.log(pi) + (1 - yi) * math.log(1 - pi) for yi, pi in zip(y, p, strict=True)
    ) / len(y)
    assert value == pytest.approx(loop, rel=1e-12)


def test_log_loss_clips_and_accepts_soft_labels():
    assert log_loss(np.array([1.0]), np.array([0.0])) == pytest.approx(-math.log(1e-7))
    y = np.array([0.2, 0.7, 1.0])
    p = np.array([0.3, 0.6, 0.9])
    terms = [yi * math.log(pi) + (1 - yi) * math.log(1 - pi) for yi, pi in zip(y, p, strict=True)]
    expected = -sum(terms) / 3
    assert log_loss(y, p) == pytest.approx(expected, rel=1e-12)


def test_calibration():
    y = np.array([0, 1, 0, 0, 1.0])
    p = np.array([0.1, 0.5, 0.2, 0.3, 0.4])
    assert calibration(y, p) == pytest.approx((1.5 / 5) / (2 / 5), rel=1e-12)


def test_undefined_metrics_are_nan_with_reason():
    y = np.zeros(4)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    with pytest.warns(UndefinedMetricWarning, match="only one class"):
        assert math.isnan(auc(y, p))
    with pytest.warns(UndefinedMetricWarning, match="every label is 0"):
        assert math.isnan(calibration(y, p))
    with pytest.warns(UndefinedMetricWarning, match="not binary"):
        assert math.isnan(auc(np.array([0.5, 1, 0, 0]), p))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isfinite(log_loss(y, p))  # defined for one class


@pytest.mark.parametrize(
    ("labels", "preds", "match"),
    [
        (np.array([0, 1, 2.0]), np.array([0.1, 0.2, 0.3]), "outside"),
        (np.array([0, np.nan, 1]), np.array([0.1, 0.2, 0.3]), "NaN"),
        (np.array([0, 1]), np.array([0.1, 0.2, 0.3]), "2 labels for 3"),
        (np.array([0, 1, 1]), np.array([0.1, 1.2, 0.3]), "outside"),
    ],
)
def test_bad_inputs_raise(labels, preds, match):
    with pytest.raises(ReprokitError, match=match):
        auc(labels, preds)


def test_accuracy_summary_per_replica_and_ensemble():
    rng = np.random.default_rng(4)
    y = (rng.random(300) < 0.5).astype(float)
    preds = np.clip(0.2 * y + rng.random((4, 300)) * 0.8, 0.01, 0.99)
    out = accuracy_summary(y, preds)
    per = [roc_auc_score(y, preds[m]) for m in range(4)]
    np.testing.assert_allclose(out["auc"]["per_replica"], per, atol=1e-12)
    assert out["auc"]["mean"] == pytest.approx(np.mean(per), abs=1e-12)
    assert out["auc"]["std"] == pytest.approx(np.std(per, ddof=1), abs=1e-12)
    assert out["auc"]["ensemble"] == pytest.approx(roc_auc_score(y, preds.mean(axis=0)), abs=1e-12)
    ll = [sk_log_loss(y, preds[m]) for m in range(4)]
    np.testing.assert_allclose(out["logloss"]["per_replica"], ll, rtol=1e-12)
    assert replica_accuracy(y, preds[1]) == {
        "auc": pytest.approx(per[1]),
        "logloss": pytest.approx(ll[1]),
        "calibration": pytest.approx(preds[1].mean() / y.mean()),
    }


def test_accuracy_summary_warns_once_per_metric():
    with pytest.warns(UndefinedMetricWarning) as record:
        out = accuracy_summary(np.ones(3), np.full((5, 3), 0.5))
    messages = [str(w.message) for w in record if w.category is UndefinedMetricWarning]
    assert messages == ["AUC is undefined: the labels contain only one class"]
    assert math.isnan(out["auc"]["mean"]) and math.isnan(out["auc"]["ensemble"])
    assert out["calibration"]["mean"] == 0.5
