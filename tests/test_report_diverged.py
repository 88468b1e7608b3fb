"""Report and gate on runs whose replicas diverged (NaN predictions): no crash, the page says so."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rundir_fixtures import make_train_ensemble
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.report import build_report

runner = CliRunner()


def _section_html(html: str, section: str) -> str:
    match = re.search(rf'<section id="{section}".*?</section>', html, re.S)
    assert match, section
    return match.group(0)


def test_all_diverged_fixture_renders_and_says_so(tmp_path: Path):
    run = make_train_ensemble(
        tmp_path / "div", replicas=3, examples=120, diverged=(0, 1, 2), nan_diverged=True
    )
    result = runner.invoke(app, ["report", str(run), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    sections = doc["sections"]
    headline = sections["verdict"]["headline"]
    assert "every replica diverged (3 of 3)" in headline and "PD rel = n/a" in headline
    assert sections["verdict"]["status"] == "warning"
    arm = next(iter(sections["pd-table"]["arms"].values()))
    assert all(cell["value"] is None for cell in arm.values())
    assert "every replica diverged (3 of 3)" in " ".join(sections["pd-distribution"]["notes"])
    assert "every replica diverged" in " ".join(sections["accuracy"]["notes"])
    assert "labels" not in " ".join(sections["accuracy"]["notes"])  # not "the data has no labels"
    assert "every replica diverged" in " ".join(sections["calibration"]["notes"])
    assert len(sections["replicas"]["rows"]) == 3
    html = (run / "report.html").read_text(encoding="utf-8")
    assert headline in html
    for section in ("pd-distribution", "pd-by-bucket", "calibration"):
        assert "<svg" not in _section_html(html, section), section  # nothing to plot
    assert "<svg" in _section_html(html, "training-loss")  # the loss curves still show


def test_partly_diverged_run_leaves_the_diverged_replica_out_of_per_example_pd(tmp_path: Path):
    run = make_train_ensemble(
        tmp_path / "part", replicas=4, examples=200, diverged=(1,), nan_diverged=True
    )
    report = build_report(run)
    dist = next(iter(report.document["sections"]["pd-distribution"]["arms"].values()))
    healthy = [
        pd.read_parquet(run / "replicas" / f"{r:03d}" / "predictions.parquet")["prediction"]
        for r in (0, 2, 3)
    ]
    preds = np.stack([p.to_numpy() for p in healthy])
    per_example = np.abs(preds - preds.mean(axis=0)).mean(axis=0)
    assert dist["abs"]["mean"] == pytest.approx(per_example.mean(), rel=1e-9)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["replicas"] == 3
    assert dist["abs"]["mean"] == pytest.approx(summary["pd"]["abs_mean"], rel=1e-6)
    assert sum(dist["counts"]) == 200
    calib = next(iter(report.document["sections"]["calibration"]["arms"].values()))
    assert calib["replica_bins"]["001"] is None and calib["replica_bins"]["000"] is not None


def test_one_healthy_replica_has_no_per_example_pd(tmp_path: Path):
    run = make_train_ensemble(
        tmp_path / "one", replicas=3, examples=100, diverged=(0, 2), nan_diverged=True
    )
    sections = build_report(run).document["sections"]
    assert "only 1 of 3 replicas finished without diverging" in sections["verdict"]["headline"]
    assert sections["pd-by-bucket"]["arms"] == {next(iter(sections["pd-by-bucket"]["arms"])): []}
    calib = next(iter(sections["calibration"]["arms"].values()))
    assert calib["ensemble_bins"] is not None  # the healthy replica still calibrates


def test_gate_on_an_all_diverged_run_fails_naming_the_divergence(tmp_path: Path):
    run = make_train_ensemble(
        tmp_path / "div", replicas=2, examples=100, diverged=(0, 1), nan_diverged=True
    )
    result = runner.invoke(app, ["gate", str(run), "--max-pd", "0.1", "--min-auc", "0.5", "--json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert [r["rule"] for r in doc["rules"]] == ["max-pd", "min-auc"]
    for rule in doc["rules"]:
        assert not rule["passed"] and rule["observed"] is None
        assert "undefined because every replica diverged (2 of 2)" in rule["message"]
    assert "Traceback" not in result.output

    healthy = make_train_ensemble(tmp_path / "ok", replicas=2, examples=100)
    against = runner.invoke(
        app, ["gate", str(healthy), "--baseline", str(run), "--max-pd-increase", "5", "--json"]
    )
    assert against.exit_code == 1, against.output
    message = json.loads(against.stdout)["rules"][0]["message"]
    assert "in the baseline every replica diverged (2 of 2)" in message


def test_real_diverged_train_ensemble_run(tmp_path: Path):
    """The reproduction: SGD at lr 1e30 makes every replica's predictions NaN."""
    run = tmp_path / "div"
    args = ["--synth-rows", "2000", "--epochs", "1", "--replicas", "2", "--lr", "1e30"]
    trained = runner.invoke(app, ["train-ensemble", *args, "--optimizer", "sgd", "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    preds = pd.read_parquet(run / "replicas" / "000" / "predictions.parquet")["prediction"]
    assert preds.isna().all()  # the case that crashed the report's histogram
    result = runner.invoke(app, ["report", str(run), "--json"])
    assert result.exit_code == 0, result.output
    headline = json.loads(result.stdout)["sections"]["verdict"]["headline"]
    assert "every replica diverged (2 of 2)" in headline
    gate = runner.invoke(app, ["gate", str(run), "--max-pd", "0.1"])
    assert gate.exit_code == 1 and "every replica diverged" in gate.stderr
