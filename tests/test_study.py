"""The study engine: `reprokit compare` over any config keys and `reprokit attribute`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import one_error_line
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.overrides import parse_arm, parse_value
from reprokit.runners.study import make_arms

runner = CliRunner()
TINY = ["--synth-rows", "2000", "--epochs", "1", "--replicas", "3"]
PD_KEYS = ("abs", "rel", "abs_mean", "rel_mean", "l2", "rel_std", "flip")


# ------------------------------------------------------------------------------------ arm parsing
def test_values_are_toml_when_they_parse_else_text():
    assert parse_value("0.1") == 0.1 and parse_value("[128, 64]") == [128, 64]
    assert parse_value("true") is True and parse_value('"x"') == "x"
    assert parse_value("smelu:beta=1") == "smelu:beta=1" and parse_value("gelu") == "gelu"


def test_a_comma_starts_a_new_pair_only_before_a_known_key():
    assert parse_arm("model.hidden=[128,64],model.dropout=0.1") == {
        "model.hidden": [128, 64],
        "model.dropout": 0.1,
    }
    # `beta=1.5` is not a config key: it belongs to the activation spec
    assert parse_arm("model.activation=gsmelu:alpha=0.5,beta=1.5,optim.lr=0.1") == {
        "model.activation": "gsmelu:alpha=0.5,beta=1.5",
        "optim.lr": 0.1,
    }


def test_a_spec_parameter_named_like_a_top_level_setting_stays_in_the_spec():
    assert parse_arm("model.embedding=hashed:buckets=100,seed=3,optim.lr=0.1") == {
        "model.embedding": "hashed:buckets=100,seed=3",
        "optim.lr": 0.1,
    }
    assert parse_arm("model.dropout=0.1,seed=3") == {"model.dropout": 0.1, "seed": 3}


def test_arms_are_validated_with_the_config_sentences_and_canonicalised():
    with pytest.raises(ReprokitError, match=r"unknown key 'hiden' in --arm 'model.hiden=\[8\]'"):
        make_arms(RunConfig(), [parse_arm("model.hiden=[8]")])
    with pytest.raises(ReprokitError, match="model.dropout in --arm .* must be a number"):
        make_arms(RunConfig(), [parse_arm("model.dropout=lots")])
    with pytest.raises(ReprokitError, match="the learning rate must be positive"):
        make_arms(RunConfig(), [parse_arm("optim.lr=-1")])
    (arm,) = make_arms(RunConfig(), [parse_arm("model.activation=SmeLU:beta=1.0")])
    assert arm.overrides == {"model.activation": "smelu:beta=1"}
    assert arm.config.model.activation == "smelu:beta=1"
    assert arm.label == "model.activation=SmeLU:beta=1.0"


def test_bad_arms_fail_before_any_training(tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(
        app, ["compare", "--arm", "model.activation=relu", "--arm", "optim.nam=clippy",
              "--out", str(out), *TINY],
    )  # fmt: skip
    assert "unknown key 'nam'" in one_error_line(result)
    assert not out.exists()
    result = runner.invoke(app, ["compare", "--arm", "model.activation=relu", *TINY])
    assert "at least 2 arms" in one_error_line(result)


# --------------------------------------------------------------------------------------- compare
@pytest.fixture(scope="module")
def compare_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compare") / "run"
    result = runner.invoke(
        app,
        ["compare", "--arm", "model.activation=relu", "--arm", "model.activation=smelu:beta=1",
         "--arm", "optim.name=sgd", "--arm", "model.hidden=[16,8],model.dropout=0.1",
         "--out", str(out), "--json", *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return out, json.loads(result.stdout)


def test_compare_over_three_axes_writes_a_paired_document(compare_run):
    out, doc = compare_run
    assert doc["kind"] == "compare" and doc["baseline"] == "model.activation=relu"
    labels = [a["label"] for a in doc["arms"]]
    assert labels[2] == "optim.name=sgd"
    assert doc["arms"][3]["overrides"] == {"model.hidden": [16, 8], "model.dropout": 0.1}
    for arm in doc["arms"]:
        manifest = json.loads((out / arm["run_dir"] / "manifest.json").read_text())
        config = manifest["config"]
        for key, value in arm["overrides"].items():
            section, name = key.split(".")
            assert config[section][name] == value
        # paired design: replica k has the same seeds in every arm
        assert (
            manifest["replica_seeds"]
            == json.loads((out / doc["arms"][0]["run_dir"] / "manifest.json").read_text())[
                "replica_seeds"
            ]
        )
    assert doc["arms"][0]["test"] is None
    assert all(a["tests"]["rel"]["n"] == 3 for a in doc["arms"][1:])
    assert set(doc["pareto"]) <= set(labels) and doc["pareto"]
    assert json.loads((out / "compare.json").read_text()) == doc


def test_compare_report_and_gate_by_label(compare_run):
    out, doc = compare_run
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.stderr
    html = (out / "report.html").read_text()
    assert "model.hidden=[16,8],model.dropout=0.1" in html and "Paired tests" in html
    result = runner.invoke(
        app, ["gate", str(out), "--arm", "optim.name=sgd", "--max-pd", "100", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert [r["unit"] for r in verdict["rules"]] == ["optim.name=sgd"]
    assert verdict["rules"][0]["observed"] == pytest.approx(doc["arms"][2]["pd"]["rel"])


def _kill_after(cmd: list[str], out: Path, finished: int) -> dict[str, bytes]:
    """Start `cmd`, SIGKILL it once `finished` replicas exist; return their predictions' bytes."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    done: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        done = sorted(out.glob("arms/*/replicas/*/metrics.json"))
        if len(done) >= finished:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the study finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return {str(p.parent): (p.parent / "predictions.parquet").read_bytes() for p in done}


@pytest.mark.parametrize("command", ["compare", "attribute"])
def test_a_killed_study_resumes_without_losing_a_finished_replica(tmp_path, command):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "reprokit.cli", command, "--out", str(out), "--engine",
            "process", "--synth-rows", "6000", "--epochs", "2", "--replicas", "3"]  # fmt: skip
    if command == "compare":
        cmd = base + ["--arm", "model.activation=relu", "--arm", "model.activation=gelu"]
    else:
        cmd = base + ["--sources", "init,data-order"]
    kept = _kill_after(cmd, out, 2)
    assert kept and not (out / f"{command}.json").exists()
    result = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for directory, payload in kept.items():
        assert (Path(directory) / "predictions.parquet").read_bytes() == payload


# ------------------------------------------------------------------------------------- attribute
@pytest.mark.parametrize("engine", ["process", "vectorized"])
def test_attribute_control_is_exactly_zero_and_sources_are_listed(tmp_path, engine):
    out = tmp_path / "attr"
    result = runner.invoke(
        app,
        ["attribute", "--sources", "init,data-order,dropout", "--dropout", "0.2",
         "--leave-one-out", "--engine", engine, "--out", str(out), "--json", *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "attribute" and doc["control_pd_is_zero"] is True
    by_label = {s["label"]: s for s in doc["sources"]}
    assert set(by_label) == {
        "none", "init", "data-order", "dropout", "all",
        "all-but-init", "all-but-data-order", "all-but-dropout",
    }  # fmt: skip
    assert by_label["none"]["pd"] == dict.fromkeys(PD_KEYS, 0.0)
    for label in ("init", "data-order", "dropout", "all"):
        assert by_label[label]["pd"]["rel"] > 0
    assert by_label["all-but-init"]["vary"] == ["data-order", "dropout"]
    manifest = json.loads((out / "arms" / "all" / "manifest.json").read_text())
    assert manifest["engine"] == engine and manifest["sources"]["varied"] == [
        "init",
        "data-order",
        "dropout",
    ]
    alone = [s for s in doc["sources"] if s["mode"] == "alone"]
    assert [s["pd"]["rel"] for s in alone] == sorted((s["pd"]["rel"] for s in alone), reverse=True)
    top = alone[0]
    share = 100 * top["pd"]["rel"] / by_label["all"]["pd"]["rel"]
    assert doc["verdict"].startswith(f"{top['source']} alone gives {share:.0f} % of the PD")
    # report and gate on one source
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    html = (out / "report.html").read_text()
    assert "Which source causes the PD" in html and 'aria-label="attribution"' in html
    gate = runner.invoke(app, ["gate", str(out), "--arm", "init", "--max-pd", "100"])
    assert gate.exit_code == 0, gate.stderr
    gate = runner.invoke(app, ["gate", str(out), "--arm", "none", "--max-pd", "0"])
    assert gate.exit_code == 0, gate.stderr


def test_attribute_refuses_an_unknown_source():
    result = runner.invoke(app, ["attribute", "--sources", "init,cosmic", *TINY])
    assert "unknown nondeterminism source 'cosmic'" in one_error_line(result)


def test_arms_whose_accumulator_starts_differ_by_default_get_a_note():
    from reprokit.runners.study import study_notes

    arms = make_arms(RunConfig(), [parse_arm("optim.name=adagrad"), parse_arm("optim.name=clippy")])
    (note,) = study_notes(arms)
    assert "optim.name=adagrad: 0, optim.name=clippy: 0.1" in note
    assert "optim.initial_accumulator_value" in note
    base = RunConfig()
    base.optim.initial_accumulator_value = 0.1  # the same start for both: nothing to say
    arms = make_arms(base, [parse_arm("optim.name=adagrad"), parse_arm("optim.name=clippy")])
    assert study_notes(arms) == []
    assert study_notes(make_arms(RunConfig(), [parse_arm("model.dropout=0.1")])) == []


def test_the_compare_table_shows_table_size_and_collisions_when_tables_differ():
    from rich.console import Console

    from reprokit.commands.compare import render_compare_table

    def arm(label, kind, params, rate):
        return {
            "label": label, "pd": {"rel": 0.1, "abs": 0.01}, "pd_ci": {"rel": [0.05, 0.2]},
            "auc": {"mean": 0.7, "std": 0.01, "ensemble": 0.71}, "logloss": {"mean": 0.5},
            "train_seconds": 1.0, "tests": None,
            "embedding": {"kind": kind, "params": params, "collision_rate": rate},
        }  # fmt: skip

    doc = {"arms": [arm("a", "table", 23456, 0.0), arm("b", "hashed:buckets=100", 6400, 0.868)],
           "baseline": "a", "pareto": ["a"]}  # fmt: skip
    console = Console(width=200, record=True, color_system=None)
    console.print(render_compare_table(doc))
    text = console.export_text()
    assert "emb params" in text and "23,456" in text and "0.868" in text
    doc["arms"][1]["embedding"]["kind"] = "table"
    console = Console(width=200, record=True, color_system=None)
    console.print(render_compare_table(doc))
    assert "emb params" not in console.export_text()


@pytest.mark.parametrize("arm", ["data.synth_rows=3000", "replicas=5", "seed=7"])
def test_arms_may_not_change_the_data_the_replicas_or_the_seeds(tmp_path, arm):
    out = tmp_path / "cmp"
    result = runner.invoke(
        app, ["compare", "--arm", "model.activation=relu", "--arm", arm, "--out", str(out), *TINY]
    )
    assert "every arm of a study shares the data" in one_error_line(result)
    assert not out.exists()


def test_studies_refuse_each_others_directories_and_bad_tests_before_training(
    tmp_path, compare_run
):
    out, _ = compare_run
    result = runner.invoke(app, ["attribute", "--sources", "init", "--out", str(out), *TINY])
    assert "holds another study (compare.json), not an attribute one" in one_error_line(result)
    run = tmp_path / "run"
    assert runner.invoke(app, ["train-ensemble", "--out", str(run), *TINY]).exit_code == 0
    result = runner.invoke(
        app, ["compare", "--arm", "model.dropout=0", "--arm", "model.dropout=0.1",
              "--out", str(run), *TINY],
    )  # fmt: skip
    assert "holds a train-ensemble run, not a compare study" in one_error_line(result)
    fresh = tmp_path / "attr"
    result = runner.invoke(app, ["attribute", "--test", "bogus", "--out", str(fresh), *TINY])
    assert "unknown paired test 'bogus'" in one_error_line(result)
    assert not fresh.exists()


def test_attribute_of_one_source_has_no_duplicate_all_arm_and_says_dropout_is_off(tmp_path):
    result = runner.invoke(
        app, ["attribute", "--sources", "dropout,dropout", "--out", str(tmp_path / "a"),
              "--json", *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [s["label"] for s in doc["sources"]] == ["none", "dropout"]
    assert any("the model has no dropout" in n for n in doc["notes"])
    assert doc["sources"][1]["pd"]["rel"] == 0.0  # no dropout layer: the source varies nothing


def test_an_arm_is_found_by_any_spelling_of_its_overrides(tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(
        app, ["compare", "--arm", "model.dropout=0.0", "--arm", "model.dropout=0.1",
              "--baseline", "model.dropout = 0.1", "--out", str(out), "--json", *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["baseline"] == "model.dropout=0.1" and len(doc["arms"]) == 2
    gate = runner.invoke(app, ["gate", str(out), "--arm", "model.dropout=0.0", "--max-pd", "100"])
    assert gate.exit_code == 0, gate.stderr


def test_force_over_another_study_leaves_nothing_of_it(tmp_path):
    out = tmp_path / "run"
    first = runner.invoke(app, ["attribute", "--sources", "init", "--out", str(out), *TINY])
    assert first.exit_code == 0, first.stderr
    result = runner.invoke(
        app, ["compare", "--arm", "model.dropout=0", "--arm", "model.dropout=0.1", "--force",
              "--out", str(out), *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert not (out / "attribute.json").exists()
    assert sorted(p.name for p in (out / "arms").iterdir()) == [
        "model.dropout=0",
        "model.dropout=0.1",
    ]
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
