"""The summary document of docs/contracts.md, produced by `summarize`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from reprokit.errors import ReprokitError
from reprokit.jsonio import to_json
from reprokit.metrics.summary import summarize

TOP_KEYS = [
    "schema_version",
    "replicas",
    "examples",
    "pd",
    "pd_ci",
    "pd_per_pair",
    "flip_threshold",
    "auc",
    "logloss",
    "calibration",
    "pd_by_bucket",
    "pd_per_example_hist",
]


def make(m: int = 4, n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.random(n) * 0.6
    y = (rng.random(n) < base).astype(float)
    preds = np.clip(base + rng.normal(0, 0.03, size=(m, n)), 0.001, 0.999)
    return preds, y


def test_document_has_exactly_the_contract_keys():
    preds, y = make()
    doc = summarize(preds, y, n_resamples=500)
    assert list(doc) == TOP_KEYS
    assert doc["schema_version"] == 1 and doc["replicas"] == 4 and doc["examples"] == 500
    assert list(doc["pd"]) == ["abs", "rel", "abs_mean", "rel_mean", "l2", "rel_std", "flip"]
    assert set(doc["pd_ci"]) == {"rel", "abs", "level", "method"}
    assert doc["pd_ci"]["method"] == "bootstrap over replicas" and doc["pd_ci"]["level"] == 0.95
    for key in ("abs", "rel"):
        assert len(doc["pd_per_pair"][key]) == 6
        assert doc["pd"][key] == pytest.approx(np.mean(doc["pd_per_pair"][key]))
        lo, hi = doc["pd_ci"][key]
        assert lo <= doc["pd"][key] <= hi
    for name in ("auc", "logloss", "calibration"):
        assert set(doc[name]) == {"mean", "std", "per_replica", "ensemble"}
        assert len(doc[name]["per_replica"]) == 4
    assert all(set(b) == {"lo", "hi", "count", "abs_mean", "rel_mean"} for b in doc["pd_by_bucket"])
    assert sum(b["count"] for b in doc["pd_by_bucket"]) == 500
    assert sum(doc["pd_per_example_hist"]["counts"]) == 500
    # independent checks of a few numbers
    abs01 = np.mean(np.abs(preds[0] - preds[1]))
    assert doc["pd_per_pair"]["abs"][0] == pytest.approx(abs01, rel=1e-12)
    assert doc["auc"]["per_replica"][2] == pytest.approx(roc_auc_score(y, preds[2]), abs=1e-12)
    assert doc["logloss"]["ensemble"] == pytest.approx(sk_log_loss(y, preds.mean(0)), rel=1e-12)
    assert doc["calibration"]["mean"] == pytest.approx(np.mean(preds.mean(1) / y.mean()))
    # plain Python types: serialises and round-trips
    assert json.loads(to_json(doc))["pd"] == doc["pd"]


def test_without_labels_and_with_kind():
    preds, _ = make(m=3)
    doc = summarize(preds, None, kind="pd", flip_threshold=0.2, n_resamples=200)
    assert list(doc)[:2] == ["schema_version", "kind"] and doc["kind"] == "pd"
    assert "auc" not in doc and "logloss" not in doc and "calibration" not in doc
    assert doc["flip_threshold"] == 0.2


def test_identical_replicas_all_zero():
    row = np.random.default_rng(3).random(300)
    row[:3] = [0.1, 0.7, 0.2]
    doc = summarize(np.tile(row, (5, 1)), (row > 0.5).astype(float))
    assert all(v == 0.0 for v in doc["pd"].values())
    assert doc["pd_ci"]["abs"] == [0.0, 0.0] and doc["pd_ci"]["rel"] == [0.0, 0.0]
    assert all(v == 0.0 for v in doc["pd_per_pair"]["abs"] + doc["pd_per_pair"]["rel"])
    filled = [b for b in doc["pd_by_bucket"] if b["count"]]
    assert filled and all(b["abs_mean"] == 0.0 and b["rel_mean"] == 0.0 for b in filled)
    assert doc["auc"]["std"] == 0.0


def test_two_replicas_ci_is_null_in_json():
    preds, y = make(m=2)
    doc = summarize(preds, y)
    assert all(math.isnan(v) for v in doc["pd_ci"]["abs"])
    assert json.loads(to_json(doc))["pd_ci"]["abs"] == [None, None]
    assert doc["pd"]["abs_mean"] == pytest.approx(doc["pd"]["abs"] / 2)


def test_one_class_labels_give_null_auc():
    preds, _ = make(m=3)
    with pytest.warns(UserWarning, match="only one class"):
        doc = summarize(preds, np.ones(preds.shape[1]))
    assert math.isnan(doc["auc"]["mean"]) and json.loads(to_json(doc))["auc"]["mean"] is None
    assert math.isfinite(doc["logloss"]["mean"])


def test_list_of_rows_accepted_and_float32():
    preds, y = make(m=3)
    a = summarize([preds[0], preds[1], preds[2]], y, n_resamples=100)
    b = summarize(preds.astype(np.float32), y, n_resamples=100)
    c = summarize(preds, y, n_resamples=100)
    assert a["pd"] == c["pd"]
    for key in b["pd"]:
        assert b["pd"][key] == pytest.approx(c["pd"][key], rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"predictions": np.full((1, 5), 0.5)}, "at least 2 replicas"),
        ({"predictions": [np.full(5, 0.5), np.full(4, 0.5)]}, "different numbers of examples"),
        ({"predictions": np.full((2, 0), 0.5)}, "no examples"),
        ({"predictions": np.full((2, 3, 2), 0.5)}, "multi-task"),
        ({"predictions": np.array([[0.1, np.nan], [0.2, 0.2]])}, "replica 0 has 1 NaN"),
        ({"predictions": np.array([[0.1, 0.2], [0.2, 2.0]])}, "replica 1 has 1 predictions"),
        ({"labels": np.zeros(3)}, "3 labels for 4 examples"),
        ({"labels": np.array([0, 1, 3, 0])}, "outside"),
        ({"flip_threshold": 1.0}, "threshold"),
        ({"ci_level": 0.0}, "confidence level"),
        ({"n_resamples": 0}, "resamples"),
        ({"replica_names": ["a"]}, "replica names"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = {"predictions": np.full((2, 4), 0.5), "labels": None}
    args.update(kwargs)
    with pytest.raises(ReprokitError, match=match):
        summarize(args.pop("predictions"), args.pop("labels"), **args)


def test_replica_names_in_errors():
    preds = np.full((2, 4), 0.5)
    preds[1, 0] = -1
    with pytest.raises(ReprokitError, match="replica 'seed7' has 1 predictions outside"):
        summarize(preds, replica_names=["seed3", "seed7"])
