"""`reprokit stability` end to end on tiny data, diverging replicas in ensembles, bad inputs."""

import copy
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.config import resolve_config
from reprokit.errors import ReprokitError
from reprokit.metrics.summary import summarize
from reprokit.report import build_report
from reprokit.runners.ensemble import train_ensemble
from reprokit.runners.stability import cell_slug, parse_multipliers, parse_optimizers
from reprokit.store import RunStore

TINY = ["--synth-rows", "1500", "--epochs", "1", "--hidden", "8"]
runner = CliRunner()


def test_all_replicas_diverging_never_crashes_the_ensemble(tmp_path):
    result = runner.invoke(
        app,
        ["train-ensemble", "--replicas", "3", "--lr", "1e6", "--out", str(tmp_path / "r"), *TINY,
         "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["diverged"] == {"count": 3, "replicas": [0, 1, 2]}
    assert doc["replicas"] == 0 and doc["pd"]["rel"] is None  # PD undefined, written as null
    assert "3 of 3" in result.stderr  # the Rich table shows the count
    metrics = json.loads((tmp_path / "r/replicas/001/metrics.json").read_text())
    assert metrics["diverged"] and metrics["auc"] is None
    assert metrics["divergence"]["reason"] in ("nonfinite", "spike", "collapse")


def test_one_diverging_replica_is_excluded_from_pd_with_its_count(tmp_path, monkeypatch):
    import reprokit.training.loop as loop

    real = loop.train_replica

    def one_bad(encoded, config, replica, seeds):
        if replica == 1:  # only this replica gets an absurd learning rate
            config = copy.deepcopy(config)
            config.optim.lr = 1e6
        return real(encoded, config, replica, seeds)

    monkeypatch.setattr(loop, "train_replica", one_bad)
    cfg = resolve_config(
        None,
        {"data.synth_rows": 1500, "model.hidden": "8", "optim.epochs": 1, "replicas": 3,
         "engine": "process"},
    )  # fmt: skip
    summary = train_ensemble(cfg, out=tmp_path / "r")
    assert summary["diverged"] == {"count": 1, "replicas": [1]}
    assert summary["replicas"] == 2
    _, labels, preds = RunStore(tmp_path / "r").load_predictions([0, 2])
    expected = summarize(preds[:, :, 0], labels.iloc[:, 0].to_numpy(np.float64))
    assert summary["pd"] == pytest.approx(expected["pd"])


def _stability(tmp_path, *extra):
    args = ["stability", "--optimizers", "adagrad,clippy", "--lr-multipliers", "1,1e5",
            "--replicas", "2", "--out", str(tmp_path / "s"), *TINY, "--json", *extra]  # fmt: skip
    return runner.invoke(app, args)


def test_stability_end_to_end_and_resume(tmp_path):
    result = _stability(tmp_path)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "stability" and doc["schema_version"] == 1
    assert [(c["optimizer"], c["lr_multiplier"]) for c in doc["cells"]] == [
        ("adagrad", 1.0), ("adagrad", 1e5), ("clippy", 1.0), ("clippy", 1e5)
    ]  # fmt: skip
    cells = {c["name"]: c for c in doc["cells"]}
    assert set(cells) == {"adagrad_x1", "adagrad_x100000", "clippy_x1", "clippy_x100000"}
    big = cells["adagrad_x100000"]
    assert big["lr"] == pytest.approx(0.05 * 1e5)
    assert big["diverged"]["count"] == 2 and big["diverged"]["ratio"] == 1.0
    assert big["pd"]["rel"] is None and big["auc"]["mean"] is None
    calm = cells["adagrad_x1"]
    assert calm["diverged"]["count"] == 0 and calm["pd"]["rel"] > 0
    assert calm["sigma"] is None and cells["clippy_x1"]["sigma"]["mean"] <= 1.0
    assert cells["clippy_x100000"]["sigma"]["clipped_fraction"] > 0
    run = tmp_path / "s"
    for c in doc["cells"]:
        sub = json.loads((run / c["run_dir"] / "summary.json").read_text())
        assert (
            sub["kind"] == "train-ensemble" and sub["diverged"]["count"] == c["diverged"]["count"]
        )
    assert (run / "loss_curves.png").stat().st_size > 1000 and (run / "loss_curves.svg").exists()
    assert json.loads((run / "stability.json").read_text())["cells"] == doc["cells"]
    assert "2/2" in result.stderr and "PD rel" in result.stderr  # the Rich table

    report = build_report(run)
    assert set(report.document["sections"]) == {"verdict", "divergence", "loss-curves"}
    assert "<svg" in report.html and "clippy" in report.html
    rows = report.document["sections"]["divergence"]["rows"]
    assert [r["diverged"] for r in rows] == [c["diverged"]["count"] for c in doc["cells"]]

    again = _stability(tmp_path)  # resumes: every cell is finished, the numbers are the same
    assert again.exit_code == 0, again.stderr
    redo = json.loads(again.stdout)
    strip = [{k: v for k, v in c.items() if k != "train_seconds"} for c in redo["cells"]]
    assert strip == [{k: v for k, v in c.items() if k != "train_seconds"} for c in doc["cells"]]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--optimizers", "lion"], "unknown optimizer 'lion'"),
        (["--optimizers", "adagrad,adagrad"], "twice"),
        (["--lr-multipliers", "0"], "positive"),
        (["--lr-multipliers", "1,x"], "numbers"),
        (["--lr-multipliers", "2,2"], "repeats"),
        (["--replicas", "1"], "at least 2 replicas"),
        (["--model", "transformer"], "unknown model"),
        (["--tasks", "3", "--data", "some.parquet"], "synthetic tasks"),
        (["--tasks", "label,nope"], "not a label"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, args, fragment):
    result = runner.invoke(app, ["stability", "--out", str(tmp_path / "s"), *TINY, *args])
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]


def test_another_study_in_the_same_directory_is_refused(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["stability", "--out", str(tmp_path / "s"), *TINY])
    assert result.exit_code == 2 and "not a reprokit run directory" in result.stderr


def test_parsers_and_slugs():
    assert parse_optimizers("Adagrad, clippy") == ["adagrad", "clippy"]
    assert parse_multipliers("1, 2.5,4") == [1.0, 2.5, 4.0]
    assert cell_slug("adagrad+gradclip", 4.0) == "adagrad-gradclip_x4"
    assert cell_slug("clippy", 0.5) == "clippy_x0.5"
    with pytest.raises(ReprokitError):
        parse_multipliers("inf")
