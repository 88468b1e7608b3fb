import json

import numpy as np
import pandas as pd
import pytest

from reprokit.errors import ReprokitError
from reprokit.store import RunStore, atomic_write_json


def _manifest(replicas=2, lr=0.05):
    return {
        "schema_version": 1,
        "kind": "train-ensemble",
        "config": {"replicas": replicas, "optim": {"lr": lr}},
        "replica_seeds": {f"{r:03d}": {"init": r} for r in range(replicas)},
        "data": {"fingerprint": "abc"},
        "created": "now",
    }


def _write(store, r, ids=(1, 2, 3)):
    preds = pd.DataFrame(
        {"example_id": list(ids), "label": [0.0, 1.0, 0.0], "prediction": [0.1, 0.7, 0.2]}
    )
    log = pd.DataFrame({"step": [0], "epoch": [0], "loss": [0.5], "grad_norm": [1.0]})
    store.write_replica(r, preds, {"replica": r, "diverged": False}, log)


def test_prepare_resume_and_refuse(tmp_path):
    store = RunStore(tmp_path / "run")
    assert store.prepare(_manifest()) == []
    _write(store, 0)
    # Same config (the informational "created" may differ): replica 0 is kept.
    again = _manifest()
    again["created"] = "later"
    assert store.prepare(again) == [0]
    with pytest.raises(ReprokitError, match=r"another configuration \(config.optim.lr is 0.05"):
        store.prepare(_manifest(lr=0.1))
    # --force wipes the old replicas.
    assert store.prepare(_manifest(lr=0.1), force=True) == []
    assert json.loads(store.manifest_path.read_text())["config"]["optim"]["lr"] == 0.1


def test_refuses_foreign_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ReprokitError, match="not a reprokit run directory"):
        RunStore(tmp_path).prepare(_manifest())
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_replica_without_metrics_is_unfinished(tmp_path):
    store = RunStore(tmp_path)
    store.prepare(_manifest())
    _write(store, 1)
    (store.replica_dir(1) / "metrics.json").unlink()  # killed before its last file
    assert not store.is_finished(1)
    assert store.prepare(_manifest()) == []


def test_load_predictions_refuses_other_examples(tmp_path):
    store = RunStore(tmp_path)
    store.prepare(_manifest())
    _write(store, 0)
    _write(store, 1, ids=(1, 2, 4))
    with pytest.raises(ReprokitError, match="other examples"):
        store.load_predictions([0, 1])
    ids, labels, preds = store.load_predictions([0])
    assert ids.tolist() == [1, 2, 3] and preds.shape == (1, 3, 1)
    assert labels.columns.tolist() == ["label"]


def test_atomic_write_leaves_no_temp_and_nan_is_null(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": float("nan"), "b": np.float64(2.5)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": 2.5}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_corrupt_manifest_is_clear(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ReprokitError, match="not valid JSON"):
        RunStore(tmp_path).prepare(_manifest())
