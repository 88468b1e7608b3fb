"""MovieLens-100k end to end: convert the real copy, then 5 replicas varying init and data order."""

from __future__ import annotations

import json

import movielens_cache
import pytest
from typer.testing import CliRunner

from reprokit.cli import app

runner = CliRunner()


def test_five_replicas_vary_init_and_data_order(tmp_path):
    directory = movielens_cache.movielens_dir()
    if directory is None:
        pytest.skip(f"no MovieLens-100k copy: {movielens_cache.last_error}")
    data = tmp_path / "ml100k.parquet"
    converted = runner.invoke(
        app, ["data", "movielens", "--path", str(directory), "--out", str(data)]
    )
    assert converted.exit_code == 0, converted.stderr
    result = runner.invoke(
        app,
        ["train-ensemble", "--data", str(data), "--replicas", "5", "--vary", "init,data-order",
         "--out", str(tmp_path / "run"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["replicas"] == 5 and summary["examples"] == 20_000  # 20 % of 100k ratings
    assert len(summary["auc"]["per_replica"]) == 5
    # A real signal (rating >= 4 from user/item ids and side features) and real disagreement.
    assert 0.70 < summary["auc"]["mean"] < 0.90
    assert summary["auc"]["ensemble"] >= summary["auc"]["mean"] - 1e-3
    lo, hi = summary["pd_ci"]["rel"]
    assert 0 < lo <= summary["pd"]["rel"] <= hi
    assert summary["pd"]["abs"] > summary["pd"]["abs_mean"] > 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["sources"]["varied"] == ["init", "data-order"]
    assert manifest["data"]["eval_rows"] == 20_000
