"""`reprokit stability` end to end on tiny data, diverging replicas in ensembles, bad inputs."""

import copy
import io
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

    def one_bad(encoded, config, replica, seeds, *rest):
        if replica == 1:  # only this replica gets an absurd learning rate
            config = copy.deepcopy(config)
            config.optim.lr = 1e6
        return real(encoded, config, replica, seeds, *rest)

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
    assert set(report.document["sections"]) == {
        "verdict", "configuration", "divergence", "loss-curves"
    }  # fmt: skip
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


# ------------------------------------------------------------- one accumulator start per study
def _table_column(doc, column):
    """{optimizer: cell text} of one column of the Rich stability table, rendered wide."""
    from rich.console import Console

    from reprokit.commands.stability import render_stability_table

    console = Console(width=300, file=io.StringIO(), color_system=None)
    console.print(render_stability_table(doc))
    text = console.file.getvalue()
    rows = [
        [c.strip() for c in line.split("│" if "│" in line else "┃")[1:-1]]
        for line in text.splitlines()
        if line.startswith(("│", "┃"))
    ]
    at = rows[0].index(column)
    return {r[0]: r[at] for r in rows[1:]}, text


def _cell_a0(run, cell):
    manifest = json.loads((run / cell["run_dir"] / "manifest.json").read_text())
    return manifest["config"]["optim"]["initial_accumulator_value"]


def test_every_adagrad_family_cell_starts_its_accumulator_at_the_paper_value(tmp_path):
    run = tmp_path / "s"
    result = runner.invoke(
        app,
        ["stability", "--optimizers", "adagrad,clippy,adam", "--lr-multipliers", "1",
         "--replicas", "2", "--out", str(run), *TINY, "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["initial_accumulator_value"] == 0.1
    saved = json.loads((run / "stability.json").read_text())
    for source in (doc, saved):
        assert {c["optimizer"]: c["initial_accumulator_value"] for c in source["cells"]} == {
            "adagrad": 0.1, "clippy": 0.1, "adam": None
        }  # fmt: skip
    # What each cell's training got: its arm manifest's config.
    assert {c["optimizer"]: _cell_a0(run, c) for c in doc["cells"]} == {
        "adagrad": 0.1, "clippy": 0.1, "adam": None
    }  # fmt: skip
    study = json.loads((run / "manifest.json").read_text())["study"]
    assert study["initial_accumulator_value"] == 0.1
    assert "A0" in result.stderr  # the table printed by the command has the column
    column, text = _table_column(doc, "A0")
    assert column == {"adagrad": "0.1", "clippy": "0.1", "adam": "—"}
    assert "accumulator start A0 0.1" in text  # the caption

    report = build_report(run)
    section = report.document["sections"]["configuration"]
    assert section["run"]["accumulator start A0 (Adagrad family)"] == 0.1
    assert [c["initial_accumulator_value"] for c in section["cells"]] == [0.1, 0.1, None]
    assert section["config"]["optim.initial_accumulator_value"] == 0.1
    assert "accumulator start A0" in report.html
    rows = report.document["sections"]["divergence"]["rows"]
    assert [r["initial_accumulator_value"] for r in rows] == [0.1, 0.1, None]


def test_initial_accumulator_zero_applies_to_every_cell(tmp_path):
    run = tmp_path / "s"
    result = runner.invoke(
        app,
        ["stability", "--optimizers", "adagrad,adagrad+gradclip", "--lr-multipliers", "1",
         "--replicas", "2", "--initial-accumulator", "0", "--out", str(run), *TINY, "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["initial_accumulator_value"] == 0.0
    assert [c["initial_accumulator_value"] for c in doc["cells"]] == [0.0, 0.0]
    assert [_cell_a0(run, c) for c in doc["cells"]] == [0.0, 0.0]
    assert _table_column(doc, "A0")[0] == {"adagrad": "0", "adagrad+gradclip": "0"}

    # Another A0 is another study: the directory is refused, not silently mixed.
    again = runner.invoke(
        app,
        ["stability", "--optimizers", "adagrad,adagrad+gradclip", "--lr-multipliers", "1",
         "--replicas", "2", "--out", str(run), *TINY],
    )  # fmt: skip
    assert again.exit_code == 2 and "another study" in again.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--optimizers", "clippy", "--initial-accumulator", "0"], "clippy cells cannot train"),
        (["--initial-accumulator", "-1"], ">= 0"),
        (["--initial-accumulator", "inf"], "finite"),
    ],
)
def test_an_accumulator_start_an_optimizer_refuses_fails_before_any_work(tmp_path, args, fragment):
    out = tmp_path / "s"
    result = runner.invoke(app, ["stability", "--out", str(out), *TINY, *args])
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]
    assert not out.exists()


def _one_adagrad_step(encoded, cfg, seeds, a0):
    """Independently: the cell's model at its init seed, one full-batch step of
    torch.optim.Adagrad(initial_accumulator_value=a0), predictions on the evaluation split."""
    import torch
    import torch.nn.functional as F

    from reprokit.training.loop import build_model, predict

    torch.manual_seed(0)
    model = build_model(cfg, encoded.vocab_sizes, encoded.train_num.shape[1], 1)
    model.reset_parameters(torch.Generator().manual_seed(seeds["init"]))
    model.set_dropout_generator(torch.Generator().manual_seed(seeds["dropout"]))
    opt = torch.optim.Adagrad(model.parameters(), lr=cfg.optim.lr, initial_accumulator_value=a0)
    perm = torch.as_tensor(np.random.default_rng(seeds["data-order"]).permutation(encoded.n_train))
    model.train()
    cat, num = torch.as_tensor(encoded.train_cat), torch.as_tensor(encoded.train_num)
    logits = model(cat[perm], num[perm])
    F.binary_cross_entropy_with_logits(logits, torch.as_tensor(encoded.train_y)[perm]).backward()
    opt.step()
    ecat, enum = torch.as_tensor(encoded.eval_cat), torch.as_tensor(encoded.eval_num)
    return predict(model, ecat, enum)[:, 0]


@pytest.mark.parametrize("engine", ["vectorized", "process"])
def test_the_adagrad_cell_steps_like_torch_adagrad_with_the_study_accumulator(tmp_path, engine):
    from reprokit.data.encoding import load_encoded
    from reprokit.runners.stability import run_stability

    cfg = resolve_config(
        None,
        {"data.synth_rows": 1500, "model.hidden": "8", "optim.epochs": 1, "replicas": 2,
         "optim.batch_size": 4096, "engine": engine},
    )  # fmt: skip
    encoded = load_encoded(cfg.data)
    assert encoded.n_train <= cfg.optim.batch_size  # one step per replica
    doc = run_stability(cfg, ["adagrad"], [1.0], out=tmp_path / "s", encoded=encoded)
    store = RunStore(tmp_path / "s" / doc["cells"][0]["run_dir"])
    manifest = store.manifest()
    assert manifest["engine"] == engine
    ids, _, preds = store.load_predictions()
    assert np.array_equal(ids, encoded.eval_example_id)
    cell_cfg = copy.deepcopy(cfg)
    cell_cfg.optim.initial_accumulator_value = 0.1
    for r, seeds in enumerate(manifest["replica_seeds"].values()):
        expected = _one_adagrad_step(encoded, cell_cfg, seeds, 0.1)
        np.testing.assert_allclose(preds[r, :, 0], expected, rtol=0, atol=1e-5)
        torch_default = _one_adagrad_step(encoded, cell_cfg, seeds, 0.0)
        assert np.abs(preds[r, :, 0] - torch_default).max() > 1e-3  # A0 matters at this size
