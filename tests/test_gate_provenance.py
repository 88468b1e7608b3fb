"""`reprokit gate --baseline`: refused on other data, a changed setup or missing provenance; the
one allowed config difference (the field under test) is reported; --allow-different lifts it."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_checks import one_error_line
from rundir_fixtures import fixture_fingerprint, make_compare, make_train_ensemble
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.errors import ReprokitError
from reprokit.gate import GateRules, evaluate
from reprokit.rundir import load_run

runner = CliRunner()


def gate(*args) -> object:
    return runner.invoke(app, ["gate", *map(str, args)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prov")
    return {
        "base": make_train_ensemble(root / "base", noise=0.04, examples=300),
        "same": make_train_ensemble(root / "same", noise=0.05, examples=300),
        "other-data": make_train_ensemble(root / "other", examples=300, truth_seed=99),
        "lr": make_train_ensemble(root / "lr", examples=300, config={"optim": {"lr": 0.1}}),
        "lr-epochs": make_train_ensemble(
            root / "lr-ep", examples=300, config={"optim": {"lr": 0.1, "epochs": 5}}
        ),
        "moved": make_train_ensemble(
            root / "moved", examples=300, name="renamed", config={"data": {"path": "/x/y.pq"}}
        ),
        "old": make_train_ensemble(root / "old", examples=300, provenance=False),
        "cmp": make_compare(root / "cmp", examples=300),
        "cmp-lr": make_compare(root / "cmp-lr", examples=300, config={"optim": {"lr": 0.2}}),
        "cmp-old": make_compare(root / "cmp-old", examples=300, provenance=False),
    }


def test_same_data_and_config_proceeds_with_no_differences(runs):
    result = gate(runs["same"], "--baseline", runs["base"], "--max-pd-increase", 1000, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["differences"] == [] and doc["allow_different"] is False
    assert doc["rules"][0]["differs"] is None


def test_other_data_is_refused_naming_both_fingerprints(runs):
    line = one_error_line(
        gate(runs["same"], "--baseline", runs["other-data"], "--max-pd-increase", 10)
    )
    base_fp, this_fp = fixture_fingerprint(99, 300), fixture_fingerprint(1234, 300)
    assert f"baseline {runs['other-data']} was measured on other data" in line
    assert f"fingerprint {base_fp}, this run {this_fp}" in line
    assert "--allow-different" in line


def test_allow_different_compares_anyway_and_reports_what_differs(runs, tmp_path):
    junit = tmp_path / "gate.xml"
    result = gate(
        runs["same"],
        "--baseline",
        runs["other-data"],
        "--max-pd-increase",
        1e6,
        "--allow-different",
        "--json",
        "--junit",
        junit,
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["allow_different"] is True
    assert [(d["key"], d["baseline"], d["current"]) for d in doc["differences"]] == [
        ("data.fingerprint", fixture_fingerprint(99, 300), fixture_fingerprint(1234, 300))
    ]
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).iter("property")}
    assert props["allow_different"] == "true"
    assert "data.fingerprint" in props["differs_from_baseline"]


def test_one_differing_key_proceeds_and_is_reported_everywhere(runs, tmp_path):
    junit = tmp_path / "gate.xml"
    result = gate(
        runs["lr"],
        "--baseline",
        runs["base"],
        "--max-pd-increase",
        1e6,
        "--max-auc-drop",
        1,
        "--json",
        "--junit",
        junit,
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    expected = {"key": "optim.lr", "baseline": 0.05, "current": 0.1}
    assert [r["differs"] for r in doc["rules"]] == [expected, expected]
    assert doc["differences"] == [{"unit": "lr", "baseline_unit": "base", **expected}]
    assert "optim.lr = 0.05 in the baseline, 0.1 here" in " ".join(result.stderr.split())
    tree = ET.parse(junit)
    outs = [e.text for e in tree.iter("system-out")]
    assert len(outs) == 2 and all("optim.lr: 0.05 there, 0.1 here" in t for t in outs)


def test_two_differing_keys_are_refused_naming_them(runs):
    line = one_error_line(gate(runs["lr-epochs"], "--baseline", runs["base"], "--max-auc-drop", 1))
    assert "in 2 config keys" in line
    assert "optim.epochs: 2 there, 5 here" in line and "optim.lr: 0.05 there, 0.1 here" in line
    assert "--allow-different" in line
    allowed = gate(
        runs["lr-epochs"], "--baseline", runs["base"], "--max-auc-drop", 1, "--allow-different"
    )
    assert allowed.exit_code == 0, allowed.output


def test_data_path_and_run_name_are_ignored(runs):
    result = gate(runs["moved"], "--baseline", runs["base"], "--max-auc-drop", 1, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["differences"] == []


def test_older_summary_falls_back_to_the_manifest(runs):
    """A run directory whose summary lacks the keys still has them in manifest.json."""
    assert "config" not in json.loads((runs["old"] / "summary.json").read_text())
    result = gate(runs["old"], "--baseline", runs["base"], "--max-auc-drop", 1)
    assert result.exit_code == 0, result.output


def test_baseline_without_provenance_is_refused(runs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(runs["old"] / "summary.json", bare / "summary.json")
    for base in (bare, bare / "summary.json"):
        line = one_error_line(gate(runs["same"], "--baseline", base, "--max-auc-drop", 1))
        assert "lacks provenance" in line and "--allow-different" in line
    line = one_error_line(gate(bare, "--baseline", runs["same"], "--max-auc-drop", 1))
    assert line.startswith(f"error: run {bare} lacks provenance")
    allowed = gate(runs["same"], "--baseline", bare, "--max-auc-drop", 1, "--allow-different")
    assert allowed.exit_code == 0, allowed.output
    # A bare summary that carries its provenance is a fine stored baseline.
    stored = tmp_path / "stored"
    stored.mkdir()
    shutil.copy(runs["base"] / "summary.json", stored / "summary.json")
    assert gate(runs["same"], "--baseline", stored, "--max-auc-drop", 1).exit_code == 0


def test_pd_summary_baseline_lacks_a_config(runs, tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"example_id": np.arange(100), "label": rng.integers(0, 2, 100) * 1.0})
    for r in range(2):
        frame[f"r{r}"] = rng.random(100)
    frame.to_parquet(tmp_path / "p.parquet")
    pd_dir = tmp_path / "pd"
    made = runner.invoke(app, ["pd", str(tmp_path / "p.parquet"), "--out", str(pd_dir)])
    assert made.exit_code == 0, made.output
    line = one_error_line(gate(runs["same"], "--baseline", pd_dir, "--max-auc-drop", 1))
    assert "lacks provenance (no resolved config" in line


def test_compare_arms_against_a_train_ensemble_baseline_differ_by_activation(runs):
    result = gate(runs["cmp"], "--baseline", runs["base"], "--max-auc-drop", 1, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    got = {(d["unit"], d["key"], d["baseline"], d["current"]) for d in doc["differences"]}
    assert got == {
        ("smelu:beta=1", "model.activation", "relu", "smelu:beta=1"),
        ("gelu", "model.activation", "relu", "gelu"),
    }
    by_unit = {r["unit"]: r["differs"] for r in doc["rules"]}
    assert by_unit["relu"] is None and by_unit["gelu"]["current"] == "gelu"


def test_compare_against_compare_matches_arms_by_name(runs):
    result = gate(runs["cmp-lr"], "--baseline", runs["cmp"], "--max-auc-drop", 1, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {(d["unit"], d["baseline_unit"]) for d in doc["differences"]} == {
        ("relu", "relu"),
        ("smelu:beta=1", "smelu:beta=1"),
        ("gelu", "gelu"),
    }
    assert {d["key"] for d in doc["differences"]} == {"optim.lr"}
    # An arm of another config and another activation: two keys, refused, naming the arm.
    line = one_error_line(gate(runs["cmp-lr"], "--baseline", runs["base"], "--max-auc-drop", 1))
    assert "(arm smelu:beta=1)" in line or "(arm gelu)" in line
    assert "model.activation" in line and "optim.lr" in line


def test_compare_without_arm_provenance_reads_the_arm_manifests(runs):
    entry = json.loads((runs["cmp-old"] / "compare.json").read_text())["arms"][0]
    assert "config" not in entry and "data" not in entry
    result = gate(runs["cmp-old"], "--baseline", runs["cmp"], "--max-auc-drop", 1)
    assert result.exit_code == 0, result.output
    bare = one_error_line(
        gate(runs["cmp"], "--baseline", runs["cmp-old"] / "compare.json", "--max-auc-drop", 1)
    )
    assert "lacks provenance" in bare


def test_allow_different_needs_a_baseline_and_is_in_the_api(runs):
    line = one_error_line(gate(runs["base"], "--max-pd", 1, "--allow-different"))
    assert "--allow-different applies only with --baseline" in line
    run, base = load_run(runs["same"]), load_run(runs["other-data"])
    with pytest.raises(ReprokitError, match="other data"):
        evaluate(run, GateRules(max_auc_drop=1.0), base)
    result = evaluate(run, GateRules(max_auc_drop=1.0, allow_different=True), base)
    assert result.allow_different and result.differences[0]["key"] == "data.fingerprint"


def test_real_runs_on_different_synthetic_data_are_refused(tmp_path):
    """Two tiny train-ensemble runs that differ in --synth-rows: other data, so refused."""
    common = ["--epochs", "1", "--replicas", "2"]
    for name, rows in (("a", "2000"), ("b", "2400")):
        made = runner.invoke(
            app, ["train-ensemble", "--synth-rows", rows, *common, "--out", str(tmp_path / name)]
        )
        assert made.exit_code == 0, made.output
    fps = [
        json.loads((tmp_path / n / "manifest.json").read_text())["data"]["fingerprint"]
        for n in "ab"
    ]
    line = one_error_line(
        gate(tmp_path / "b", "--baseline", tmp_path / "a", "--max-pd-increase", 50)
    )
    assert "was measured on other data" in line
    assert f"fingerprint {fps[0]}, this run {fps[1]}" in line
    same = gate(tmp_path / "a", "--baseline", tmp_path / "a", "--max-pd-increase", 0, "--json")
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["differences"] == []


def test_per_field_widths_are_one_setting_and_the_storage_is_not_compared():
    from reprokit.gate import _flatten, config_differences

    base = {"model": {"field_dims": {"user": 4, "item": 8}, "dropout": 0.0}}
    base["data"] = {"storage": "memory"}
    other = {"model": {"field_dims": {"user": 8, "item": 16}, "dropout": 0.0}}
    other["data"] = {"storage": "mapped"}
    diffs = config_differences(_flatten(base), _flatten(other))
    assert diffs == [("model.field_dims", {"user": 4, "item": 8}, {"user": 8, "item": 16})]
    other["data"]["storage"] = "auto"
    other["model"]["field_dims"] = {"item": 8, "user": 4}  # the same widths, in another order
    assert config_differences(_flatten(base), _flatten(other)) == []
