"""Top-k churn per group in train-ensemble runs: the summary against an independent computation
from the run's own files, the control arm at exactly 0, bad columns refused before any work, and
the row in the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from churn_reference import brute_force_churn
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.config import resolve_config
from reprokit.data.splits import load_training_data
from reprokit.report import build_report

runner = CliRunner()
ARGS = ["--replicas", "3", "--epochs", "1", "--synth-rows", "3000", "--hidden", "16"]


def _train(out: Path, *extra: str):
    return runner.invoke(app, ["train-ensemble", *ARGS, "--out", str(out), "--json", *extra])


@pytest.fixture(scope="module")
def churn_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("churn") / "run"
    result = _train(out, "--vary", "init,data-order", "--churn-by", "c1", "--top-k", "3")
    assert result.exit_code == 0, result.stderr
    return out, json.loads(result.stdout)


def test_train_ensemble_churn_by_a_column(churn_run):
    out, summary = churn_run
    churn = summary["churn"]
    assert churn["by"] == "c1" and churn["k"] == 3 and churn["groups"] > 10
    # independently: the stored predictions, and c1 of the evaluation split from the data itself
    preds = np.stack(
        [pd.read_parquet(out / "replicas" / f"{r:03d}" / "predictions.parquet") for r in range(3)]
    )
    _, eval_ = load_training_data(resolve_config(None, {"data.synth_rows": 3000}).data)
    frame = pd.read_parquet(out / "replicas" / "000" / "predictions.parquet")
    assert np.array_equal(frame["example_id"].to_numpy(), eval_.frame["example_id"].to_numpy())
    p = np.clip(preds[:, :, list(frame.columns).index("prediction")], 1e-7, 1 - 1e-7)
    expected = brute_force_churn(p, eval_.frame["c1"].to_numpy(), 3)[0].mean()
    assert churn["value"] == pytest.approx(expected, abs=1e-12)
    assert 0 < churn["value"] < 1
    assert json.loads((out / "summary.json").read_text())["churn"] == churn

    # the HTML report shows it, in the PD table
    report = build_report(out)
    table = report.document["sections"]["pd-table"]
    assert "top-3 churn by c1" in table["keys"]
    assert "top-3 churn by c1" in report.html


def test_control_arm_churn_is_exactly_zero(tmp_path):
    result = _train(tmp_path / "ctl", "--vary", "none", "--churn-by", "c0", "--top-k", "2")
    assert result.exit_code == 0, result.stderr
    churn = json.loads(result.stdout)["churn"]
    assert churn["value"] == 0.0 and churn["groups"] > 0
    assert churn["ci"] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--churn-by", "user"], "has no column 'user' to measure churn by"),
        (["--churn-by", "c0", "--top-k", "0"], "--top-k must be a positive integer"),
    ],
)
def test_bad_churn_options_fail_before_any_work(tmp_path, extra, message):
    out = tmp_path / "bad"
    result = _train(out, *extra)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()


def _gate(*args):
    return runner.invoke(app, ["gate", *map(str, args), "--json"])


def test_gate_max_churn_passes_fails_and_judges_the_ci_upper_bound(churn_run):
    out, summary = churn_run
    value, hi = summary["churn"]["value"], summary["churn"]["ci"][1]
    passed = _gate(out, "--max-churn", value + 1e-9)
    assert passed.exit_code == 0, passed.stderr
    (rule,) = json.loads(passed.stdout)["rules"]
    assert rule["rule"] == "max-churn" and rule["quantity"] == "churn.value"
    assert rule["observed"] == value
    failed = _gate(out, "--max-churn", value * 0.99)
    assert failed.exit_code == 1
    # between the value and the CI's upper bound: passes on the value, fails on the bound
    mid = (value + hi) / 2
    assert _gate(out, "--max-churn", mid).exit_code == 0
    upper = _gate(out, "--max-churn", mid, "--use-ci-upper")
    assert upper.exit_code == 1
    assert json.loads(upper.stdout)["rules"][0]["observed"] == hi


def test_gate_max_churn_refuses_a_run_without_churn(tmp_path):
    out = tmp_path / "plain"
    assert _train(out, "--vary", "init").exit_code == 0
    result = runner.invoke(app, ["gate", str(out), "--max-churn", "0.5"])
    assert result.exit_code == 2
    assert "has no top-k churn" in result.stderr
    bad = runner.invoke(app, ["gate", str(out), "--max-churn", "1.5"])
    assert bad.exit_code == 2 and "--max-churn must be in [0, 1]" in bad.stderr
