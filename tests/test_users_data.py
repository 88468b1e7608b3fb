"""A user's own data through every command: labels not called `label`, text labels, foreign CSVs.

Each dataset is written by pandas the way another tool would write it; nothing here was made by
reprokit. The pipeline is the README's: data import → train-ensemble / compare-activations /
stability → report → gate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import log_loss, roc_auc_score
from typer.testing import CliRunner

from reprokit.cli import app

runner = CliRunner()
SMALL = ["--epochs", "1", "--hidden", "8", "--batch-size", "128"]


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _clicks_csv(path: Path, n: int = 1500, text_label: bool = False) -> Path:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "user": [f"u{v}" for v in rng.integers(0, 120, n)],  # ids as strings
            "ad_id": rng.integers(10**15, 10**15 + 400, n),  # 64-bit integer ids
            "price": rng.random(n).round(4),
        }
    )
    p = 1 / (1 + np.exp(-(3 * frame["price"] - 2 + 0.5 * (frame["ad_id"] % 3 == 0))))
    clicked = rng.random(n) < p
    if text_label:
        frame["income"] = np.where(clicked, " >50K", " <=50K")  # as in UCI adult's CSV
    else:
        frame["clicked"] = clicked.astype(int)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module", params=["clicked", "income"])
def user_dataset(request, tmp_path_factory) -> tuple[Path, str]:
    """(imported parquet, label name) for a 0/1 `clicked` label and a text `income` label."""
    root = tmp_path_factory.mktemp(request.param)
    text = request.param == "income"
    csv = _clicks_csv(root / "log.csv", text_label=text)
    extra = ["--positive", ">50K"] if text else []
    code, _, err = _invoke(
        "data", "import", str(csv), "--label", request.param, *extra, "--out", str(root / "d.pq")
    )
    assert code == 0, err
    return root / "d.pq", request.param


def test_train_ensemble_summary_matches_sklearn_on_the_users_label(user_dataset, tmp_path):
    data, label = user_dataset
    run = tmp_path / "run"
    code, out, err = _invoke(
        "train-ensemble",
        "--data",
        str(data),
        "--replicas",
        "3",
        *SMALL,
        "--out",
        str(run),
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert json.loads((run / "summary.json").read_text())["replicas"] == 3
    frames = [
        pq.read_table(p).to_pandas() for p in sorted(run.glob("replicas/*/predictions.parquet"))
    ]
    assert all(label in f.columns and "prediction" in f.columns for f in frames)
    y = frames[0][label].to_numpy()
    assert set(np.unique(y)) == {0.0, 1.0}
    preds = np.stack([f["prediction"].to_numpy() for f in frames])
    assert doc["auc"]["per_replica"] == pytest.approx(
        [roc_auc_score(y, p) for p in preds], abs=1e-12
    )
    assert doc["auc"]["ensemble"] == pytest.approx(roc_auc_score(y, preds.mean(axis=0)), abs=1e-12)
    assert doc["logloss"]["ensemble"] == pytest.approx(log_loss(y, preds.mean(axis=0)), abs=1e-9)
    # provenance: a baseline can be checked against this summary
    assert doc["data"]["labels"] == [label] and len(doc["data"]["fingerprint"]) == 16
    assert doc["config"]["data"]["path"] == str(data) and doc["reprokit_version"]


def test_compare_stability_report_and_gate_on_the_users_label(user_dataset, tmp_path):
    data, label = user_dataset
    cmp_dir, stab_dir = tmp_path / "cmp", tmp_path / "stab"
    code, _, err = _invoke(
        "compare-activations", "--data", str(data), "--arms", "relu;smelu:beta=1",
        "--replicas", "3", *SMALL, "--out", str(cmp_dir),
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((cmp_dir / "compare.json").read_text())
    assert [a["activation"] for a in doc["arms"]] == ["relu", "smelu:beta=1"]
    assert all(0.5 < a["auc"]["mean"] < 1 for a in doc["arms"])
    code, _, err = _invoke(
        "stability", "--data", str(data), "--optimizers", "adagrad,clippy",
        "--lr-multipliers", "1", "--replicas", "2", *SMALL, "--out", str(stab_dir),
    )  # fmt: skip
    assert code == 0, err
    cells = json.loads((stab_dir / "stability.json").read_text())["cells"]
    assert len(cells) == 2 and all(np.isfinite(c["auc"]["mean"]) for c in cells)
    for run in (cmp_dir, stab_dir):
        code, _, err = _invoke("report", str(run))
        assert code == 0, err
        html = (run / "report.html").read_text()
        assert len(html) > 10_000 and f"label column(s)</td><td>{label}<" in html
        assert json.loads((run / "report.json").read_text())["schema_version"] == 1
    code, out, err = _invoke(
        "gate", str(cmp_dir), "--arm", "smelu:beta=1", "--max-pd", "10", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["verdict"] == "pass"


@pytest.mark.parametrize("engine", ["vectorized", "process"])
def test_a_dataset_with_only_numeric_features_trains_in_both_engines(tmp_path, engine):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.random(1500), "b": rng.normal(size=1500)})
    frame["click"] = (rng.random(1500) < 0.2 + 0.5 * (frame["a"] > 0.5)).astype(int)
    frame.to_csv(tmp_path / "num.csv", index=False)
    code, _, err = _invoke(
        "data", "import", str(tmp_path / "num.csv"), "--label", "click",
        "--out", str(tmp_path / "num.pq"),
    )  # fmt: skip
    assert code == 0, err
    code, out, err = _invoke(
        "train-ensemble", "--data", str(tmp_path / "num.pq"), "--replicas", "2", *SMALL,
        "--engine", engine, "--out", str(tmp_path / "run"), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["auc"]["mean"] > 0.6
